"""TLCR against sequence-level and discrete token rewards, with its ablations, over several seeds.

  python experiments/tlcr.py --out=runs/tlcr_exp [--seeds=0,1,2] [--steps=60] [--variants=...]

Built-in task. Per seed: one SFT reference (OUT/s<seed>/sft), one token discriminator trained on the
built-in revisions (OUT/s<seed>/discriminator, configs/tlcr_discriminator.py) and one sequence-level
reward model on the ground-truth-labelled pairs (OUT/s<seed>/rm, configs/reward_model.py), all on the
SFT trunk; then one PPO run per variant, all with the same SFT policy, prompts, PPO budget
(`--steps` iterations × 64 rollouts, 4 epochs × 2 minibatches) and KL coefficient:

  sequence_rm    the reward model's score at EOS (configs/ppo.py, ppo.reward_source=reward_models)
  discrete       ±1 token rewards where D ≥ 0.6 / D ≤ 0.4 (configs/ppo_token_discrete.py)
  tlcr           r = 2D − 1 on every token (configs/tlcr.py)
  tlcr_official  r = 2σ(2D − 1) − 1 (the authors' double softmax)
  positive_only  TLCR with the negative token rewards set to 0
  negative_only  TLCR with the positive token rewards set to 0

All token-reward variants use the exact KL over the vocabulary (`ppo.kl_estimator=full`); sequence_rm
uses the same. Per run: eval/win_rate against the SFT reference, eval/gt_reward, eval/kl, eval/valid at
the end (held-out prompts, by the ground truth), and the learning curves. Writes OUT/results.md (mean ±
sd over seeds), OUT/results.json, OUT/curves.png (win rate and KL per iteration) and
OUT/win_rate_vs_kl.png (needs matplotlib). Finished runs are not retrained (resume is a no-op).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, markdown_table, pyplot, run_main as run, write_results  # noqa: E402

VARIANTS = {
    "sequence_rm": ("ppo.py", ["--config.ppo.reward_source=reward_models"]),
    "discrete": ("ppo_token_discrete.py", []),
    "tlcr": ("tlcr.py", []),
    "tlcr_official": ("tlcr.py", ["--config.tlcr.token_reward=official"]),
    "positive_only": ("tlcr.py", ["--config.tlcr.sign=positive"]),
    "negative_only": ("tlcr.py", ["--config.tlcr.sign=negative"]),
}
KEYS = [("eval/win_rate", "win rate"), ("eval/gt_reward", "gt reward"), ("eval/kl", "KL"), ("eval/valid", "valid")]


def final_eval(workdir: str) -> tuple[dict, list[dict]]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  ev = [r for r in rows if "eval/win_rate" in r]
  return ({k: float(ev[-1][k]) for k, _ in KEYS} if ev else {}), ev


def stages(out: str, seed: int, tiny: bool, report_only: bool) -> dict:
  """The per-seed SFT, discriminator and reward model (each trained once)."""
  d = os.path.join(out, f"s{seed}")
  v = ":tiny" if tiny else ""
  sft, disc, rm = os.path.join(d, "sft"), os.path.join(d, "discriminator"), os.path.join(d, "rm")
  common = [f"--config.seed={seed}"]
  if not report_only:
    print(f"seed {seed}: SFT -> {sft}", file=sys.stderr)
    run([f"--config={ROOT}/configs/sft.py{v}", f"--workdir={sft}", *common])
    print(f"seed {seed}: discriminator -> {disc}", file=sys.stderr)
    run([f"--config={ROOT}/configs/tlcr_discriminator.py{v}", f"--workdir={disc}", *common, f"--config.init_from={sft}"])
    print(f"seed {seed}: reward model -> {rm}", file=sys.stderr)
    run([f"--config={ROOT}/configs/reward_model.py{v}", f"--workdir={rm}", *common, f"--config.init_from={sft}"])
  with open(os.path.join(disc, "metrics.jsonl")) as f:
    disc_eval = [json.loads(line) for line in f if '"eval/' in line][-1]
  return dict(sft=sft, disc=disc, rm=rm, disc_eval={k: v for k, v in disc_eval.items() if k.startswith("eval/")})


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="runs/tlcr_exp")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--steps", type=int, default=15, help="PPO iterations per run (configs/tlcr.py: 15)")
  ap.add_argument("--kl", type=float, default=0.1, help="β_KL of every run (configs/tlcr.py: 0.1, the authors')")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--tiny", action="store_true", help="smoke run: tiny configs")
  ap.add_argument("--report_only", action="store_true", help="no runs: the table and plots from OUT's runs")
  a = ap.parse_args()
  out = os.path.abspath(a.out)
  seeds = [int(s) for s in a.seeds.split(",") if s]
  names = [n for n in a.variants.split(",") if n]
  for n in names:
    if n not in VARIANTS:
      raise SystemExit(f"unknown variant {n!r}; expected some of {', '.join(VARIANTS)}")
  v = ":tiny" if a.tiny else ""
  results: dict = {n: {} for n in names}
  curves: dict = {n: {} for n in names}
  disc_evals = {}
  for seed in seeds:
    st = stages(out, seed, a.tiny, a.report_only)
    disc_evals[seed] = st["disc_eval"]
    for n in names:
      cfg, extra = VARIANTS[n]
      wd = os.path.join(out, f"s{seed}", n)
      if not a.report_only:
        print(f"seed {seed}: {n} ...", file=sys.stderr)
        run([f"--config={ROOT}/configs/{cfg}{v}", f"--workdir={wd}", f"--config.seed={seed}",
             f"--config.init_from={st['sft']}", f"--config.tlcr.discriminator_path={st['disc']}",
             f"--config.ppo.reward_paths={st['rm']}", f"--config.ppo.kl_coef={a.kl}", "--config.ppo.kl_estimator=full",
             *([] if a.tiny else [f"--config.train.steps={a.steps}", f"--config.eval.every={max(1, a.steps // 6)}"]),
             *extra])
      results[n][seed], curves[n][seed] = final_eval(wd)
      print(f"  {n} seed {seed}: " + ", ".join(f"{c}={results[n][seed].get(k, float('nan')):.3f}" for k, c in KEYS),
            file=sys.stderr)
  stat = lambda n, k: [results[n][s][k] for s in seeds if k in results[n][s]]
  fmt = lambda xs: f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1) if len(xs) > 1 else 0.0:.3f}" if xs else "n/a"
  table = markdown_table(["variant", *(c for _, c in KEYS)], [[n, *(fmt(stat(n, k)) for k, _ in KEYS)] for n in names])
  per_seed = markdown_table(["variant", *(f"win rate s{s}" for s in seeds)],
                            [[n, *(f"{results[n][s].get('eval/win_rate', float('nan')):.3f}" for s in seeds)]
                             for n in names])
  disc = markdown_table(["seed", "token accuracy", "sign agreement", "p positive", "p negative", "p unchanged"],
                        [[str(s), *(f"{e.get(k, float('nan')):.3f}" for k in
                                    ("eval/token_accuracy", "eval/sign_agreement", "eval/p_positive",
                                     "eval/p_negative", "eval/p_unchanged"))] for s, e in disc_evals.items()])
  write_results(out, f"PPO on the built-in task, {a.steps} iterations × 64 rollouts, β_KL = {a.kl} (exact KL), "
                f"seeds {a.seeds}: mean ± sd over seeds of the final held-out evaluation (win rate against the SFT "
                "reference by the ground truth).", table,
                {"results": {n: {str(s): r for s, r in rs.items()} for n, rs in results.items()},
                 "discriminator": {str(s): e for s, e in disc_evals.items()}},
                extra=f"\nPer seed:\n\n{per_seed}\n\nDiscriminators (held-out rows; sign agreement on SFT samples):"
                      f"\n\n{disc}\n")
  plt = pyplot()
  if plt is None:
    return
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for n in names:
    steps = sorted({r["step"] for s in seeds for r in curves[n][s]})
    mean = lambda k: [np.mean([r[k] for s in seeds for r in curves[n][s] if r["step"] == t]) for t in steps]
    axes[0].plot(steps, mean("eval/win_rate"), "o-", label=n)
    axes[1].plot(steps, mean("eval/kl"), "o-", label=n)
  axes[0].set(xlabel="PPO iteration", ylabel="win rate vs SFT (mean over seeds)")
  axes[1].set(xlabel="PPO iteration", ylabel="KL to SFT (nats / sequence)")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "curves.png"), dpi=120)
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for n in names:
    xs = [results[n][s]["eval/kl"] for s in seeds if results[n][s]]
    ys = [results[n][s]["eval/win_rate"] for s in seeds if results[n][s]]
    ax.scatter(xs, ys, label=n, s=18)
  ax.set(xlabel="KL to SFT (nats / sequence)", ylabel="final win rate vs SFT")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "win_rate_vs_kl.png"), dpi=120)


if __name__ == "__main__":
  main()
