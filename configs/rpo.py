"""RPO (Liu et al. 2024, arXiv 2405.16436): DPO plus an SFT term on the chosen completion (algorithms.md §8.8).

  python -m jaxalign.main --config=configs/rpo.py --workdir=runs/rpo

Same set-up as configs/dpo.py; loss `DPO + η·β·(−log π_θ(y_w|x))` (Eq. 4.8, summed log-prob as the authors'
code). `sft_reduction`: `seq_sum` (paper), `seq_mean` (OpenRLHF: weight η on the per-token mean), `token_pool`
(TRL: weight η on the batch's pooled token mean). η = 0.1 here (η·β = 0.01 per nat: about a fifth of the DPO
loss on this task's 10–20-nat completions); the paper's η = 0.005 with β = 0.01 on 7B models.
Measured (3 seeds): eval/win_rate 0.816 ± 0.017 at KL 1.77 and validity 0.93 (DPO: 0.817 at KL 4.3, validity 0.86).
See the README's method table. Variant `:tiny` for smoke runs.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  return offline_config(dict(
      name="rpo",
      beta=0.1,
      eta=0.1,
      sft_reduction="seq_sum",  # seq_sum | seq_mean | token_pool
  ), variant)
