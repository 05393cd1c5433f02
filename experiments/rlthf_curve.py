"""RLTHF on the built-in task: label accuracy and downstream DPO win rate against the share of pairs re-annotated.

  python experiments/rlthf_curve.py --out=runs/rlthf [--budgets=0,0.05,0.1,0.2,1] [--seeds=1] \\
      [--sft_root=runs/frontier/dpo]

Per budget and seed one `python -m jaxalign.rlthf` run (configs/rlthf.py: 4096 AI-labelled pairs, 2 rounds, the
ground truth as the human, a last reward model labelling the rest, DPO 150 steps on the final labels) from that
seed's SFT reference (`experiments/sweep.py`, resumable). Budget 0 is "AI labels only" (the reward model trained
on them relabels the set); budget 1 is every pair labelled by the human. Writes OUT/results.md (mean ± sd over
seeds: the AI labels' accuracy, the final labels' accuracy, DPO's win rate, KL, validity), OUT/results.json and
OUT/rlthf_curve.png (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, pyplot, write_results  # noqa: E402
from sweep import mean_sd, run_named, summarise  # noqa: E402
from jaxalign.trainers.loop import final_metrics  # noqa: E402

COLUMNS = [("rlthf/ai_label_accuracy", "AI label acc"), ("rlthf/final_label_accuracy", "final label acc"),
           ("eval/win_rate", "DPO win rate"), ("eval/kl", "KL"), ("eval/valid", "valid")]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="runs/rlthf")
  ap.add_argument("--budgets", default="0,0.05,0.1,0.2,1")
  ap.add_argument("--seeds", type=int, default=1)
  ap.add_argument("--sft_root", default=None, help="where the per-seed SFT references live (default OUT)")
  ap.add_argument("--report_only", action="store_true")
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  budgets = [b for b in a.budgets.split(",") if b]
  if a.report_only:
    with open(os.path.join(out, "results.json")) as f:
      results = json.load(f)["runs"]
  else:
    runs = {f"budget={b}": (f"{ROOT}/configs/rlthf.py", [f"--config.rlthf.budget={b}"]) for b in budgets}
    results = run_named(out, runs, a.seeds, [], shared_sft=True, sft_root=a.sft_root and os.path.abspath(a.sft_root),
                        log=lambda m: print(m, file=sys.stderr), collect=lambda wd, _: final_metrics(wd))
  table, stats = summarise(results, COLUMNS)
  write_results(out, f"RLTHF on the built-in task (4096 pairs, 2 rounds, final labels by the reward model, DPO 150 "
                f"steps), {a.seeds} seed(s), mean ± sd; a row per share of pairs sent to the human.", table,
                {"runs": results, "mean_sd": stats})
  plt = pyplot()
  if plt is None:
    return
  xs = [100 * float(n.split("=")[1]) for n in results]
  fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
  for axis, (key, label) in zip(ax, [("rlthf/final_label_accuracy", "label accuracy vs ground truth"),
                                      ("eval/win_rate", "DPO win rate vs SFT")]):
    ms = [stats[n][key] for n in results]
    axis.errorbar(xs, [m[0] for m in ms], yerr=[m[1] for m in ms], fmt="o-", capsize=3)
    axis.set_xscale("symlog", linthresh=5)
    axis.set_xticks(xs, [f"{x:g}%" for x in xs])
    axis.set_xlabel("pairs re-annotated by the human")
    axis.set_ylabel(label)
  ai = mean_sd([r["rlthf/ai_label_accuracy"] for rs in results.values() for r in rs])[0]
  ax[0].axhline(ai, color="grey", ls="--", lw=0.8, label=f"AI labels ({ai:.3f})")
  ax[0].legend(fontsize=8)
  fig.suptitle(f"RLTHF on the built-in task, {a.seeds} seed(s)")
  fig.tight_layout()
  fig.savefig(os.path.join(out, "rlthf_curve.png"), dpi=120)


if __name__ == "__main__":
  main()
