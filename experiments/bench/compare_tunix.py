"""The same DPO workload through tunix's DPOTrainer and jaxalign, one after the other, in one invocation.

  python -m venv /work/venv-tunix && /work/venv-tunix/bin/pip install google-tunix==0.1.7   # tunix only there
  python experiments/bench/compare_tunix.py --tunix_python /work/venv-tunix/bin/python --preset tiny --batch_pairs 8

Each run is its own process (so peak RSS is per run): tunix (`--worker tunix`, under `--tunix_python`: default
$TUNIX_PYTHON, else this interpreter), then `dpo.py --json` under this interpreter. Both sides get the preset's
Llama shapes (tunix's own `models.llama3.Llama3`, random init), the same token batches in the same order
(`dpo.py`'s `random_batch`, same seed), float32, the sigmoid DPO loss with beta 0.1, the base config's optimiser
(AdamW, clipping, cosine schedule) and the reference forward in every step; both pad every batch to `P | C`.
Tokens are the real ones (prompt counted in both rows of a pair), as `dpo.py` counts them. Prints one JSON
object: both sides and the jaxalign / tunix ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from _common import add_workload_args, alternate, cpu_seconds, workload_flags  # noqa: E402

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # one per XLA compilation (jax.monitoring)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_workload_args(p)
  p.add_argument("--rounds", type=int, default=1, help="tunix, jaxalign alternations (medians reported)")
  p.add_argument("--packing", action="store_true",
                 help="jaxalign side packs pairs (train.packing, shared prompt); tunix pads to P | C")
  p.add_argument("--tunix_python", default=os.environ.get("TUNIX_PYTHON", sys.executable),
                 help="interpreter with google-tunix installed (default: $TUNIX_PYTHON, else this one)")
  p.add_argument("--tunix_with_jaxalign_xla_flags", action="store_true",
                 help="tunix side under jaxalign.XLA_CPU_FLAGS too (default: XLA's own defaults)")
  p.add_argument("--worker", choices=["tunix"], help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.warmup < 1 or args.steps < 1:
    p.error("--warmup and --steps must be >= 1 (the first warm-up step is the compile)")
  return args


def tunix_worker(args) -> dict:
  """One tunix DPOTrainer run on `dpo.py`'s batches; step times taken where the trainer asks for a batch."""
  xla_flags = os.environ.get("XLA_FLAGS")
  import dpo  # sets jaxalign's XLA CPU flags on import (jax has not started yet): undone unless asked for
  if not args.tunix_with_jaxalign_xla_flags:
    if xla_flags is None:
      os.environ.pop("XLA_FLAGS", None)
    else:
      os.environ["XLA_FLAGS"] = xla_flags

  from importlib.metadata import version

  import flax
  import jax
  import numpy as np
  from flax import nnx
  from tunix.models.llama3 import model as llama3
  from tunix.sft.dpo import dpo_trainer

  from jaxalign.config import base_config
  from jaxalign.metrics import measured_matmul_flops, training_flops
  from jaxalign.models.transformer import model_config
  from jaxalign.optim import make_optimizer

  config = base_config()
  cfg = model_config(args.preset)
  bench_args = dpo.parse_args(workload_flags(args))
  rng, ref_rng = np.random.default_rng([args.seed, 0]), np.random.default_rng([args.seed, 1])
  n_steps = args.warmup + args.steps
  host = [dpo.random_batch(rng, ref_rng, cfg, bench_args) for _ in range(n_steps)]
  # tunix's tokenized input has dpo.py's layout already: prompts left-padded, completions right-padded.
  # On the device before the loop, as dpo.py does.
  batches = [jax.device_put(dpo_trainer.TrainingInput(
      prompt_ids=hb["prompt"], prompt_mask=hb["prompt_mask"], chosen_ids=hb["chosen"],
      chosen_mask=hb["chosen_mask"], rejected_ids=hb["rejected"], rejected_mask=hb["rejected_mask"]))
      for hb in host]

  tcfg = llama3.ModelConfig(
      num_layers=cfg.n_layers, vocab_size=cfg.vocab_size, embed_dim=cfg.d_model, hidden_dim=cfg.d_ff,
      num_heads=cfg.n_heads, head_dim=cfg.hdim, num_kv_heads=cfg.n_kv_heads, rope_theta=int(cfg.rope_theta),
      norm_eps=cfg.norm_eps, weight_tying=cfg.tie_embeddings)  # remat_config NONE, as dpo.py's --remat none

  def make_model():
    rngs = nnx.Rngs(params=args.seed)
    model = llama3.Llama3(tcfg, rngs=rngs)
    # tunix initialises the MLP kernels to zeros (it expects loaded weights), and a gated MLP of zeros gets
    # zero gradients forever; give them the normal init of tunix's other weights instead.
    init = nnx.initializers.normal()
    for layer in model.layers:
      for linear in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
        linear.kernel[...] = init(rngs.params(), linear.kernel.shape)
    return model

  # Two builds from one seed: the reference starts equal to the policy, in buffers of its own.
  policy, reference = make_model(), make_model()
  params = jax.tree.leaves(nnx.state(policy, nnx.Param))
  n_total = sum(int(x.size) for x in params)
  n = n_total if cfg.tie_embeddings else n_total - cfg.vocab_size * cfg.d_model  # as count_params

  trainer = dpo_trainer.DPOTrainer(
      model=policy, ref_model=reference, optimizer=make_optimizer(config.train),
      training_config=dpo_trainer.DPOTrainingConfig(
          eval_every_n_steps=n_steps + 1, max_steps=n_steps, algorithm="dpo", beta=float(config.loss.beta)))

  compiles = [0]

  def count_compile(event: str, duration: float, **kwargs) -> None:
    if event == _COMPILE_EVENT:
      compiles[0] += 1

  # Not unregistered: the trainer's close() clears every jax.monitoring listener.
  jax.monitoring.register_event_duration_secs_listener(count_compile)

  marks = []  # (wall s, CPU s, compilations) each time the trainer asks for a batch, the previous step done

  def timed_batches():
    # The trainer prepares a batch (reference forward included) and dispatches the step asynchronously; waiting
    # for the policy's new parameters before handing out the next batch makes each interval one whole step.
    for batch in [*batches, None]:
      jax.block_until_ready(nnx.state(policy, nnx.Param))
      marks.append((time.perf_counter(), cpu_seconds(), compiles[0]))
      if batch is None:
        return
      yield batch

  trainer.train(timed_batches())

  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  # Per step: (wall s, CPU s, compiled anything?).
  steps = [(t1 - t0, c1 - c0, k1 > k0) for (t0, c0, k0), (t1, c1, k1) in zip(marks, marks[1:])]
  times, cpu, timed_idx = [], 0.0, []
  compile_time = 0.0
  for i, (dt, dc, compiled) in enumerate(steps):
    if compiled:  # never timed, as in dpo.py
      compile_time += dt
    elif i >= args.warmup:
      times.append(dt)
      timed_idx.append(i)
      cpu += dc
  if not times:
    raise SystemExit("every timed step compiled; raise --steps")
  step_time = statistics.median(times)
  tokens = statistics.mean(dpo.real_tokens(host[i]) for i in timed_idx)
  peak = measured_matmul_flops(n=2048, repeats=10)  # after the run, as the TRL worker does
  flops = training_flops(n, tokens, tokens)
  return dict(
      side="tunix", tunix_version=version("google-tunix"), jax_version=jax.__version__,
      flax_version=flax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""),
      n_params=n, n_params_total=n_total, tokens_per_step=tokens,
      padded_tokens_per_step=2 * args.batch_pairs * (args.prompt_len + args.completion_len),
      step_time_s=step_time, step_time_min_s=min(times), step_time_max_s=max(times),
      tokens_per_s=tokens / step_time, mfu=flops / step_time / peak, matmul_flops=peak,
      peak_rss_mb=peak_rss,
      compile_time_s=compile_time, compilations=compiles[0], timed_steps=len(times),
      loss=float(trainer.metrics_logger.get_metric_history("", "loss", "train")[-1]),
      cpu_cores_used=cpu / sum(times), cpu_count=os.cpu_count(), loadavg_1m=os.getloadavg()[0],
      device=jax.devices()[0].platform, step_times=[dt for dt, _, _ in steps])


def _check_tunix(python: str) -> None:
  """Exits with one line unless `python` can import tunix's DPO trainer and Llama3 model."""
  try:
    probe = subprocess.run([python, "-c", "import tunix.sft.dpo.dpo_trainer, tunix.models.llama3.model"],
                           capture_output=True, text=True)
    why = (probe.stderr.strip().splitlines() or [""])[-1] if probe.returncode else ""
  except OSError as e:
    why = str(e)
  if why:
    raise SystemExit(f"tunix is not importable by {python} ({why}); install it in its own venv "
                     "(see experiments/bench/README.md) and pass --tunix_python or set TUNIX_PYTHON")


def main(argv=None):
  args = parse_args(argv)
  if args.worker == "tunix":
    print(json.dumps(tunix_worker(args)))
    return
  _check_tunix(args.tunix_python)
  shared = workload_flags(args)
  tunix_cmd = [args.tunix_python, os.path.abspath(__file__), "--worker", "tunix", *shared,
               *["--tunix_with_jaxalign_xla_flags"] * args.tunix_with_jaxalign_xla_flags]
  jax_cmd = [sys.executable, os.path.join(HERE, "dpo.py"), "--json", *shared, *["--packing"] * args.packing]
  out = dict(workload={k: v for k, v in vars(args).items() if k not in ("worker", "tunix_python")},
             **alternate("tunix", tunix_cmd, jax_cmd, args.rounds))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
