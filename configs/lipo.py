"""LiPO-λ (Liu et al. 2024, arXiv 2402.01878): listwise DPO with DCG lambda weights (algorithms.md §8.7).

  python -m jaxalign.main --config=configs/lipo.py --workdir=runs/lipo

SFT reference in WORKDIR/sft, then 150 steps × 32 lists of K = 4 completions per prompt from the built-in
task (`builtin.preference_lists`: every two completions of a list meet in one Bradley–Terry draw on the true
reward, a completion's score is its share of wins), i.e. the completions DPO's 150 × 64 pairs see.
Loss: the paper's Eq. 8 (natural-log discount, summed per list); `--config.loss.discount_base=2
--config.loss.scale_by_list_size=True --config.loss.reduction=pair_mean` is Rax's LiPO-λ, which produced the
paper's numbers. β = 0.1 as our DPO (the paper: 0.05). Lists of your own: JSONL rows
`{"prompt", "completions": [...], "scores": [...]}` with --config.data.source=jsonl --config.data.path=FILE.
Measured (3 seeds, 2-core AMD EPYC, ≈ 1 min per run after the SFT): eval/win_rate 0.818 ± 0.020 against the SFT
reference at KL 4.6 (DPO at the same completions: 0.817 ± 0.026 at 4.3; the Rax form 0.838 ± 0.029).
See the README's method table. Variant `:tiny` for smoke runs.
"""

from jaxalign.config import listwise_config

def get_config(variant: str = ""):
  return listwise_config(dict(
      name="lipo",
      beta=0.1,
      discount_base="e",  # "e": Eq. 8; "2": Rax
      scale_by_list_size=False,  # True: Rax multiplies the lambda weights by K
      reduction="list_sum",  # "list_sum": Eq. 8, summed per list; "pair_mean": Rax, mean over the batch's pairs
      lambda_weight=True,  # False: every valid pair weight 1 (pair-logistic; K = 2 is DPO)
  ), variant)
