"""Offline IPO vs online IPO vs IPO-MD vs Nash-MD at equal preference annotations, over seeds and KL strengths.

  python experiments/online_family.py --out=runs/online_family [--steps=150] [--seeds=3] \\
      [--offline_taus=0.02,0.05,0.2] [--online_taus=0.05,0.2,1] [--nash_kls=0.03,0.1,0.3] \\
      [--mixtures=0.125,0.25,0.5] [--sft_root=runs/frontier/dpo]

Built-in task, ground-truth judge as the annotator; per seed k one SFT reference (SFT_ROOT/sft_seed<k>)
shared by every run of that seed (`experiments/sweep.py`, resumable). Every run sees `steps × 64` preference
annotations: offline IPO (configs/ipo.py) trains on a FIXED set of that many ground-truth-labelled pairs (each
seen once); the online runs annotate 64 freshly sampled pairs per step. Two results:

- the method table (OUT/results.md): each method at its config's KL strength (τ = 0.05, Nash-MD's 0.1) and
  IPO-MD over its mixture β, mean ± sd over seeds;
- matched KL (OUT/matched_kl.png and a second table): each method swept over its KL strength (IPO's τ,
  Nash-MD's kl_coef), win rate against KL with ±1 sd bars, and each method's win rate interpolated at the
  KLs the offline IPO sweep reached (within the range the method itself covered; "–" outside it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, markdown_table, pyplot, write_results  # noqa: E402
from sweep import run_named, summarise  # noqa: E402
BATCH = 64
CURVES = {"offline IPO": "offline_ipo", "online IPO": "online_ipo", "IPO-MD (β = 0.25)": "ipo_md_0.25",
          "Nash-MD (β = 0.5)": "nash_md"}


def runs(steps: int, offline_taus, online_taus, nash_kls, mixtures) -> dict[str, tuple[str, list[str]]]:
  """{run name: (config path, flags)}; names end in `_tau=<τ>` / `_kl=<kl_coef>` for the sweeps."""
  cfg = lambda n: f"{ROOT}/configs/{n}.py"
  out = {}
  for t in offline_taus:
    out[f"offline_ipo_tau={t}"] = (cfg("ipo"), [f"--config.data.num_examples={steps * BATCH}", f"--config.loss.tau={t}"])
  for t in online_taus:
    out[f"online_ipo_tau={t}"] = (cfg("online_ipo"), [f"--config.online.tau={t}"])
    out[f"ipo_md_0.25_tau={t}"] = (cfg("ipo_md"), ["--config.online.mixture_coef=0.25", f"--config.online.tau={t}"])
  for b in mixtures:
    out.setdefault(f"ipo_md_{b}_tau=0.05", (cfg("ipo_md"), [f"--config.online.mixture_coef={b}", "--config.online.tau=0.05"]))
  for k in nash_kls:
    out[f"nash_md_kl={k}"] = (cfg("nash_md"), [f"--config.online.kl_coef={k}"])
  return out


def sweep_points(stats: dict, prefix: str) -> list[tuple[float, float, float, float]]:
  """[(KL mean, KL sd, win mean, win sd)] of the runs named `prefix_tau=…` / `prefix_kl=…`, by KL."""
  pts = [(s["eval/kl"][0], s["eval/kl"][1], s["eval/win_rate"][0], s["eval/win_rate"][1])
         for name, s in stats.items() if name.rsplit("_", 1)[0] == prefix]
  return sorted(pts)


def at_kl(points, kl: float) -> float | None:
  """Win rate interpolated linearly in KL along a method's sweep; None outside the KLs it reached."""
  xs, ys = [p[0] for p in points], [p[2] for p in points]
  if not xs or kl < xs[0] or kl > xs[-1]:
    return None
  return float(np.interp(kl, xs, ys))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="runs/online_family")
  ap.add_argument("--steps", type=int, default=150)
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--offline_taus", default="0.02,0.05,0.2")
  ap.add_argument("--online_taus", default="0.05,0.2,1")
  ap.add_argument("--nash_kls", default="0.03,0.1,0.3")
  ap.add_argument("--mixtures", default="0.125,0.25,0.5")
  ap.add_argument("--sft_root", default=None, help="where the per-seed SFT references live (default OUT)")
  ap.add_argument("--report_only", action="store_true", help="tables and plot from OUT/results.json")
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  split = lambda s: [v for v in s.split(",") if v]
  if a.report_only:
    with open(os.path.join(out, "results.json")) as f:
      results = json.load(f)["runs"]
  else:
    todo = runs(a.steps, split(a.offline_taus), split(a.online_taus), split(a.nash_kls), split(a.mixtures))
    results = run_named(out, todo, a.seeds, [f"--config.train.steps={a.steps}", f"--config.train.batch_size={BATCH}"],
                        shared_sft=True, sft_root=a.sft_root and os.path.abspath(a.sft_root),
                        log=lambda m: print(m, file=sys.stderr))
  _, stats = summarise(results)
  # The method table: every method at its config's KL strength, IPO-MD over β.
  main_rows = {"offline IPO (τ = 0.05)": "offline_ipo_tau=0.05", "online IPO (τ = 0.05)": "online_ipo_tau=0.05",
               **{f"IPO-MD β = {b} (τ = 0.05)": f"ipo_md_{b}_tau=0.05" for b in split(a.mixtures)},
               "Nash-MD-PG (β = 0.5, kl_coef 0.1)": "nash_md_kl=0.1"}
  table, _ = summarise({label: results[name] for label, name in main_rows.items() if name in results})
  # Matched KL: each curve interpolated at the KLs of the offline IPO sweep.
  curves = {label: sweep_points(stats, prefix) for label, prefix in CURVES.items()}
  anchors = [p[0] for p in curves["offline IPO"]]
  matched = markdown_table(["method", *(f"win @ KL {k:.2f}" for k in anchors), "swept KL range"],
                           [[label, *(f"{w:.3f}" if (w := at_kl(pts, k)) is not None else "–" for k in anchors),
                             f"{pts[0][0]:.2f}–{pts[-1][0]:.2f}" if pts else "–"] for label, pts in curves.items()])
  preamble = (f"Built-in task, ground-truth judge, {a.steps} steps x {BATCH} pairs each ({a.steps * BATCH} annotations), "
              f"{a.seeds} seeds (mean ± sd), every seed's runs sharing that seed's SFT reference.")
  extra = (f"\nMatched KL: win rate interpolated (linearly in KL, over the means) along each method's sweep "
           f"(offline IPO τ ∈ {a.offline_taus}; online IPO and IPO-MD τ ∈ {a.online_taus}; Nash-MD kl_coef ∈ "
           f"{a.nash_kls}) at the KLs offline IPO reached:\n\n{matched}\n\nEvery run:\n\n{summarise(results)[0]}\n")
  write_results(out, preamble, table, {"runs": results, "mean_sd": stats}, extra)
  plt = pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for (label, pts), marker in zip(curves.items(), "soD^"):
    if pts:
      ax.errorbar([p[0] for p in pts], [p[2] for p in pts], xerr=[p[1] for p in pts], yerr=[p[3] for p in pts],
                  fmt=marker + "-", capsize=3, ms=5, label=label)
  ax.axhline(0.5, color="grey", lw=0.8, ls="--")
  ax.set_xlabel("KL(policy || SFT reference), nats")
  ax.set_ylabel("win rate vs SFT reference (ground truth)")
  ax.set_title(f"Online vs offline IPO at matched KL, {a.steps * BATCH} annotations, {a.seeds} seeds ±1 sd")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "matched_kl.png"), dpi=120)


if __name__ == "__main__":
  main()
