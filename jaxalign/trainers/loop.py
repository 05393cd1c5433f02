"""The one training loop: every trainer, PPO included, runs its steps through `run`.

Reads like big_vision's: resume from the latest checkpoint, then for each step get the batch
for (seed, step), run the compiled step, and log / evaluate / checkpoint on schedule. The
contract:

  step_fn(state, batch, frozen) -> (state, metrics)   any jittable step: `make_step(loss_fn)` builds the
                                                      loss-based kind, PPO's update is another; metrics
                                                      must hold `nonfinite` (0/1)
  batches(state, step) -> (batch, host_metrics)       fixed data (`fixed_batches`), online rollouts, PPO
                                                      rollouts; `batch` values are host numpy arrays of the
                                                      global batch (sharded here) or global jax arrays
  frozen                                              a dict of named frozen parameter trees (`reference`,
                                                      `reward_models`, `annotator`, ...) passed into the
                                                      compiled step with their own shardings
  evaluate(params, step) -> (metrics, sample rows)    on schedule and at the end

Restore, the log buffer, the metrics (perf keys and learning rate for every trainer), evaluation,
checkpoints and the non-finite stop exist only here. Dispatch runs ahead: the batch for step s+1
is built while step s runs, and step metrics are fetched only when a row is logged, an evaluation
runs or a checkpoint is written. A rollout trainer (`time_split=True`) waits for its rollout and its
update separately to log `perf/rollout_time_s` and `perf/update_time_s`; the two are serial on the
device anyway (the next rollout samples from the updated params).
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

from jaxalign import faults
from jaxalign import sharding as shd
from jaxalign.checkpoint import Checkpointer, abstract_like
from jaxalign.data.pipeline import batch_indices, get_batch, process_slice
from jaxalign.errors import UserError
from jaxalign.metrics import CompileCounter, MetricWriter, peak_flops, training_flops
from jaxalign.optim import make_optimizer, schedule
from jaxalign.trainers.state import create_state, jit_step, make_step


class NonFiniteError(UserError):
  pass


def fixed_batches(config, arrays: dict[str, np.ndarray]):
  """`batches(state, step)` over fixed rows: the seeded epoch permutations of `batch_indices`."""
  seed, bsz = int(config.seed), int(config.train.batch_size)
  n = next(iter(arrays.values())).shape[0]

  def batches(state, step: int):
    del state
    return get_batch(arrays, batch_indices(seed, step, bsz, n)), {}
  return batches


def _nonfinite_at(step_fn: Callable, at: int) -> Callable:
  """`debug.nonfinite_at_step`: `step_fn` whose step number `at` computes on NaN params (a test of the
  non-finite stop in every trainer); the other steps are unchanged."""
  import functools

  import jax.numpy as jnp

  def poison(state):
    bad = state.step + 1 == at
    return state.replace(params=jax.tree.map(
        lambda p: jnp.where(bad, jnp.nan, p) if jnp.issubdtype(p.dtype, jnp.floating) else p, state.params))

  if hasattr(step_fn, "grads"):  # a `make_step` step: poison the gradient program; the update sees ok=False
    @functools.wraps(step_fn.grads)
    def grads(state, batch, frozen):
      return step_fn.grads(poison(state), batch, frozen)

    def step(state, batch, frozen):
      return step_fn.update(state, *grads(state, batch, frozen))
    step.grads, step.update = grads, step_fn.update
    return step

  @functools.wraps(step_fn)
  def step(state, batch, frozen):
    return step_fn(poison(state), batch, frozen)
  return step


def _on_mesh(batch: dict, mesh) -> dict:
  """Host numpy (the global batch) -> this process's rows as global arrays; jax arrays pass through."""
  host = {k: v for k, v in batch.items() if not isinstance(v, jax.Array)}
  return {**batch, **(shd.shard_batch(process_slice(host), mesh) if host else {})}


def run(config, workdir: str, *, mesh, state, step_fn: Callable, batches: Callable, frozen: Any = None,
        evaluate: Callable[[Any, int], tuple[dict, list]] | None = None,
        tokens_fn: Callable[[dict], tuple], flops_params: int, meta: dict | None = None, desc: str = "train",
        learning_rate: Callable[[int], float] | None = None, time_split: bool = False,
        prepare: Callable[[dict], dict] | None = None):
  """Trains `state` for `config.train.steps` steps; returns `(final state, steps)`.

  tokens_fn(batch) -> (real tokens, policy tokens for FLOPs, reference tokens for FLOPs), numbers or
  jax scalars (fetched with the metrics). learning_rate(step) -> the rate logged for a step (default:
  `train.*`'s schedule). `meta` is saved with every checkpoint (cache keys, ...). prepare(host batch) ->
  the step's layout (e.g. packing), on the host while the previous step runs; its output may change
  shape between steps (each new shape compiles the step once); `tokens_fn` sees the batch before it.
  """
  tcfg = config.train
  steps = int(tcfg.steps)
  if int(config.get("debug", {}).get("nonfinite_at_step", 0)) > 0:
    step_fn = _nonfinite_at(step_fn, int(config.debug.nonfinite_at_step))
  lr_at = learning_rate or schedule(tcfg)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=int(tcfg.keep_checkpoints))
  start = 0
  log_buffer: list[dict] = []  # fetched step metrics not yet logged (saved with checkpoints)
  try:
    restored = ckpt.restore_intact(abstract_like(state))  # the newest intact one (damaged ones set aside)
  except BaseException:
    ckpt.close()  # (orbax's threads must stop before the interpreter does)
    raise
  if restored is not None:
    state, saved_meta, start = restored
    log_buffer = saved_meta.get("log_buffer", [])
    if int(state.step) != start:
      raise UserError(f"{ckpt.directory}: checkpoint {start} holds step {int(state.step)}")
  if start >= steps:
    ckpt.close()
    return state, start
  writer = MetricWriter(workdir, resume_step=start)
  frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
  compiled = None
  name = f"jit({getattr(step_fn, 'grads', step_fn).__name__})"  # the program whose compilations are counted
  peak = peak_flops()
  ev_every = int(config.eval.every)

  def next_batch(s):
    t0 = time.perf_counter()
    hb, host_m = batches(state, s)
    batch = _on_mesh(prepare(hb) if prepare else hb, mesh)
    if time_split:
      jax.block_until_ready(batch)
      host_m = {**host_m, "perf/rollout_time_s": time.perf_counter() - t0}
    return batch, host_m, tokens_fn(hb)

  pending: list[tuple] = []  # (device metrics, host metrics, token counts) not yet fetched
  window = dict(t0=None, steps=0, tokens=0.0, flops=0.0)
  last_saved = start
  pbar = tqdm(total=steps, initial=start, desc=desc, disable=jax.process_index() != 0,
              dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
  compile_time = None
  compiles = CompileCounter().__enter__()  # packed batches may compile the step a few times
  try:
    nxt = next_batch(start)
    for s in range(start, steps):
      batch, host_m, counts = nxt
      if compiled is None:
        compiled = jit_step(step_fn, state, jax.tree.map(lambda x: x.sharding, batch), frozen_sh, mesh)
      t_call = time.perf_counter()
      state, metrics = compiled(state, batch, frozen)
      faults.point("step", s + 1)
      if time_split:
        jax.block_until_ready(state.step)
        host_m["perf/update_time_s"] = time.perf_counter() - t_call
      if compile_time is None:  # first call: compile + run; keep it out of throughput
        jax.block_until_ready(metrics)
        compile_time = time.perf_counter() - t_call
        window["t0"] = time.perf_counter()
        counts = None
      pending.append((metrics, host_m, counts))
      done = s + 1
      if done < steps:
        nxt = next_batch(done)  # overlaps with the step in flight

      is_log = done % int(tcfg.log_every) == 0 or done == steps
      is_ckpt = done % int(tcfg.checkpoint_every) == 0 or done == steps
      is_eval = evaluate is not None and ((ev_every > 0 and done % ev_every == 0) or done == steps)
      if not (is_log or is_ckpt or is_eval):
        pbar.update(1)
        continue
      fetched = jax.device_get(pending)
      pending = []
      for i, (m, _, _) in enumerate(fetched):
        if int(m["nonfinite"]):
          raise NonFiniteError(f"non-finite loss or gradient at step {done - len(fetched) + i + 1}; stopped; "
                               f"last good checkpoint: step {last_saved} in {ckpt.directory}")
      for m, host_m, counts in fetched:
        log_buffer.append({**{k: float(v) for k, v in m.items() if k != "nonfinite"}, **host_m})
        if counts is not None:
          real, pol, ref = (float(c) for c in counts)
          window["steps"] += 1
          window["tokens"] += real
          window["flops"] += training_flops(flops_params, pol, ref)
      if is_log:
        row = {(k if k.startswith("perf/") else f"train/{k}"): float(np.mean([m[k] for m in log_buffer]))
               for k in log_buffer[0]}
        log_buffer = []
        row["train/learning_rate"] = float(lr_at(done - 1))
        row["perf/compile_time_s"] = compile_time
        row["perf/step_compiles"] = compiles.counts.get(name, 0)
        if window["steps"]:
          jax.block_until_ready(state.step)
          dt = time.perf_counter() - window["t0"]
          row["perf/step_time_s"] = dt / window["steps"]
          row["perf/tokens_per_s"] = window["tokens"] / dt
          row["perf/mfu"] = window["flops"] / dt / peak
        window.update(t0=time.perf_counter(), steps=0, tokens=0.0, flops=0.0)
        writer.write(done, row)
        loss_key = next((k for k in ("train/loss", "train/score") if k in row), None)
        if loss_key:
          pbar.set_postfix({loss_key[6:]: f"{row[loss_key]:.4f}"})
      if is_eval:
        ev, samples = evaluate(state.params, done)
        writer.write(done, ev)
        faults.point("eval", done)
        writer.write_samples(done, samples)
        pbar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(ev.items())), file=sys.stderr)
        window["t0"] = time.perf_counter()  # eval time is not step time
      if is_ckpt:
        ckpt.save(done, state, {**(meta or {}), "log_buffer": log_buffer})
        faults.kill_during_checkpoint(ckpt.directory, done)
        last_saved = done
      pbar.update(1)
  finally:
    pbar.close()
    ckpt.close()
    writer.close()
    compiles.__exit__()
  return state, steps


def run_loss(config, workdir: str, *, mesh, params, loss_fn: Callable, extra: Any = None,
             batches: Callable | None = None, arrays: dict | None = None,
             post_update: Callable | None = None, **kwargs):
  """`run` for a loss-based trainer: the optimiser of `train.*`, the state around `params`, and the step
  `make_step(loss_fn)`; batches are `batches` or the fixed rows of `arrays` (see `fixed_batches`).

  extra: method state carried in `TrainState.extra` and checkpointed with it (leaves already on the mesh keep
  their shardings, e.g. a params copy; the rest are replicated); when given, `loss_fn` is stateful (see
  `make_step`). post_update(state) -> state runs inside the update program after the optimiser step (e.g.
  BPO's behaviour refresh). Returns `(final state, steps)`.
  """
  optimizer = make_optimizer(config.train)
  if extra is not None:
    on_mesh = lambda x: isinstance(x, jax.Array) and isinstance(x.sharding, jax.sharding.NamedSharding) \
        and x.sharding.mesh == mesh
    extra = jax.tree.map(lambda x: x if on_mesh(x) else jax.device_put(x, shd.replicated(mesh)), extra)
  state = create_state(params, optimizer, mesh, extra)
  step = make_step(loss_fn, optimizer, int(config.train.grad_accum), stateful=extra is not None)
  if post_update is not None:
    inner = step

    def update(state, grads, aux):
      state, metrics = inner.update(state, grads, aux)
      return post_update(state), metrics

    def step(state, batch, frozen):
      return update(state, *inner.grads(state, batch, frozen))
    step.grads, step.update = inner.grads, update
  return run(config, workdir, mesh=mesh, state=state, step_fn=step,
             batches=batches or fixed_batches(config, arrays), **kwargs)


def final_metrics(workdir: str) -> dict:
  """The last value of every key in metrics.jsonl."""
  out: dict = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        out.update(json.loads(line))
  return out
