"""Online IPO (Calandriello et al. 2024, algorithms.md §4.6) on the built-in task.

  python -m jaxalign.main --config=configs/online_ipo.py --workdir=runs/online_ipo

SFT reference in WORKDIR/sft (trained on first use), then 150 steps; each step samples two
completions per prompt from the current policy (64 prompts), annotates each pair with the
ground-truth judge P = σ(r(y) − r(y')), and regresses h = ρ(y) − ρ(y') on (P − ½)/τ.
This is IPO-MD with mixture_coef = 0 (trainer "online", method "ipo_md"); 9600 annotations.
Measured (2 shared CPU cores, seed 0, a few minutes): eval/win_rate 0.990 against the SFT
reference, eval/kl 4.36 nats, eval/valid 0.995 (reference 0.943), eval/gt_reward 3.36.
Variant `:tiny` for smoke runs.
"""

from jaxalign.config import online_config


def get_config(variant: str = ""):
  return online_config(
      variant,
      method="ipo_md",
      mixture_coef=0.0,  # 0: both samples from the current policy (online IPO)
      tau=0.05,  # target (P − ½)/τ ∈ [−10, 10] nats of the summed log-ratio difference
      target="soft",  # soft: P itself; hard: a label drawn from Bernoulli(P) (same expected gradient)
      length_normalize=False,  # summed log-ratios (paper; TRL OnlineDPO); True: per-token averages
  )
