"""DisCO (Li et al. 2025, algorithms.md §8.6): discriminative constrained optimisation with binary rewards.

  python -m jaxalign.main --config=configs/disco.py --workdir=runs/disco

SFT reference in WORKDIR/sft (trained on first use), then `train.steps` iterations: 16 prompts × G = 8 rollouts
(128 completions, PPO's count), binary reward 1 when a sample is good on every property of the built-in task
(valid, positive sentiment, polite: `builtin.both_good`), per prompt J = mean of the positives' token-averaged
log-likelihood − τ·log Σ_negatives exp(s/τ) (τ = 10), loss −mean_q J + (β_c/2)·[KL̂ − δ]₊² against the rollout
policy (δ = 1e-4, β_c = 1e3, the authors' scripts), 4 optimiser steps per rollout (minibatches of 4 prompts), all
in one compiled update. Prompts whose 8 rollouts are all good or all bad contribute nothing.

Variants: `--config.disco.variant=disco_b` (difference of means), `--config.disco.score=Lratio
--config.disco.tau=1` (likelihood-ratio score). Reward models instead of the ground truth:
`--config.ppo.reward_source=reward_models --config.ppo.reward_paths=RUN --config.disco.reward=threshold
--config.disco.threshold=0`. Variant `:tiny` for smoke runs.
"""

from jaxalign.config import apply_variant, base_config

RESULT = "eval/win_rate 0.946 ± 0.026 at eval/kl 5.09; 97.5% of the last rollouts good on every property (3 seeds)"


def get_config(variant: str = ""):
  c = base_config()
  c.trainer = "disco"
  c.init_from = "auto"
  c.train.steps = 100
  c.train.batch_size = 16  # prompts per iteration (× disco.group rollouts)
  c.train.learning_rate = 3e-4  # per optimiser step
  c.train.warmup_steps = 2
  c.train.checkpoint_every = 25
  c.train.log_every = 1
  c.eval.every = 25
  c.ppo.reward_source = "ground_truth"
  c.ppo.properties = "reward"
  c.ppo.missing_eos = "none"
  c.ppo.temperature = 1.0
  c.disco.group = 8
  c.disco.variant = "disco"
  c.disco.score = "logL"
  c.disco.tau = 10.0
  c.disco.reward = "all_good"
  c.disco.epochs = 1
  c.disco.minibatches = 4
  apply_variant(c, variant)
  if variant == "tiny":
    c.train.steps, c.train.batch_size = 6, 8
    c.train.checkpoint_every, c.eval.every = 2, 3
    c.disco.group, c.disco.minibatches = 4, 2
  c.lock()
  return c
