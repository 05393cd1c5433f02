"""A pairwise preference model P(y ≻ y' | x) on the built-in task (algorithms.md §9.2).

  python -m jaxalign.main --config=configs/preference_model.py --workdir=runs/pm

Trains (or reuses) the SFT model in runs/pm/sft, then a scalar head on the row
`prompt | A | sep | B` that gives the logit f of P(A ≻ B) (head(sep) − head(last token):
Bradley–Terry when the model ignores A at B's end, more when it does not), trained with binary cross-entropy
on both orders of every Bradley–Terry-labelled pair; at inference
P(A ≻ B) = ½(σ(f(A, B)) + 1 − σ(f(B, A))), so P(A ≻ B) + P(B ≻ A) = 1.
Prints held-out metrics: eval/accuracy (P(chosen ≻ rejected) > ½ against the noisy labels),
eval/accuracy_vs_ground_truth and eval/label_ceiling.
Measured on 2 shared CPU cores (about 7 minutes with the SFT run), 2048 held-out pairs:
eval/accuracy 0.759, eval/accuracy_vs_ground_truth 0.895, eval/label_ceiling 0.830
(reward.pm_readout=last, the head on the last token only: 0.868 vs the ground truth).
Variants: `:tiny` (a few steps, for tests and smoke runs).
"""

from jaxalign.config import apply_variant, base_config


def get_config(variant: str = ""):
  c = base_config()
  c.trainer = "preference_model"
  c.init_from = "auto"  # SFT trunk in WORKDIR/sft, trained on first use
  c.reward.property = "reward"  # reward | sentiment | politeness (built-in ground truth of the labels)
  c.reward.pm_readout = "difference"  # head(sep) − head(last token) | last (head(last token) only)
  c.reward.eval_pairs = 2048  # held-out pairs
  c.data.num_examples = 16384  # training pairs; each is seen in both orders
  c.train.steps = 300
  c.train.batch_size = 128  # pairs (256 rows: both orders)
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 10
  c.train.checkpoint_every = 100
  c.eval.every = 100
  apply_variant(c, variant)
  if variant == "tiny":
    c.reward.eval_pairs = 64
  c.lock()
  return c
