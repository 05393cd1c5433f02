"""IPO-MD (Calandriello et al. 2024, algorithms.md §4.7) on the built-in task.

  python -m jaxalign.main --config=configs/ipo_md.py --workdir=runs/ipo_md

Like configs/online_ipo.py, but both completions are sampled token by token from the
geometric mixture softmax((1 − β) log π_θ + β log π_ref) (two KV caches, one jitted loop),
β = online.mixture_coef. Measured (2 shared CPU cores, seed 0, 150 steps x 64 pairs):
eval/win_rate 0.990 against the SFT reference, eval/kl 4.21 nats, eval/valid 0.995, eval/gt_reward 3.32.
Variant `:tiny` for smoke runs.
"""

from jaxalign.config import online_config


def get_config(variant: str = ""):
  return online_config(
      variant,
      method="ipo_md",
      mixture_coef=0.25,  # β: 0 = online IPO, 1 = IPO on fresh reference samples
      tau=0.05,
      target="soft",
      length_normalize=False,
  )
