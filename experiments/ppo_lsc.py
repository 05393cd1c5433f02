"""Raw-sum vs LSC-sum PPO with two reward models (sentiment, politeness) over several KL coefficients.

  python experiments/ppo_lsc.py --out=runs/ppo_lsc [--steps=60] [--kl=0.05,0.2] [--rm_steps=300]

Built-in task. One shared SFT reference (OUT/sft) and two reward models trained once on the SFT
trunk (OUT/rm_sentiment, OUT/rm_politeness, configs/reward_model.py), then one
configs/ppo_transformed.py run per (aggregation, KL coefficient), all from the same SFT policy and
reward models. Per run, by the ground truth of the rollouts of the last `--tail` iterations
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
from _common import ROOT, markdown_table, pyplot, run_main as run, sft_reference, write_results  # noqa: E402
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
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tiny", action="store_true", help="smoke run: tiny configs, random init")
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  variant = ":tiny" if a.tiny else ""
  sft = os.path.join(out, "sft")
  common = [f"--config.seed={a.seed}"]
  if not a.tiny:
    sft_reference(out, a.seed)
  rms = []
  for prop in ("sentiment", "politeness"):
    d = os.path.join(out, f"rm_{prop}")
    print(f"reward model {prop} -> {d}", file=sys.stderr)
    run([f"--config={ROOT}/configs/reward_model.py{variant}", f"--workdir={d}", *common,
         f"--config.init_from={'' if a.tiny else sft}", f"--config.reward.property={prop}",
         *([] if a.tiny else [f"--config.train.steps={a.rm_steps}"])])
    rms.append(d)
  results = {}
  for agg in [x for x in a.aggregations.split(",") if x]:
    for kl in [float(x) for x in a.kl.split(",") if x]:
      name = f"{agg}_kl{kl:g}"
      wd = os.path.join(out, name)
      print(f"{name} ...", file=sys.stderr)
      run([f"--config={ROOT}/configs/ppo_transformed.py{variant}", f"--workdir={wd}", *common,
           f"--config.init_from={'' if a.tiny else sft}", f"--config.ppo.reward_paths={','.join(rms)}",
           f"--config.ppo.aggregation={agg}", f"--config.ppo.kl_coef={kl}",
           *([] if a.tiny else [f"--config.train.steps={a.steps}"])])
      results[name] = dict(aggregation=agg, kl_coef=kl, **summarise(wd, a.tail))
      print(f"  {name}: " + ", ".join(f"{c}={results[name].get(k, float('nan')):.3f}"
                                      for k, c in TAIL_KEYS + EVAL_KEYS), file=sys.stderr)
  cols = TAIL_KEYS + EVAL_KEYS
  table = markdown_table(["aggregation", "β_KL", *(c for _, c in cols)],
                         [[r["aggregation"], f"{r['kl_coef']:g}", *(f"{r.get(k, float('nan')):.3f}" for k, _ in cols)]
                          for r in results.values()])
  write_results(out, f"PPO, two reward models (sentiment, politeness), {a.steps} iterations x 64 rollouts, "
                f"seed {a.seed}; rollout metrics averaged over the last {a.tail} iterations.", table, results)
  plt = pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for agg in dict.fromkeys(r["aggregation"] for r in results.values()):
    rs = sorted((r for r in results.values() if r["aggregation"] == agg), key=lambda r: r["train/kl"])
    ax.plot([r["train/kl"] for r in rs], [r["train/both_good"] for r in rs], "o-", label=agg)
  ax.set_xlabel("KL to the SFT reference (nats / sequence)")
  ax.set_ylabel("fraction good on both properties")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "both_good_vs_kl.png"), dpi=120)


if __name__ == "__main__":
  main()
