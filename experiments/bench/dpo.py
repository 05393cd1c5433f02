"""Benchmark of the jaxalign DPO train step, built exactly as the offline trainer builds it.

  python experiments/bench/dpo.py --preset tiny --batch_pairs 8 --prompt_len 128 --completion_len 128 --json

Random-init model of a preset, random token batches (fixed P | C rows), the step from
`preference_loss` + `make_step` + `jit_step` with the base config's optimiser. The
reference forward runs inside the step unless `--precompute_ref`. Prints one JSON
object (`--json`) or a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from _common import add_workload_args, cpu_seconds, print_result  # noqa: E402

import jaxalign  # noqa: E402

jaxalign.set_xla_cpu_flags()  # as jaxalign.main does, before jax starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxalign import sharding as shd  # noqa: E402
from jaxalign.config import base_config  # noqa: E402
from jaxalign.data.packing import pack_pairs  # noqa: E402
from jaxalign.metrics import CompileCounter, measured_matmul_flops, peak_flops, peak_rss_mb, training_flops  # noqa: E402,E501
from jaxalign.models.transformer import count_params, model_config  # noqa: E402
from jaxalign.optim import make_optimizer  # noqa: E402
from jaxalign.trainers.offline import preference_loss  # noqa: E402
from jaxalign.trainers.state import create_state, jit_step, make_step  # noqa: E402
from jaxalign.models.loading import init_params  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_workload_args(p)
  p.add_argument("--variable_lengths", action="store_true",
                 help="long-tailed per-row lengths (mean about half of P and C), padded to P | C")
  p.add_argument("--packing", action="store_true",
                 help="pack sequences into P + C rows with segment ids (train.packing): no compute on padding")
  p.add_argument("--no_share_prompt", action="store_true",
                 help="with --packing: pack prompt+chosen and prompt+rejected as two segments (prompt run twice)")
  p.add_argument("--precompute_ref", action="store_true",
                 help="random reference log-probs in the batch instead of a reference forward")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--remat", default="none", choices=["none", "full", "dots"])
  p.add_argument("--attention_chunk", type=int, default=512,
                 help="model.attention_chunk: queries per rematerialised attention chunk (0: one pass)")
  p.add_argument("--logprob_chunk", type=int, default=None, help="default: base config's train.logprob_chunk")
  p.add_argument("--matmul_n", type=int, default=2048,
                 help="square matmul size for the peak-rate measurement (larger is stabler)")
  p.add_argument("--matmul_repeats", type=int, default=10, help="best of this many matmuls")
  p.add_argument("--reference_dtype", default="float32", choices=["float32", "bfloat16"],
                 help="the frozen reference's params (model.reference_dtype); the policy and optimiser stay float32")
  p.add_argument("--profile", default="", help="after timing, trace one more step into this directory and "
                 "report the time per op category (profile.py)")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  if args.warmup < 1 or args.steps < 1:
    p.error("--warmup and --steps must be >= 1 (the first warm-up step is the compile)")
  return args


def _clipped_lognormal(rng, n: int, hi: int, target_mean: float, sigma: float = 1.0) -> np.ndarray:
  """Integer lengths in [1, hi], lognormal (long right tail) with mean about `target_mean`.

  Clipping pulls the mean down, so the log-median is found by bisection on a fixed
  calibration sample rather than from the closed form.
  """
  z = np.random.default_rng(12345).standard_normal(20000)
  clip = lambda mu, zz: np.clip(np.rint(np.exp(mu + sigma * zz)), 1, hi)
  lo_mu, hi_mu = -5.0, np.log(hi) + 5.0
  for _ in range(60):
    mid = 0.5 * (lo_mu + hi_mu)
    lo_mu, hi_mu = (mid, hi_mu) if clip(mid, z).mean() < target_mean else (lo_mu, mid)
  return clip(0.5 * (lo_mu + hi_mu), rng.standard_normal(n)).astype(np.int64)


def random_batch(rng, ref_rng, cfg, args) -> dict[str, np.ndarray]:
  """One host batch in the trainer's layout: prompts left-padded, completions right-padded.

  `ref_rng` draws the precomputed reference log-probs, so `--precompute_ref` leaves
  the token batches (and lengths) identical to a run without it.
  """
  b, p, c = args.batch_pairs, args.prompt_len, args.completion_len
  tok = lambda shape: rng.integers(1, cfg.vocab_size, size=shape, dtype=np.int32)
  if args.variable_lengths:
    lp = _clipped_lognormal(rng, b, p, p / 2)
    lc = _clipped_lognormal(rng, b, c, c / 2)
    lr = _clipped_lognormal(rng, b, c, c / 2)
  else:
    lp, lc, lr = np.full(b, p), np.full(b, c), np.full(b, c)
  prompt_mask = (np.arange(p)[None, :] >= (p - lp)[:, None]).astype(np.int32)
  chosen_mask = (np.arange(c)[None, :] < lc[:, None]).astype(np.int32)
  rejected_mask = (np.arange(c)[None, :] < lr[:, None]).astype(np.int32)
  out = dict(prompt=tok((b, p)) * prompt_mask, prompt_mask=prompt_mask,
             chosen=tok((b, c)) * chosen_mask, chosen_mask=chosen_mask,
             rejected=tok((b, c)) * rejected_mask, rejected_mask=rejected_mask)
  if args.precompute_ref:
    # Plausible summed log-probs (about -log V per token), as the disk cache would hold.
    per_tok = -np.log(cfg.vocab_size)
    out["ref_chosen_logps"] = (per_tok * lc + ref_rng.normal(0, 1, b)).astype(np.float32)
    out["ref_rejected_logps"] = (per_tok * lr + ref_rng.normal(0, 1, b)).astype(np.float32)
  return out


def real_tokens(hb: dict) -> int:
  """Policy tokens of a step as the trainer counts them: both rows of a pair, prompt included."""
  return int(2 * hb["prompt_mask"].sum() + hb["chosen_mask"].sum() + hb["rejected_mask"].sum())


def run(args) -> dict:
  # Measured first, on an idle process, so compilation threads do not disturb it.
  matmul = measured_matmul_flops(n=args.matmul_n, repeats=args.matmul_repeats)
  devices = jax.devices()
  # One device here; with several, all of them on the data axis (as mesh.data=-1 does).
  mesh = shd.make_mesh(-1, 1, 1, devices=devices) if len(devices) > 1 else shd.make_mesh(1, 1, 1, devices=devices[:1])
  n_dev = len(devices) if len(devices) > 1 else 1

  config = base_config()
  cfg = model_config(args.preset, dtype=args.dtype, remat=args.remat, attention_chunk=args.attention_chunk,
                     max_len=max(args.prompt_len + args.completion_len, model_config(args.preset).max_len))
  chunk = int(args.logprob_chunk or config.train.logprob_chunk)
  optimizer = make_optimizer(config.train)

  ref_params = init_params(cfg, jax.random.key(args.seed), mesh)
  n_params = count_params(ref_params, cfg)
  # Separate buffers for the policy: the state is donated to the step.
  params = jax.tree.map(jnp.copy, ref_params)
  from jaxalign.trainers.prologue import frozen_dtype
  frozen = None if args.precompute_ref else frozen_dtype(ref_params, args.reference_dtype)
  del ref_params  # (a bfloat16 reference: the float32 copy must not stay alive for the RSS)
  state = create_state(params, optimizer, mesh)

  hparams = {"beta": float(config.loss.beta)}
  loss_fn = preference_loss(cfg, "dpo", hparams, chunk)
  rng, ref_rng = np.random.default_rng([args.seed, 0]), np.random.default_rng([args.seed, 1])
  host = [random_batch(rng, ref_rng, cfg, args) for _ in range(args.warmup + args.steps)]
  # Packing runs on the host while the previous step runs (as in the trainer's loop).
  prepared = ([pack_pairs(hb, row_multiple=n_dev, share_prompt=not args.no_share_prompt) for hb in host]
              if args.packing else host)
  batch_sh = {k: shd.batch_sharding(mesh, v.ndim, v.shape[0]) for k, v in prepared[0].items()}
  frozen_sh = jax.tree.map(lambda x: x.sharding, frozen) if frozen is not None else None
  step_fn = jit_step(make_step(loss_fn, optimizer, 1), state, batch_sh, frozen_sh, mesh)
  # Device transfer outside the timed region: the loop overlaps it with the step in flight.
  batches = [shd.shard_batch(hb, mesh) for hb in prepared]

  times, timed_idx, losses = [], [], []
  cpu = 0.0  # this process's CPU seconds over the timed steps: < cores x wall means contention
  compile_time = 0.0  # every step that compiled (the first; with packing, each new row count)
  metrics = None
  with CompileCounter() as compiles:
    for i, batch in enumerate(batches):
      before = compiles.counts.get("jit(step_grads)", 0)
      c0, t0 = cpu_seconds(), time.perf_counter()
      state, metrics = step_fn(state, batch, frozen)
      jax.block_until_ready((state, metrics))
      dt = time.perf_counter() - t0
      losses.append(float(metrics["loss"]))
      if compiles.counts.get("jit(step_grads)", 0) > before:
        compile_time += dt
      elif i >= args.warmup:
        times.append(dt)
        timed_idx.append(i)
        cpu += cpu_seconds() - c0
  loss = float(metrics["loss"])
  profile = None
  if args.profile:
    from profile_step import category_times
    grads_jit, update_jit = step_fn.programs
    g_shapes = jax.eval_shape(grads_jit, state, batches[-1], frozen)
    texts = {"jit_step_grads": grads_jit.lower(state, batches[-1], frozen).compile().as_text(),
             "jit_step_update": update_jit.lower(state, *g_shapes).compile().as_text()}
    snapshot = jax.tree.map(jnp.copy, state)  # (the update donates the state)
    profile = category_times(lambda: jax.block_until_ready(step_fn(snapshot, batches[-1], frozen)), args.profile,
                             texts)
  if not times:
    raise SystemExit("every timed step compiled; raise --steps")

  timed = [host[i] for i in timed_idx]
  tokens = statistics.mean(real_tokens(hb) for hb in timed)
  computed = statistics.mean(int(prepared[i]["tokens"].size) if args.packing else
                             2 * args.batch_pairs * (args.prompt_len + args.completion_len) for i in timed_idx)
  step_time = statistics.median(times)
  n = n_params["flops_params"]
  ref_tokens = 0 if args.precompute_ref else tokens
  flops = training_flops(n, tokens, ref_tokens)
  peak = peak_flops(n=args.matmul_n, repeats=args.matmul_repeats)  # same rate the trainer's MFU uses
  return dict(
      preset=args.preset, batch_pairs=args.batch_pairs, prompt_len=args.prompt_len,
      completion_len=args.completion_len, variable_lengths=args.variable_lengths,
      precompute_ref=args.precompute_ref, packing=args.packing,
      share_prompt=args.packing and not args.no_share_prompt, dtype=args.dtype, remat=args.remat,
      attention_chunk=args.attention_chunk, n_params=n, n_params_total=n_params["total"],
      tokens_per_step=tokens,
      padded_tokens_per_step=computed,
      step_time_s=step_time, step_time_min_s=min(times), step_time_max_s=max(times),
      tokens_per_s=tokens / step_time,
      mfu=flops / step_time / peak,
      matmul_flops=matmul, peak_rss_mb=peak_rss_mb(), compile_time_s=compile_time,
      step_compiles=compiles.counts.get("jit(step_grads)", 0), timed_steps=len(times),
      loss=loss, losses=losses, reference_dtype=args.reference_dtype, profile=profile, steps=args.steps, warmup=args.warmup, logprob_chunk=chunk,
      cpu_cores_used=cpu / sum(times), cpu_count=os.cpu_count(), loadavg_1m=os.getloadavg()[0],
      device=devices[0].platform, n_devices=n_dev, jax_version=jax.__version__,
  )


def main(argv=None):
  args = parse_args(argv)
  print_result(run(args), args.json)


if __name__ == "__main__":
  main()
