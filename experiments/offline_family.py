"""Every offline preference method on the built-in task, same budget, one shared SFT reference.

  python experiments/offline_family.py --out=runs/offline_family [--methods=dpo,ipo,...] [--steps=150]

Trains the SFT reference once (OUT/sft), then each method's config with
`--config.init_from=OUT/sft`, and writes OUT/results.md (a table: win rate against the
SFT reference, ground-truth reward, KL, well-formed fraction) and OUT/win_rate_vs_kl.png.
Needs the `plot` extra (matplotlib) for the figure; the table is written regardless.
A finished method is not retrained (its workdir is resumed, which is a no-op).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import EVAL_COLUMNS as COLUMNS, ROOT, markdown_table, pyplot, run_main as run, sft_reference, write_results  # noqa: E402
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
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  sft = sft_reference(out, a.seed)
  results = {}
  for m in a.methods.split(","):
    print(f"{m} ...", file=sys.stderr)
    config, flags = RUNS[m]
    results[m] = run([f"--config={ROOT}/configs/{config}.py", f"--workdir={os.path.join(out, m)}",
                      f"--config.init_from={sft}", f"--config.train.steps={a.steps}", f"--config.seed={a.seed}",
                      *flags])
  table = markdown_table(["method", *(c for _, c in COLUMNS)],
                         [[m, *(f"{r[k]:.3f}" for k, _ in COLUMNS)] for m, r in results.items()])
  write_results(out, f"Built-in task, {a.steps} steps each, seed {a.seed}, same SFT reference.", table, results)
  plt = pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for i, (m, r) in enumerate(results.items()):
    unpaired = RUNS[m][0] in ("bco", "kto")
    ax.scatter(r["eval/kl"], r["eval/win_rate"], marker="^" if unpaired else "o",
               label="unpaired rows" if unpaired and i == len(results) - 1 else None)
    ax.annotate(m, (r["eval/kl"], r["eval/win_rate"]), textcoords="offset points",
                xytext=(4, 4 if i % 2 else -10), fontsize=7)
  ax.axhline(0.5, color="grey", lw=0.8, ls="--")
  ax.set_xlabel("KL(policy || SFT reference), nats")
  ax.set_ylabel("win rate vs SFT reference (ground truth)")
  ax.set_title("Offline methods, built-in task (o pairs, ^ unpaired rows)")
  fig.tight_layout()
  fig.savefig(os.path.join(out, "win_rate_vs_kl.png"), dpi=120)


if __name__ == "__main__":
  main()
