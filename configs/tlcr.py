"""TLCR: PPO with token-level continuous rewards from a discriminator (Yoon et al. 2024, algorithms.md §6).

  python -m jaxalign.main --config=configs/tlcr.py --workdir=runs/tlcr

From an empty workdir, each stage trained on first use and reused afterwards (like init_from=auto):
SFT (WORKDIR/sft) → revisions of the built-in rejected completions → token discriminator
(WORKDIR/discriminator, `tlcr.disc_*`, see configs/tlcr_discriminator.py) → PPO. In PPO's one compiled
update the frozen discriminator scores every generated token, D = P(positive | x, a_≤t), and the
action a_t gets r_t = 2D − 1 (`tlcr.token_reward`: continuous | official | discrete), clipped to ±5,
minus β·KL_t with the exact KL over the vocabulary (`ppo.kl_estimator=full`); no sequence reward (add
reward models with --config.tlcr.sequence_reward=True). An existing discriminator:
--config.tlcr.discriminator_path=runs/tlcr_disc. The authors' critic (a value network started from
the discriminator's trunk): --config.ppo.value=discriminator. Ablations: --config.tlcr.sign=positive
| negative (one sign of the token rewards only); experiments/tlcr.py compares them all.

Logs the PPO keys plus train/token_reward (mean per token), train/token_reward_sum (per sequence),
train/disc_prob, and eval/win_rate against the SFT reference's samples by the ground truth.
Expected (seed 0, 2 CPU cores): see RESULT. Variant `:tiny` for smoke runs.
"""

from jaxalign.config import apply_variant, base_config

RESULT = "see the README's TLCR section"


def get_config(variant: str = "", token_reward: str = "continuous"):
  c = base_config()
  c.trainer = "ppo"
  c.init_from = "auto"  # SFT reference in WORKDIR/sft, trained on first use
  c.train.steps = 15  # PPO iterations (longer runs learn to exploit the discriminator: see the docstring)
  c.train.batch_size = 64
  c.train.learning_rate = 3e-4
  c.train.warmup_steps = 2
  c.train.checkpoint_every = 5
  c.train.log_every = 1
  c.eval.every = 5
  c.ppo.reward_source = "token_discriminator"
  c.ppo.epochs = 4
  c.ppo.minibatches = 2
  c.ppo.kl_coef = 0.1  # the authors' kl_ctl
  c.ppo.kl_estimator = "full"  # the authors' full_kl
  c.ppo.missing_eos = "subtract"
  c.ppo.missing_eos_penalty = 1.0
  c.ppo.value = "head"  # or "discriminator" (the authors' critic)
  c.tlcr.token_reward = token_reward
  c.tlcr.discriminator_path = ""  # "" = train WORKDIR/discriminator on first use
  c.tlcr.disc_steps = 300
  c.tlcr.disc_batch_size = 64
  c.tlcr.disc_num_examples = 8192
  c.tlcr.revise_frac = 0.4
  c.tlcr.revision_noise = 0.1
  apply_variant(c, variant)
  if variant == "tiny":
    c.init_from = ""
    c.train.steps, c.train.batch_size = 4, 16
    c.train.checkpoint_every, c.eval.every = 2, 2
    c.ppo.epochs, c.ppo.minibatches = 1, 2
    c.tlcr.disc_steps, c.tlcr.disc_batch_size, c.tlcr.disc_num_examples, c.tlcr.eval_pairs = 4, 16, 128, 16
  c.lock()
  return c
