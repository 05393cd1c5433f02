"""SimPO (Meng et al. 2024): reference-free, length-normalised margin with target gamma (algorithms.md §8.4). No reference forward at all.

  python -m jaxalign.main --config=configs/simpo.py --workdir=runs/simpo

Same set-up as configs/dpo.py (SFT reference in WORKDIR/sft, 150 steps on the built-in
task's 4096 preference pairs); only the loss differs. Variant `:tiny` for smoke runs.
See the README's method table for the measured result.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  return offline_config(dict(
      name="simpo",
      beta=2.5,
      gamma=1.375,  # target margin of beta * average log-prob difference
  ), variant)
