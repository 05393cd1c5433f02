"""What the experiment scripts share: running `jaxalign.main`, the results table and files, pyplot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Built-in task evaluation: (metric key, column name).
EVAL_COLUMNS = [("eval/win_rate", "win rate"), ("eval/gt_reward", "gt reward"), ("eval/kl", "KL"),
                ("eval/valid", "valid"), ("eval/reference_valid", "ref valid")]


def run_main(args: list[str]) -> dict:
  """`python -m jaxalign.main ARGS` from the repository root; returns its final JSON summary."""
  cmd = [sys.executable, "-m", "jaxalign.main", *args]
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if p.returncode:
    raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
  return json.loads(p.stdout[p.stdout.index("{"):]) if "{" in p.stdout else {}


def sft_reference(out: str, seed: int) -> str:
  """Trains (or resumes, a no-op when finished) the shared SFT reference in OUT/sft; returns its workdir."""
  sft = os.path.join(out, "sft")
  print(f"SFT reference -> {sft}", file=sys.stderr)
  run_main([f"--config={ROOT}/configs/sft.py", f"--workdir={sft}", f"--config.seed={seed}"])
  return sft


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
  return "\n".join(["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
                   + ["| " + " | ".join(r) + " |" for r in rows])


def write_results(out: str, preamble: str, table: str, results: dict, extra: str = "") -> None:
  """OUT/results.md (preamble, table, extra) and OUT/results.json; prints the table."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(f"{preamble}\n\n{table}\n{extra}")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  print(table + ("\n" + extra if extra else ""))


def pyplot():
  """matplotlib.pyplot with the Agg backend, or None (and a note) when matplotlib is not installed."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
    return None
  return plt
