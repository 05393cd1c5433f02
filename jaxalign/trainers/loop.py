"""The training loop shared by SFT and the offline preference family.

Reads like big_vision's: resume from the latest checkpoint, then for each step build
the batch for (seed, step), run the compiled step, and log / evaluate / checkpoint
on schedule. The batch for step s+1 is built on the host while step s runs (jax
dispatch is asynchronous), so host work overlaps device work.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxalign import sharding as shd
from jaxalign.checkpoint import Checkpointer, abstract_like
from jaxalign.data.pipeline import batch_indices, get_batch, process_slice
from jaxalign.errors import UserError
from jaxalign.metrics import CompileCounter, MetricWriter, peak_flops, training_flops
from jaxalign.optim import make_optimizer, schedule
from jaxalign.trainers.state import create_state, jit_step, make_step


class NonFiniteError(UserError):
  pass


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, os.path.join(workdir, "config.json"))


def run(config, workdir: str, *, mesh, params, arrays: dict[str, np.ndarray], loss_fn: Callable,
        frozen: Any = None, evaluate: Callable[[Any, int], tuple[dict, list]] | None = None,
        tokens_fn: Callable[[dict], tuple[float, float, float]], flops_params: int,
        meta: dict | None = None, desc: str = "train", extra: Any = None,
        prepare: Callable[[dict], dict] | None = None,
        make_batch: Callable[[Any, int], dict] | None = None):
  """Trains `params` for `config.train.steps`; returns the final state.

  tokens_fn(host_batch) -> (real tokens, policy tokens for FLOPs, reference tokens for FLOPs).
  evaluate(params, step) -> (metrics, sample rows).
  extra: method state carried in `TrainState.extra` and checkpointed with it (replicated); when given,
  `loss_fn` is stateful (see `make_step`).
  prepare(host_batch) -> device batch layout, on the host while the previous step runs (e.g.
  packing); its output may change shape between steps (each new shape compiles the step once).
  make_batch(params, step) -> host batch, instead of rows of `arrays` (online methods: generate and
  annotate with the current params; its randomness must be a function of (seed, step)).
  """
  tcfg = config.train
  steps, bsz = int(tcfg.steps), int(tcfg.batch_size)
  n = next(iter(arrays.values())).shape[0] if arrays else 0
  optimizer = make_optimizer(tcfg)
  lr_at = schedule(tcfg)
  if extra is not None:
    extra = jax.device_put(extra, shd.replicated(mesh))
  state = create_state(params, optimizer, mesh, extra)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=int(tcfg.keep_checkpoints))
  start = ckpt.latest_step() or 0
  log_buffer: list[dict] = []  # fetched step metrics not yet logged (saved with checkpoints)
  if start:
    state, saved_meta = ckpt.restore(abstract_like(state))
    log_buffer = saved_meta.get("log_buffer", [])
    if int(state.step) != start:
      raise UserError(f"{ckpt.directory}: checkpoint {start} holds step {int(state.step)}")
  if start >= steps:
    ckpt.close()
    return state, start
  writer = MetricWriter(workdir, resume_step=start)

  prepare = prepare or (lambda hb: hb)
  example = prepare(make_batch(state.params, start) if make_batch else get_batch(arrays, np.arange(bsz) % n))
  batch_sh = {k: shd.batch_sharding(mesh, v.ndim, v.shape[0]) for k, v in example.items()}
  frozen_sh = jax.tree.map(lambda x: x.sharding, frozen) if frozen is not None else None
  step = make_step(loss_fn, optimizer, int(tcfg.grad_accum), stateful=extra is not None)
  step_fn = jit_step(step, state, batch_sh, frozen_sh, mesh)
  peak = peak_flops()
  seed = int(config.seed)

  def host_batch(s):
    hb = make_batch(state.params, s) if make_batch else get_batch(arrays, batch_indices(seed, s, bsz, n))
    return hb, prepare(hb)

  pending: list[dict] = []  # device metrics not yet fetched (keeps dispatch asynchronous)
  window = dict(t0=None, steps=0, tokens=0.0, flops=0.0)
  last_saved = start
  pbar = tqdm(total=steps, initial=start, desc=desc, disable=jax.process_index() != 0,
              dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
  compile_time = None
  compiles = CompileCounter().__enter__()  # packed batches may compile the step a few times
  nxt = host_batch(start)
  for s in range(start, steps):
    hb, prepared = nxt
    batch = shd.shard_batch(process_slice(prepared), mesh)
    t_call = time.perf_counter()
    state, metrics = step_fn(state, batch, frozen)
    if compile_time is None:  # first call: compile + run; keep it out of throughput
      jax.block_until_ready(metrics)
      compile_time = time.perf_counter() - t_call
      window["t0"] = time.perf_counter()
    else:
      real, pol, ref = tokens_fn(hb)
      window["steps"] += 1
      window["tokens"] += real
      window["flops"] += training_flops(flops_params, pol, ref)
    pending.append(metrics)
    done = s + 1
    if done < steps:
      nxt = host_batch(done)  # overlaps with the step in flight

    is_log = done % int(tcfg.log_every) == 0 or done == steps
    is_ckpt = done % int(tcfg.checkpoint_every) == 0 or done == steps
    ev_every = int(config.eval.every)
    is_eval = evaluate is not None and ((ev_every > 0 and done % ev_every == 0) or done == steps)
    if is_log or is_ckpt or is_eval:
      fetched = [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]
      pending = []
      if any(int(m["nonfinite"]) for m in fetched):
        bad = done - len(fetched) + next(i for i, m in enumerate(fetched) if int(m["nonfinite"])) + 1
        pbar.close()
        ckpt.close()
        compiles.__exit__()
        raise NonFiniteError(f"non-finite loss or gradient at step {bad}; stopped; last good checkpoint: "
                             f"step {last_saved} in {ckpt.directory}")
      log_buffer.extend(fetched)
      if is_log:
        row = {f"train/{k}": float(np.mean([m[k] for m in log_buffer])) for k in log_buffer[0] if k != "nonfinite"}
        log_buffer = []
        row["train/learning_rate"] = float(lr_at(done - 1))
        row["perf/compile_time_s"] = compile_time
        row["perf/step_compiles"] = compiles.counts.get("jit(step_grads)", 0)
        if window["steps"]:
          jax.block_until_ready(state.step)
          dt = time.perf_counter() - window["t0"]
          row["perf/step_time_s"] = dt / window["steps"]
          row["perf/tokens_per_s"] = window["tokens"] / dt
          row["perf/mfu"] = window["flops"] / dt / peak
        window.update(t0=time.perf_counter(), steps=0, tokens=0.0, flops=0.0)
        writer.write(done, row)
        pbar.set_postfix(loss=f"{row['train/loss']:.4f}")
      if is_eval:
        ev, samples = evaluate(state.params, done)
        writer.write(done, ev)
        writer.write_samples(done, samples)
        pbar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(ev.items())), file=sys.stderr)
        window["t0"] = time.perf_counter()  # eval time is not step time
      if is_ckpt:
        ckpt.save(done, state, {**(meta or {}), "log_buffer": log_buffer})
        last_saved = done
    pbar.update(1)
  pbar.close()
  ckpt.close()
  writer.close()
  compiles.__exit__()
  return state, steps


def final_metrics(workdir: str) -> dict:
  """The last value of every key in metrics.jsonl."""
  out: dict = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        out.update(json.loads(line))
  return out
