"""DPO on the built-in review task, from nothing: SFT reference first, then DPO.

  python -m jaxalign.main --config=configs/dpo.py --workdir=runs/dpo

Trains the SFT reference in runs/dpo/sft (or reuses it), caches the reference
log-probs, runs 150 DPO steps on 4096 Bradley–Terry-labelled pairs, and prints the
final eval metrics. Expected on 2 CPU cores in about 1–2 minutes:
eval/win_rate ≈ 0.75–0.85 against the SFT reference, eval/valid within a few points
of eval/reference_valid, eval/kl ≈ 2–6 nats.
Variants: `:tiny` (a few steps, for tests and smoke runs).
Real data: --config.data.source=jsonl --config.data.path=pairs.jsonl
--config.data.tokenizer=sp.model --config.init_from=RUN_DIR (an SFT run).
"""

from jaxalign.config import base_config


def get_config(variant: str = ""):
  c = base_config()
  c.trainer = "offline"
  c.init_from = "auto"  # SFT reference in WORKDIR/sft, trained on first use
  c.loss.name = "dpo"
  c.loss.beta = 0.1
  c.train.steps = 150
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 10
  c.train.checkpoint_every = 50
  c.eval.every = 50
  if variant == "tiny":
    c.sft.steps, c.sft.num_examples = 40, 1024
    c.train.steps, c.train.batch_size, c.data.num_examples = 6, 16, 256
    c.train.checkpoint_every, c.train.log_every, c.eval.every = 3, 1, 3
    c.eval.samples_per_prompt = 2
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (tiny)")
  c.lock()
  return c
