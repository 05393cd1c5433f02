"""List-MLE / Plackett–Luce (DPO-PL, PRO): the listwise baseline LiPO compares with (algorithms.md §8.7).

  python -m jaxalign.main --config=configs/listmle.py --workdir=runs/listmle

Same set-up as configs/lipo.py (150 steps × 32 lists of 4 completions); the loss is
`−Σ_k [s_π(k) − log Σ_{j ≥ k} exp s_π(j)]`, π sorting a list by its scores, s = β·log-ratio.
Measured (3 seeds): eval/win_rate 0.839 ± 0.043 against the SFT reference at KL 3.8 (DPO 0.817 ± 0.026).
See the README's method table. Variant `:tiny` for smoke runs.
"""

from jaxalign.config import listwise_config

def get_config(variant: str = ""):
  return listwise_config(dict(name="list_mle", beta=0.1), variant)
