"""SLiC-HF (Zhao et al. 2023): hinge on raw policy log-likelihoods plus an SFT term on the chosen (algorithms.md §8.1).

  python -m jaxalign.main --config=configs/slic_hf.py --workdir=runs/slic_hf

Same set-up as configs/dpo.py (SFT reference in WORKDIR/sft, 150 steps on the built-in
task's 4096 preference pairs); only the loss differs. Variant `:tiny` for smoke runs.
See the README's method table for the measured result.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  return offline_config(dict(
      name="slic_hf",
      delta=5.0,  # margin between chosen and rejected sequence log-likelihoods (nats)
      lam=0.1,  # weight of the SFT (NLL) term on the chosen completion
  ), variant)
