"""Conservative DPO (cDPO): DPO against labels flipped with probability epsilon (algorithms.md §1.4).

  python -m jaxalign.main --config=configs/cdpo.py --workdir=runs/cdpo

Same set-up as configs/dpo.py (SFT reference in WORKDIR/sft, 150 steps on the built-in
task's 4096 preference pairs); only the loss differs. Variant `:tiny` for smoke runs.
See the README's method table for the measured result.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  return offline_config(dict(
      name="cdpo",
      beta=0.1,
      epsilon=0.1,  # assumed label-flip rate; the loss stops pushing once beta*h = log((1-eps)/eps)
  ), variant)
