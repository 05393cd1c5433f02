"""ORPO (Hong et al. 2024): reference-free, NLL on chosen plus an odds-ratio term (algorithms.md §8.3). No reference forward at all.

  python -m jaxalign.main --config=configs/orpo.py --workdir=runs/orpo

Same set-up as configs/dpo.py (SFT reference in WORKDIR/sft, 150 steps on the built-in
task's 4096 preference pairs); only the loss differs. Variant `:tiny` for smoke runs.
See the README's method table for the measured result.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  return offline_config(dict(
      name="orpo",
      lam=2.0,  # weight of the odds-ratio term (TRL calls it beta)
  ), variant)
