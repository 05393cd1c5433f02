"""Offline IPO vs online IPO vs IPO-MD (a grid of β) vs Nash-MD, at equal preference annotations.

  python experiments/online_family.py --out=runs/online_family [--steps=150] [--betas=0.125,0.25,0.5]

Built-in task, ground-truth judge as the annotator, one shared SFT reference (OUT/sft).
Every run sees `steps × 64` preference annotations: offline IPO (configs/ipo.py) trains for
`steps` steps on a FIXED set of that many ground-truth-labelled pairs (each seen once);
the online runs annotate 64 freshly sampled pairs per step. Writes OUT/results.md (win rate
against the SFT reference, ground-truth reward, KL, well-formed fraction, and whether IPO-MD
beats offline IPO), OUT/results.json and OUT/win_rate_vs_kl.png (needs matplotlib).
A finished run is not retrained (its workdir is resumed, which is a no-op).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import EVAL_COLUMNS as COLUMNS, ROOT, markdown_table, pyplot, run_main as run, sft_reference, write_results  # noqa: E402
BATCH = 64


def runs(steps: int, betas: list[float]) -> dict[str, tuple[str, list[str]]]:
  out = {"offline_ipo": ("ipo", [f"--config.data.num_examples={steps * BATCH}"]),
         "online_ipo": ("online_ipo", [])}
  for b in betas:
    out[f"ipo_md_{b:g}"] = ("ipo_md", [f"--config.online.mixture_coef={b}"])
  out["nash_md"] = ("nash_md", [])
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="runs/online_family")
  ap.add_argument("--steps", type=int, default=150)
  ap.add_argument("--betas", default="0.125,0.25,0.5")
  ap.add_argument("--only", default="", help="comma-separated run names (default: all)")
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  sft = sft_reference(out, a.seed)
  todo = runs(a.steps, [float(b) for b in a.betas.split(",") if b])
  if a.only:
    todo = {k: v for k, v in todo.items() if k in a.only.split(",")}
  results = {}
  for name, (config, flags) in todo.items():
    print(f"{name} ...", file=sys.stderr)
    results[name] = run([f"--config={ROOT}/configs/{config}.py", f"--workdir={os.path.join(out, name)}",
                         f"--config.init_from={sft}", f"--config.train.steps={a.steps}",
                         f"--config.train.batch_size={BATCH}", f"--config.seed={a.seed}", *flags])
    print(f"  {name}: " + ", ".join(f"{c}={results[name][k]:.3f}" for k, c in COLUMNS), file=sys.stderr)
  table = markdown_table(["method", "annotations", *(c for _, c in COLUMNS)],
                         [[m, str(a.steps * BATCH), *(f"{r[k]:.3f}" for k, _ in COLUMNS)] for m, r in results.items()])
  verdict = ""
  md = {k: r for k, r in results.items() if k.startswith("ipo_md_")}
  if md and "offline_ipo" in results:
    best = max(md, key=lambda k: md[k]["eval/win_rate"])
    off = results["offline_ipo"]["eval/win_rate"]
    beats = [k for k in md if md[k]["eval/win_rate"] > off]
    verdict = (f"\nIPO-MD beats offline IPO at equal annotations ({a.steps * BATCH}): "
               f"{'YES' if beats else 'NO'} — best IPO-MD {best} win rate {md[best]['eval/win_rate']:.3f} vs "
               f"offline IPO {off:.3f}; β values that beat it: {', '.join(beats) or 'none'}.\n")
  write_results(out, f"Built-in task, ground-truth judge, {a.steps} steps x {BATCH} pairs each, seed {a.seed}, "
                f"same SFT reference.", table, results, verdict)
  plt = pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for i, (m, r) in enumerate(results.items()):
    ax.scatter(r["eval/kl"], r["eval/win_rate"], marker="s" if m == "offline_ipo" else "o")
    ax.annotate(m, (r["eval/kl"], r["eval/win_rate"]), textcoords="offset points",
                xytext=(4, 4 if i % 2 else -10), fontsize=7)
  ax.axhline(0.5, color="grey", lw=0.8, ls="--")
  ax.set_xlabel("KL(policy || SFT reference), nats")
  ax.set_ylabel("win rate vs SFT reference (ground truth)")
  ax.set_title(f"Online vs offline IPO, {a.steps * BATCH} annotations each")
  fig.tight_layout()
  fig.savefig(os.path.join(out, "win_rate_vs_kl.png"), dpi=120)


if __name__ == "__main__":
  main()
