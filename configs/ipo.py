"""IPO (Azar et al. 2023): squared loss towards a margin of 1/(2 tau) (algorithms.md §2).

  python -m jaxalign.main --config=configs/ipo.py --workdir=runs/ipo

Same set-up as configs/dpo.py (SFT reference in WORKDIR/sft, 150 steps on the built-in
task's 4096 preference pairs); only the loss differs. Variant `:tiny` for smoke runs.
See the README's method table for the measured result.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  return offline_config(dict(
      name="ipo",
      tau=0.05,  # target margin 1/(2 tau) = 10 nats of the summed log-ratio difference
      # True: per-token averaged log-ratios (TRL offline IPO); False: summed (paper, official DPO repo)
      length_normalize=False,
  ), variant)
