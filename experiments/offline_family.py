"""Every offline preference method on the built-in task, same budget, one shared SFT reference.

  python experiments/offline_family.py --out=runs/offline_family [--methods=dpo,ipo,...] [--steps=150] \\
      [--seeds=3] [--sft_root=runs/frontier]

Per seed k, one SFT reference (SFT_ROOT/sft_seed<k>, trained on first use), then each method's config
from it (OUT/<method>/seed<k>, `experiments/sweep.py`). Writes OUT/results.md (mean ± sd over seeds of the
win rate against the SFT reference, ground-truth reward, KL, well-formed fraction), OUT/results.json and
OUT/win_rate_vs_kl.png (needs matplotlib; the table is written regardless). A finished run is not
retrained (its workdir is resumed, which is a no-op), so a killed sweep is rerun with the same command.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep import family  # noqa: E402
# run name -> (config in configs/, extra flags). Pairwise methods see 150 steps x 64 pairs; unpaired ones
# 150 steps x 128 rows, i.e. the same completions: `bco_pairs` is BCO on the DPO pairs split into
# thumbs-up/down rows (the paper's comparison), `bco`/`kto` use the task's own binary feedback.
RUNS = {
    "dpo": ("dpo", []), "cdpo": ("cdpo", []), "robust": ("robust", []), "ipo": ("ipo", []),
    "hinge_norm": ("hinge_norm", []), "slic_hf": ("slic_hf", []), "orpo": ("orpo", []), "simpo": ("simpo", []),
    "bco_pair": ("bco_pair", []), "bco_pairs": ("bco", ["--config.data.feedback=pairs", "--config.train.learning_rate=1e-3"]),  # DPO's lr
    "bco": ("bco", []), "kto": ("kto", []),
    "bco_udm_split": ("bco", ["--config.data.split_families=True", "--config.udm.enabled=True"]),
    "bco_split": ("bco", ["--config.data.split_families=True"]),
}


def main() -> None:
  family(__doc__, RUNS, default_out="runs/offline_family",
         preamble="Built-in task, {steps} steps each, {seeds} seeds (mean ± sd), every seed's runs sharing that "
                  "seed's SFT reference.",
         title="Offline methods, built-in task, {seeds} seeds ±1 sd (o pairs, ^ unpaired rows)",
         marker=lambda m: "^" if RUNS[m][0] in ("bco", "kto") else "o", legend={"kto": "unpaired rows"})


if __name__ == "__main__":
  main()
