"""The seeds' online and RL methods (DR-PO, BPO, DisCO, f-DPG) against their baselines on the built-in task, over seeds.

  python experiments/rl_family.py --out=runs/rl_family [--seeds=3] [--methods=ppo,dr_po,...] \\
      [--sft_root=runs/frontier/dpo]

Per seed k one SFT reference (SFT_ROOT/sft_seed<k>) shared by every run of that seed (`experiments/sweep.py`,
resumable); every run keeps its config's budget (`--steps=0`). The comparisons the issue asks for:
  - DR-PO vs PPO at the same rollouts (100 iterations × 64; β_mix 0.5 = the config, and 1.0 = the paper's);
  - BPO vs online DPO / online IPO against the fixed SFT reference (150 steps × 64 pairs each): the behaviour
    model refreshed every 10 steps (copy, or EMA 0.5);
  - DisCO (logL, τ = 10), DisCO-b, DisCO with the likelihood-ratio score (τ = 1): 100 iterations × 16 prompts × 8;
  - f-DPG toward π₀·exp(r/β): Jensen–Shannon at β = 1 (the config) and 0.3, reverse KL at β = 0.3.
Writes OUT/results.md (mean ± sd of win rate against the SFT reference, ground-truth reward, KL, validity),
OUT/results.json and OUT/win_rate_vs_kl.png (needs matplotlib), then OUT/learning.md: win rate and KL at the
first evaluation and at the end, and the rollout tokens the policy itself generated per iteration
(DR-PO's teacher-forced prefixes left out) and the share of rollouts good on every property (DisCO's binary
reward) over the last 10 iterations, from every run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import EVAL_COLUMNS  # noqa: E402
from sweep import family, mean_sd  # noqa: E402
from _common import markdown_table  # noqa: E402

FIXED_DPO = ["--config.online.reference=fixed"]
IPO = ["--config.online.loss=ipo", "--config.online.tau=0.05"]
RUNS = {
    "ppo": ("ppo", []),
    "dr_po": ("dr_po", []),
    "dr_po_mix1": ("dr_po", ["--config.ppo.reset_prob=1.0"]),
    "online_dpo": ("bpo", FIXED_DPO),
    "bpo": ("bpo", []),
    "bpo_ema": ("bpo", ["--config.online.behavior_ema=0.5"]),
    "online_ipo": ("bpo", FIXED_DPO + IPO),
    "bpo_ipo": ("bpo", IPO),
    "disco": ("disco", []),
    "disco_b": ("disco", ["--config.disco.variant=disco_b"]),
    "disco_lratio": ("disco", ["--config.disco.score=Lratio", "--config.disco.tau=1"]),
    "f_dpg_js": ("f_dpg", []),
    "f_dpg_js_b0.3": ("f_dpg", ["--config.f_dpg.beta=0.3"]),
    "f_dpg_rkl_b0.3": ("f_dpg", ["--config.f_dpg.divergence=rkl", "--config.f_dpg.beta=0.3"]),
}
COLUMNS = EVAL_COLUMNS + [("eval/length", "length")]


def learning_table(out: str, methods: list[str]) -> str:
  """Win rate and KL at the first evaluation (its step in brackets) and at the end, and the policy's own rollout
  tokens per iteration (PPO-style trainers)."""
  rows = []
  for m in methods:
    early, end, tokens, good = [], [], [], []
    d = os.path.join(out, m)
    for seed in sorted(os.listdir(d)) if os.path.isdir(d) else []:
      path = os.path.join(d, seed, "metrics.jsonl")
      if not os.path.exists(path):
        continue
      with open(path) as f:
        rs = [json.loads(line) for line in f]
      ev = [r for r in rs if "eval/win_rate" in r]
      if not ev:
        continue
      early.append(ev[0])
      end.append(ev[-1])
      per = [r.get("train/policy_tokens", r.get("train/length")) for r in rs if "train/loss" in r]
      per = [x for x in per if x is not None]
      if per:
        tokens.append(sum(per) / len(per))
      bg = [r["train/both_good"] for r in rs if "train/both_good" in r][-10:]
      if bg:
        good.append(sum(bg) / len(bg))
    fmt = lambda rs, k: "{:.3f} ± {:.3f}".format(*mean_sd([r[k] for r in rs])) if rs else "–"
    at = f" ({early[0]['step']})" if early else ""
    rows.append([m, str(len(end)), fmt(early, "eval/win_rate") + at, fmt(early, "eval/kl"), fmt(end, "eval/win_rate"),
                 fmt(end, "eval/kl"), "{:.1f}".format(mean_sd(tokens)[0]) if tokens else "–",
                 "{:.3f} ± {:.3f}".format(*mean_sd(good)) if good else "–"])
  return markdown_table(["run", "seeds", "win, first eval (step)", "KL, first eval", "win (end)", "KL (end)",
                         "policy tokens / rollout", "rollouts good on all properties (last 10 it.)"], rows)


def main() -> None:
  family(__doc__, RUNS, default_out="runs/rl_family", columns=COLUMNS, default_steps=0,
         preamble="Built-in task, each config's own budget, {seeds} seeds (mean ± sd), every seed's runs sharing "
                  "that seed's SFT reference.",
         title="Online and RL seed methods, {seeds} seeds ±1 sd",
         marker=lambda m: {"dr": "s", "bp": "^", "on": "^", "di": "D", "f_": "v"}.get(m[:2], "o"))
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="runs/rl_family")
  ap.add_argument("--methods", default=",".join(RUNS))
  a, _ = ap.parse_known_args()
  table = learning_table(os.path.abspath(a.out), a.methods.split(","))
  with open(os.path.join(os.path.abspath(a.out), "learning.md"), "w") as f:
    f.write(table + "\n")
  print(table)


if __name__ == "__main__":
  main()
