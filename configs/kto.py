"""KTO on unpaired desirable / undesirable feedback (Ethayarajh et al. 2024; algorithms.md §8.2).

  python -m jaxalign.main --config=configs/kto.py --workdir=runs/kto

Same data and budget as configs/bco.py. The reference point z0 is the clamped mean log-ratio of
mismatched (prompt, another row's completion) pairs, scored in the same forward pass; logged as
train/kl. Variant `:tiny` for smoke runs. See the README's method table for the measured result.
"""

from jaxalign.config import unpaired_config

def get_config(variant: str = ""):
  return unpaired_config(dict(
      name="kto",
      beta=0.1,
      lambda_d=1.0,  # weight of desirable rows
      lambda_u=1.0,  # weight of undesirable rows (TRL warns unless lambda_d n_d / (lambda_u n_u) in [1, 4/3])
  ), variant)
