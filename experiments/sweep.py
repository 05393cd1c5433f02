"""A grid of config overrides × seeds: resumable runs, one results table (mean ± sd) and JSON.

  python experiments/sweep.py --out=runs/sweep_dpo --config=configs/dpo.py \\
      --grid="loss.beta=0.03,0.1,0.3" --seeds=3 [--set=train.steps=150] [--shared_sft]

Each cell of the grid runs once per seed in OUT/<cell>/seed<k> (`--config.seed=k`); a run that finished is
not retrained (its workdir resumes, a no-op), so a killed sweep is rerun with the same command. With
`--shared_sft` every seed's runs share one SFT reference per seed (OUT/sft_seed<k>, `init_from`), as the
offline methods' comparisons do. Writes OUT/results.json (every run's final metrics, and mean and sd per
cell) and OUT/results.md (a table: one row per cell, mean ± sd over seeds of each metric). Used by the other
experiment scripts through `run_grid` and `summarise`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import EVAL_COLUMNS, ROOT, markdown_table, run_main  # noqa: E402


def cells(grid: dict[str, list[str]]) -> list[dict[str, str]]:
  """Every combination of the grid's values, in order: `[{key: value, ...}, ...]`."""
  keys = list(grid)
  return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def cell_name(cell: dict[str, str]) -> str:
  return "_".join(f"{k.split('.')[-1]}={v}" for k, v in cell.items()) or "default"


_SFT_READY: set[str] = set()


def run_named(out: str, runs: dict[str, tuple[str, list[str]]], seeds: int | list[int], fixed: list[str] = (),
              shared_sft: bool = False, sft_root: str | None = None, log=print, collect=None) -> dict:
  """Runs (or resumes) every named run × seed; returns `{name: [result per seed]}`.

  `runs` maps a name to `(config path, flags)`; `seeds` is a count (0..n-1) or a list; seed k of run NAME lives in OUT/NAME/seed<k>. With
  `shared_sft` each seed's runs start from SFT_ROOT/sft_seed<k> (default SFT_ROOT = OUT; trained on first
  use), so several sweeps can share one SFT reference per seed. A result is `jaxalign.main`'s final JSON
  summary, or `collect(workdir, summary)` when given (e.g. averages read from the run's metrics.jsonl).
  """
  results = {}
  for name, (config, flags) in runs.items():
    results[name] = []
    for seed in (range(seeds) if isinstance(seeds, int) else seeds):
      wd = os.path.join(out, name, f"seed{seed}")
      args = [f"--config={config}", f"--workdir={wd}", f"--config.seed={seed}", *fixed, *flags]
      if shared_sft:
        sft = os.path.join(sft_root or out, f"sft_seed{seed}")
        if sft not in _SFT_READY:  # trained (or found finished) once per process: fewer holds of a shared SFT
          run_main([f"--config={ROOT}/configs/sft.py", f"--workdir={sft}", f"--config.seed={seed}"])
          _SFT_READY.add(sft)
        args.append(f"--config.init_from={sft}")
      log(f"{name} seed {seed} ...")
      summary = run_main(args)
      results[name].append(collect(wd, summary) if collect else summary)
  return results


def run_grid(out: str, config: str, grid: dict[str, list[str]], seeds: int, fixed: list[str] = (),
             shared_sft: bool = False, log=print, sft_root: str | None = None) -> dict:
  """Runs (or resumes) every cell × seed; returns `{cell name: [final metrics per seed]}`."""
  runs = {cell_name(c): (config, [f"--config.{k}={v}" for k, v in c.items()]) for c in cells(grid)}
  return run_named(out, runs, seeds, fixed, shared_sft, sft_root, log)


def mean_sd(values: list[float]) -> tuple[float, float]:
  m = sum(values) / len(values)
  sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
  return m, sd


def summarise(results: dict, columns=EVAL_COLUMNS) -> tuple[str, dict]:
  """`(markdown table of mean ± sd per cell, {cell: {key: [mean, sd]}})`."""
  stats = {name: {k: mean_sd([r[k] for r in runs if k in r]) for k, _ in columns if any(k in r for r in runs)}
           for name, runs in results.items()}
  rows = [[name, *(f"{stats[name][k][0]:.3f} ± {stats[name][k][1]:.3f}" if k in stats[name] else "–"
                   for k, _ in columns)] for name in results]
  return markdown_table(["run", *(c for _, c in columns)], rows), stats


def family(doc: str, runs: dict[str, tuple[str, list[str]]], *, default_out: str, title: str, preamble: str,
           columns=EVAL_COLUMNS, marker=lambda name: "o", legend: dict | None = None, default_steps: int = 150) -> None:
  """The command line of a family of methods compared over seeds (`offline_family.py`, `seed_family.py`): runs
  `runs` (`{name: (config file in configs/, flags)}`) × `--seeds` from per-seed SFT references, writes
  OUT/results.md and .json (`preamble` is formatted with `steps` and `seeds`) and OUT/win_rate_vs_kl.png (one
  point per method, ±1 sd both ways, `marker(name)`; `legend`: `{name: label}` for the points that get one).
  `--steps` 0 keeps each config's own `train.steps`."""
  ap = argparse.ArgumentParser(description=doc.splitlines()[0])
  ap.add_argument("--out", default=default_out)
  ap.add_argument("--methods", default=",".join(runs))
  ap.add_argument("--steps", type=int, default=default_steps, help="train.steps of every run (0: each config's own)")
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--sft_root", default=None, help="where the per-seed SFT references live (default OUT); "
                  "e.g. runs/frontier/dpo to share frontier.py's")
  ap.add_argument("--report_only", action="store_true", help="table and plot from OUT/results.json")
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  if a.report_only:
    with open(os.path.join(out, "results.json")) as f:
      results = json.load(f)["runs"]
  else:
    todo = {m: (f"{ROOT}/configs/{runs[m][0]}.py", runs[m][1]) for m in a.methods.split(",")}
    results = run_named(out, todo, a.seeds, [f"--config.train.steps={a.steps}"] if a.steps > 0 else [], shared_sft=True,
                        sft_root=a.sft_root and os.path.abspath(a.sft_root), log=lambda m: print(m, file=sys.stderr))
  table, stats = summarise(results, columns)
  from _common import pyplot, write_results
  write_results(out, preamble.format(steps=a.steps, seeds=a.seeds), table, {"runs": results, "mean_sd": stats})
  plt = pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for i, m in enumerate(results):
    (x, dx), (y, dy) = stats[m]["eval/kl"], stats[m]["eval/win_rate"]
    ax.errorbar([x], [y], xerr=[dx], yerr=[dy], fmt=marker(m), capsize=2, ms=5, label=(legend or {}).get(m))
    ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4 if i % 2 else -10), fontsize=7)
  ax.axhline(0.5, color="grey", lw=0.8, ls="--")
  ax.set_xlabel("KL(policy || SFT reference), nats")
  ax.set_ylabel("win rate vs SFT reference (ground truth)")
  ax.set_title(title.format(seeds=a.seeds))
  if legend:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "win_rate_vs_kl.png"), dpi=120)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--config", required=True, help="configs/<name>.py[:variant]")
  ap.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeat for more keys)")
  ap.add_argument("--set", action="append", default=[], help="key=value for every run")
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--shared_sft", action="store_true")
  a = ap.parse_args()
  grid = {}
  for g in a.grid:
    key, _, vals = g.partition("=")
    grid[key] = [v for v in vals.split(",") if v]
  out = os.path.abspath(a.out)
  config = a.config if os.path.isabs(a.config) else os.path.join(ROOT, a.config)
  results = run_grid(out, config, grid, a.seeds, [f"--config.{s}" for s in a.set], a.shared_sft,
                     log=lambda m: print(m, file=sys.stderr))
  table, stats = summarise(results)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"runs": results, "mean_sd": stats, "grid": grid, "seeds": a.seeds}, f, indent=1)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(f"{a.config}, {a.seeds} seeds (mean ± sd), grid {grid}, fixed {a.set}\n\n{table}\n")
  print(table)


if __name__ == "__main__":
  main()
