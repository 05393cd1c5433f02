"""Raw-sum vs LSC-sum PPO with two reward models (sentiment, politeness) over several KL coefficients.

  python experiments/ppo_lsc.py --out=runs/ppo_lsc [--steps=60] [--kl=0.05,0.2] [--rm_steps=300] [--seeds=3] \\
      [--sft_root=runs/frontier/dpo]

Built-in task. Per seed k: an SFT reference (SFT_ROOT/sft_seed<k>) and two reward models trained on its
trunk (OUT/rm_sentiment/seed<k>, OUT/rm_politeness/seed<k>, configs/reward_model.py), then one
configs/ppo_transformed.py run per (aggregation, KL coefficient) in OUT/<run>/seed<k>, all from that seed's
SFT policy and reward models; mean ± sd over seeds. Per run, by the ground truth of the rollouts of the last `--tail` iterations
(on-policy samples of training prompts): the fraction of samples good on BOTH properties
(`builtin.both_good`: valid, positive sentiment, polite closing), each property's ground-truth
score (−5 when malformed), the sequence KL to the reference; and eval/win_rate, eval/kl on the
held-out prompts (ground-truth reward vs SFT samples). Writes OUT/results.md, OUT/results.json and
OUT/both_good_vs_kl.png (needs matplotlib). A finished run is not retrained (resume is a no-op).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, pyplot, run_main as run, write_results  # noqa: E402
from sweep import run_named, summarise as mean_sd_table  # noqa: E402
TAIL_KEYS = [("train/both_good", "both good"), ("train/gt_sentiment", "gt sentiment"),
             ("train/gt_politeness", "gt politeness"), ("train/kl", "KL (train)")]
EVAL_KEYS = [("eval/win_rate", "win rate"), ("eval/kl", "KL (eval)"), ("eval/valid", "valid")]


def summarise(workdir: str, tail: int) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  train = [r for r in rows if "train/both_good" in r][-tail:]
  out = {k: float(np.mean([r[k] for r in train])) for k, _ in TAIL_KEYS}
  ev = [r for r in rows if "eval/win_rate" in r]
  out.update({k: float(ev[-1][k]) for k, _ in EVAL_KEYS} if ev else {})
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="runs/ppo_lsc")
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--kl", default="0.05,0.2")
  ap.add_argument("--aggregations", default="raw_sum,lsc")
  ap.add_argument("--rm_steps", type=int, default=300)
  ap.add_argument("--tail", type=int, default=10, help="iterations averaged for the rollout metrics")
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--sft_root", default=None, help="where the per-seed SFT references live (default OUT)")
  ap.add_argument("--tiny", action="store_true", help="smoke run: tiny configs, random init")
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  variant = ":tiny" if a.tiny else ""
  log = lambda m: print(m, file=sys.stderr)
  names = [(agg, float(kl)) for agg in a.aggregations.split(",") if agg for kl in a.kl.split(",") if kl]
  results = {f"{agg}_kl{kl:g}": [] for agg, kl in names}
  for seed in range(a.seeds):
    common = [f"--config.seed={seed}"]
    sft = "" if a.tiny else os.path.join(os.path.abspath(a.sft_root or out), f"sft_seed{seed}")
    if sft:
      run([f"--config={ROOT}/configs/sft.py", f"--workdir={sft}", *common])
    rms = []
    for prop in ("sentiment", "politeness"):
      d = os.path.join(out, f"rm_{prop}", f"seed{seed}")
      log(f"reward model {prop} -> {d}")
      run([f"--config={ROOT}/configs/reward_model.py{variant}", f"--workdir={d}", *common,
           f"--config.init_from={sft}", f"--config.reward.property={prop}",
           *([] if a.tiny else [f"--config.train.steps={a.rm_steps}"])])
      rms.append(d)
    # Same SFT policy and reward models for every (aggregation, KL coefficient) of this seed.
    run_seed = lambda name, flags: run_named(out, {name: (f"{ROOT}/configs/ppo_transformed.py{variant}", flags)}, [seed],
                                             log=log, collect=lambda wd, _: summarise(wd, a.tail))
    for agg, kl in names:
      name = f"{agg}_kl{kl:g}"
      res = run_seed(name, [f"--config.init_from={sft}", f"--config.ppo.reward_paths={','.join(rms)}",
                            f"--config.ppo.aggregation={agg}", f"--config.ppo.kl_coef={kl}",
                            *([] if a.tiny else [f"--config.train.steps={a.steps}"])])[name][0]
      results[name].append(dict(aggregation=agg, kl_coef=kl, **res))
      log(f"  {name} seed {seed}: " + ", ".join(f"{c}={res.get(k, float('nan')):.3f}" for k, c in TAIL_KEYS + EVAL_KEYS))
  cols = TAIL_KEYS + EVAL_KEYS
  table, stats = mean_sd_table(results, cols)
  write_results(out, f"PPO, two reward models (sentiment, politeness), {a.steps} iterations x 64 rollouts, "
                f"{a.seeds} seeds (mean ± sd; per seed its own SFT reference and reward models); rollout metrics "
                f"averaged over the last {a.tail} iterations.", table, {"runs": results, "mean_sd": stats})
  plt = pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for agg in dict.fromkeys(agg for agg, _ in names):
    rs = sorted((stats[n] for n in results if n.startswith(agg + "_kl")), key=lambda s: s["train/kl"][0])
    ax.errorbar([s["train/kl"][0] for s in rs], [s["train/both_good"][0] for s in rs],
                xerr=[s["train/kl"][1] for s in rs], yerr=[s["train/both_good"][1] for s in rs],
                fmt="o-", capsize=3, label=agg)
  ax.set_xlabel("KL to the SFT reference (nats / sequence)")
  ax.set_ylabel("fraction good on both properties")
  ax.set_title(f"{a.seeds} seeds, ±1 sd")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "both_good_vs_kl.png"), dpi=120)


if __name__ == "__main__":
  main()
