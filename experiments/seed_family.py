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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import EVAL_COLUMNS  # noqa: E402
from sweep import family  # noqa: E402

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
  family(__doc__, RUNS, default_out="runs/seed_family", columns=COLUMNS,
         preamble="Built-in task, {steps} steps x 128 completions each, {seeds} seeds (mean ± sd), every seed's runs "
                  "sharing that seed's SFT reference.",
         title="Seed methods vs DPO, equal completions, {seeds} seeds ±1 sd (s listwise)",
         marker=lambda m: "s" if RUNS[m][0] in ("lipo", "listmle") else "o")


if __name__ == "__main__":
  main()
