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

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, pyplot, write_results  # noqa: E402
from sweep import run_named, summarise  # noqa: E402
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
METHODS = list(RUNS)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="runs/offline_family")
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--steps", type=int, default=150)
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--sft_root", default=None, help="where the per-seed SFT references live (default OUT); "
                  "e.g. runs/frontier to share frontier.py's")
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
  table, stats = summarise(results)
  write_results(out, f"Built-in task, {a.steps} steps each, {a.seeds} seeds (mean ± sd), every seed's runs "
                f"sharing that seed's SFT reference.", table, {"runs": results, "mean_sd": stats})
  plt = pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for i, m in enumerate(results):
    unpaired = RUNS[m][0] in ("bco", "kto")
    (x, dx), (y, dy) = stats[m]["eval/kl"], stats[m]["eval/win_rate"]
    ax.errorbar([x], [y], xerr=[dx], yerr=[dy], fmt="^" if unpaired else "o", capsize=2, ms=5,
                label="unpaired rows" if unpaired and m == "kto" else None)
    ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4 if i % 2 else -10), fontsize=7)
  ax.axhline(0.5, color="grey", lw=0.8, ls="--")
  ax.set_xlabel("KL(policy || SFT reference), nats")
  ax.set_ylabel("win rate vs SFT reference (ground truth)")
  ax.set_title(f"Offline methods, built-in task, {a.seeds} seeds ±1 sd (o pairs, ^ unpaired rows)")
  fig.tight_layout()
  fig.savefig(os.path.join(out, "win_rate_vs_kl.png"), dpi=120)


if __name__ == "__main__":
  main()
