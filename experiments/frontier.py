"""The reward–KL frontier of the offline family over its KL strength (as in the DPO paper's figure 2).

  python experiments/frontier.py --out=runs/frontier [--seeds=3] [--betas=0.03,0.1,0.3] [--taus=0.02,0.05,0.2]

DPO over β and IPO over τ on the built-in task, each seed with its own SFT reference shared by every run of
that seed (`experiments/sweep.py`, resumable). Writes OUT/results.md (mean ± sd over seeds of win rate,
ground-truth reward, KL, validity) and OUT/frontier.png: ground-truth reward against KL to the reference,
one point per setting with ±1 sd bars on both axes, the SFT reference at KL 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, pyplot  # noqa: E402
from sweep import run_grid, summarise  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="runs/frontier")
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--betas", default="0.03,0.1,0.3")
  ap.add_argument("--taus", default="0.02,0.05,0.2")
  ap.add_argument("--report_only", action="store_true", help="plot OUT/results.json without running")
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  log = lambda m: print(m, file=sys.stderr)
  if a.report_only:
    with open(os.path.join(out, "results.json")) as f:
      saved = json.load(f)
    runs = {m: saved[m]["runs"] for m in ("dpo", "ipo")}
  else:
    runs = {"dpo": run_grid(os.path.join(out, "dpo"), f"{ROOT}/configs/dpo.py", {"loss.beta": a.betas.split(",")},
                            a.seeds, shared_sft=True, log=log),
            "ipo": run_grid(os.path.join(out, "ipo"), f"{ROOT}/configs/ipo.py", {"loss.tau": a.taus.split(",")},
                            a.seeds, shared_sft=True, log=log)}
  md, saved = [], {}
  for m, res in runs.items():
    table, stats = summarise(res)
    md.append(f"**{m.upper()}**, {a.seeds} seeds (mean ± sd)\n\n{table}\n")
    saved[m] = {"runs": res, "mean_sd": stats}
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(saved, f, indent=1)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("Built-in task, 150 steps each, every seed's runs share that seed's SFT reference.\n\n" + "\n".join(md))
  print("\n".join(md))
  plt = pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6.2, 4.2))
  ref = [r["eval/reference_gt_reward"] for res in runs.values() for rs in res.values() for r in rs]
  ax.scatter([0], [sum(ref) / len(ref)], marker="s", color="k", label="SFT reference", zorder=3)
  for color, (m, res) in zip(("C0", "C3"), runs.items()):
    st = saved[m]["mean_sd"]
    xs = [st[c]["eval/kl"] for c in res]
    ys = [st[c]["eval/gt_reward"] for c in res]
    ax.errorbar([x[0] for x in xs], [y[0] for y in ys], xerr=[x[1] for x in xs], yerr=[y[1] for y in ys],
                fmt="o-", color=color, capsize=3, label=m.upper())
    for c, x, y in zip(res, xs, ys):
      ax.annotate(c.split("=")[-1], (x[0], y[0]), textcoords="offset points", xytext=(5, -10), fontsize=7,
                  color=color)
  ax.set_xlabel("KL(policy || SFT reference), nats")
  ax.set_ylabel("ground-truth reward (held-out prompts)")
  ax.set_title(f"Reward–KL frontier, built-in task, {a.seeds} seeds (±1 sd)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "frontier.png"), dpi=120)


if __name__ == "__main__":
  main()
