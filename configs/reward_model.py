"""A Bradley–Terry reward model on the built-in task, on the SFT trunk (algorithms.md §9.1).

  python -m jaxalign.main --config=configs/reward_model.py --workdir=runs/rm_reward

Trains (or reuses) the SFT model in runs/rm_reward/sft, puts a scalar head on its last
real token and trains it on Bradley–Terry-labelled pairs of the property
`reward.property` (reward | sentiment | politeness); one model per property:

  --config.reward.property=sentiment --workdir=runs/rm_sentiment

Prints held-out metrics on 2048 pairs: eval/accuracy (against the noisy labels),
eval/accuracy_vs_ground_truth (pairs whose ground truth is not tied) and eval/label_ceiling
(the noisy labels' own agreement with the ground truth). Measured on 2 shared CPU cores
(SFT ≈ 1.5 min once, then ≈ 3-5 min per property):

  property     accuracy  vs ground truth  label ceiling
  reward       0.769     0.927            0.830
  sentiment    0.777     0.921            0.834
  politeness   0.726     0.940            0.866   (26% of pairs tied on politeness)

Variants: `:tiny` (a few steps, for tests and smoke runs).
"""

from jaxalign.config import apply_variant, base_config


def get_config(variant: str = ""):
  c = base_config()
  c.trainer = "reward_model"
  c.init_from = "auto"  # SFT trunk in WORKDIR/sft, trained on first use
  c.reward.property = "reward"  # reward | sentiment | politeness (built-in ground truth)
  c.reward.margin = True  # Llama 2 margin loss (built-in: simulated rater confidence in {0, 1/3, 2/3, 1})
  c.reward.center_coef = 0.0  # 0.01 keeps rewards centred on 0 (Eisenstein et al.)
  c.reward.eval_pairs = 2048  # held-out pairs
  c.data.num_examples = 16384  # training pairs
  c.train.steps = 300
  c.train.batch_size = 128  # pairs
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 10
  c.train.checkpoint_every = 100
  c.eval.every = 100
  apply_variant(c, variant)
  if variant == "tiny":
    c.reward.eval_pairs = 64
  c.lock()
  return c
