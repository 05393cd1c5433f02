"""Robust DPO (rDPO, Chowdhury et al. 2024): unbiased under label flips; unbounded below (algorithms.md §1.5).

  python -m jaxalign.main --config=configs/robust.py --workdir=runs/robust

Same set-up as configs/dpo.py (SFT reference in WORKDIR/sft, 150 steps on the built-in
task's 4096 preference pairs); only the loss differs. Variant `:tiny` for smoke runs.
See the README's method table for the measured result.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  return offline_config(dict(
      name="robust",
      beta=0.1,
      epsilon=0.1,  # assumed label-flip rate, in [0, 0.5)
  ), variant)
