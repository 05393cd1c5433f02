"""Hinge-norm (RSO / TRL hinge): relu(1 - beta*h) on the DPO margin (algorithms.md §8.1).

  python -m jaxalign.main --config=configs/hinge_norm.py --workdir=runs/hinge_norm

Same set-up as configs/dpo.py (SFT reference in WORKDIR/sft, 150 steps on the built-in
task's 4096 preference pairs); only the loss differs. Variant `:tiny` for smoke runs.
See the README's method table for the measured result.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  return offline_config(dict(
      name="hinge_norm",
      beta=0.1,  # the hinge is met once h = 1/beta
  ), variant)
