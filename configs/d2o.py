"""D²O (Duan et al. 2024, arXiv 2403.03419): alignment from human negatives only (algorithms.md §8.10).

  python -m jaxalign.main --config=configs/d2o.py --workdir=runs/d2o

SFT reference in WORKDIR/sft; the "positives" are K = 3 completions the reference samples per prompt (once,
before training, cached in WORKDIR/ref_cache), the negatives the rejected side of the built-in task's noisy
pairs. Loss `−log σ((β/K) Σ_i ρ(y_i) − α ρ(y_l))`, α = β = 0.1 (the paper's; its K = 11). 150 steps × 32
negatives, each with its 3 samples: the 128 completions per step DPO sees. The paper's periodic re-sampling
and reference refresh are not implemented (UNVERIFIED in the paper). Your own negatives: JSONL rows
`{"prompt", "rejected"}` (preference rows work too; their chosen side is ignored).
Measured (3 seeds): eval/win_rate 0.588 ± 0.068 at KL 4.9, validity 0.68 (negatives alone; see the README).
See the README's method table. Variant `:tiny` for smoke runs.
"""

from jaxalign.config import offline_config

def get_config(variant: str = ""):
  c = offline_config(dict(name="d2o", beta=0.1, alpha=0.1), "", batch_size=32)
  c.d2o.samples = 3
  c.data.num_examples = 2048
  from jaxalign.config import apply_variant
  apply_variant(c, variant)
  return c
