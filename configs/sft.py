"""Supervised fine-tuning on the built-in review task (the reference policy for DPO & co).

  python -m jaxalign.main --config=configs/sft.py --workdir=runs/sft

300 steps of batch 64 on the built-in SFT corpus; expected on 2 CPU cores in under
a minute: eval/valid ≈ 0.9+ (well-formed samples), eval/gt_reward ≈ 0.0 (the SFT
corpus is sentiment-neutral on average). Variant `:tiny` for tests.
Real data: --config.data.source=jsonl --config.data.path=sft.jsonl ({"prompt","completion"})
--config.data.tokenizer=sp.model.
"""

from jaxalign.config import apply_variant, base_config

def get_config(variant: str = ""):
  c = base_config()
  c.trainer = "sft"
  c.init_from = ""
  c.train.steps = 300
  c.train.batch_size = 64
  c.train.learning_rate = 3e-3
  c.data.num_examples = 8192
  c.train.checkpoint_every = 100
  c.eval.every = 100
  apply_variant(c, variant)
  c.lock()
  return c
