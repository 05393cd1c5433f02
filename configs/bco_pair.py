"""Paired BCO: the BCE loss with reward shift on preference pairs (algorithms.md §3.3).

  python -m jaxalign.main --config=configs/bco_pair.py --workdir=runs/bco_pair

Same set-up as configs/dpo.py; δ is the running mean of per-batch mean rewards (TRL <= v0.28, the
paper author's implementation), carried in the train state and logged as train/delta.
Variant `:tiny` for smoke runs. See the README's method table for the measured result.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  return offline_config(dict(
      name="bco_pair",
      beta=0.1,
  ), variant)
