"""The rest of the seeds' offline family against DPO on the built-in task, over seeds, at equal completions seen.

  python experiments/seed_family.py --out=runs/seed_family [--seeds=3] [--steps=150] [--methods=dpo,lipo,...] \\
      [--sft_root=runs/frontier/dpo]

Per seed k one SFT reference (SFT_ROOT/sft_seed<k>) shared by every run of that seed (`experiments/sweep.py`,
resumable). Every run sees 150 steps x 128 completions: DPO, RPO, LD-DPO and JPO 64 pairs per step; the
listwise losses 32 lists of K = 4 (or 16 lists of K = 8) completions, graded by the ground truth as LiPO grades
its lists (`builtin.preference_lists`). Writes OUT/results.md (mean ± sd over seeds of win rate against the SFT
reference, ground-truth reward, KL, validity, and the mean completion length of the policy's samples),
OUT/results.json and OUT/win_rate_vs_kl.png (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import EVAL_COLUMNS, ROOT, pyplot, write_results  # noqa: E402
from sweep import run_named, summarise  # noqa: E402

RUNS = {
    "dpo": ("dpo", []),
    "rpo": ("rpo", []),
    "ld_dpo": ("ld_dpo", []),
    "jpo": ("jpo", []),
    "lipo": ("lipo", []),  # Eq. 8, K = 4
    "lipo_rax": ("lipo", ["--config.loss.discount_base=2", "--config.loss.scale_by_list_size=True",
                          "--config.loss.reduction=pair_mean"]),
    "lipo_k8": ("lipo", ["--config.data.list_size=8", "--config.train.batch_size=16", "--config.data.num_examples=1024"]),
    "pair_logistic": ("lipo", ["--config.loss.lambda_weight=False"]),  # DPO_BT over all pairs of a list of 4
    "list_mle": ("listmle", []),
    "d2o": ("d2o", []),  # negatives only, 3 reference samples each
}
COLUMNS = EVAL_COLUMNS + [("eval/length", "length")]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="runs/seed_family")
  ap.add_argument("--methods", default=",".join(RUNS))
  ap.add_argument("--steps", type=int, default=150)
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--sft_root", default=None, help="where the per-seed SFT references live (default OUT)")
  ap.add_argument("--report_only", action="store_true", help="table and plot from OUT/results.json")
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  if a.report_only:
    with open(os.path.join(out, "results.json")) as f:
      results = json.load(f)["runs"]
  else:
    runs = {m: (f"{ROOT}/configs/{RUNS[m][0]}.py", RUNS[m][1]) for m in a.methods.split(",")}
    results = run_named(out, runs, a.seeds, [f"--config.train.steps={a.steps}"], shared_sft=True,
                        sft_root=a.sft_root and os.path.abspath(a.sft_root), log=lambda m: print(m, file=sys.stderr))
  table, stats = summarise(results, COLUMNS)
  write_results(out, f"Built-in task, {a.steps} steps x 128 completions each, {a.seeds} seeds (mean ± sd), every "
                f"seed's runs sharing that seed's SFT reference.", table, {"runs": results, "mean_sd": stats})
  plt = pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for i, m in enumerate(results):
    (x, dx), (y, dy) = stats[m]["eval/kl"], stats[m]["eval/win_rate"]
    listwise = RUNS[m][0] in ("lipo", "listmle")
    ax.errorbar([x], [y], xerr=[dx], yerr=[dy], fmt="s" if listwise else "o", capsize=2, ms=5)
    ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4 if i % 2 else -10), fontsize=7)
  ax.axhline(0.5, color="grey", lw=0.8, ls="--")
  ax.set_xlabel("KL(policy || SFT reference), nats")
  ax.set_ylabel("win rate vs SFT reference (ground truth)")
  ax.set_title(f"Seed methods vs DPO, equal completions, {a.seeds} seeds ±1 sd (s listwise)")
  fig.tight_layout()
  fig.savefig(os.path.join(out, "win_rate_vs_kl.png"), dpi=120)


if __name__ == "__main__":
  main()
