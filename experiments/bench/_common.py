"""Pieces the benchmark scripts share. Imports nothing heavy: the TRL and tunix workers use it too,
and a jax import there would count in their peak RSS."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess


def cpu_seconds() -> float:
  """This process's user + system CPU seconds (divided by wall time: the cores a run really got)."""
  t = os.times()
  return t.user + t.system


def add_workload_args(p: argparse.ArgumentParser) -> None:
  """The DPO workload every script times the same way: preset, pairs, row layout, steps, seed."""
  p.add_argument("--preset", default="tiny", choices=["nano", "tiny", "small", "500m"])
  p.add_argument("--batch_pairs", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--completion_len", type=int, default=128)
  p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps; the first includes compilation")
  p.add_argument("--seed", type=int, default=0)


def workload_flags(args) -> list[str]:
  """`add_workload_args`'s values as command-line flags, for `dpo.py` and the workers."""
  return ["--preset", args.preset, "--batch_pairs", str(args.batch_pairs), "--prompt_len", str(args.prompt_len),
          "--completion_len", str(args.completion_len), "--steps", str(args.steps), "--warmup", str(args.warmup),
          "--seed", str(args.seed)]


def run_json(cmd: list[str]) -> dict:
  """Runs a benchmark process and returns the JSON object on its last output line."""
  p = subprocess.run(cmd, capture_output=True, text=True)
  if p.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-4000:]}")
  return json.loads(p.stdout.strip().splitlines()[-1])


SUMMARY_KEYS = ("tokens_per_step", "step_time_s", "tokens_per_s", "mfu", "peak_rss_mb", "cpu_cores_used", "loadavg_1m")


def alternate(other: str, other_cmd: list[str], jaxalign_cmd: list[str], rounds: int) -> dict:
  """Runs `other` then jaxalign, `rounds` times; medians per side, jaxalign / other ratios, every run."""
  runs = {other: [], "jaxalign": []}
  for _ in range(rounds):
    runs[other].append(run_json(other_cmd))
    runs["jaxalign"].append(run_json(jaxalign_cmd))
  med = {side: {k: statistics.median(r[k] for r in rs) for k in SUMMARY_KEYS} for side, rs in runs.items()}
  return dict(**med, ratio_tokens_per_s=med["jaxalign"]["tokens_per_s"] / med[other]["tokens_per_s"],
              ratio_peak_rss=med["jaxalign"]["peak_rss_mb"] / med[other]["peak_rss_mb"],
              jaxalign_step_compiles=[r["step_compiles"] for r in runs["jaxalign"]], runs=runs)


def print_result(out: dict, as_json: bool) -> None:
  """One JSON line (`--json`), or an aligned `key  value` table."""
  if as_json:
    print(json.dumps(out))
    return
  width = max(len(k) for k in out)
  for k, v in out.items():
    print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
