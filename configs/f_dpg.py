"""f-DPG (Go et al. 2023, algorithms.md §8.5): distributional policy gradient toward p(y) ∝ π₀(y)·exp(r(y)/β).

  python -m jaxalign.main --config=configs/f_dpg.py --workdir=runs/f_dpg

SFT reference π₀ in WORKDIR/sft (trained on first use), then `train.steps` iterations: 128 prompts, one sample
each from π_θ (temperature 1: the importance weights need π_θ's own samples), r = the built-in ground-truth reward
(−1 more without EOS), β = 1, and one optimiser step on the surrogate mean_i (f'(t_i) − b)·log π_θ(y_i) with
log t_i = log π_θ(y_i) − log π₀(y_i) − r_i/β + log Ẑ, b the batch mean of f'(t). Ẑ is the running importance-
sampling estimate mean P(y)/π_θ(y) over every batch so far (kept in the train state and checkpointed; train/log_z,
train/ess the normalised effective sample size). Divergence: `--config.f_dpg.divergence=js` (default; the paper's
"good balance") | rkl (= RL with a KL penalty β) | fkl (DPG) | tv. Reward models instead:
`--config.ppo.reward_source=reward_models --config.ppo.reward_paths=RUN`. Variant `:tiny` for smoke runs.
"""

from jaxalign.config import apply_variant, base_config

RESULT = "eval/win_rate 0.785 ± 0.016 at eval/kl 0.79 (3 seeds; β = 0.3: 0.961 ± 0.009 at 3.54)"


def get_config(variant: str = ""):
  c = base_config()
  c.trainer = "f_dpg"
  c.init_from = "auto"
  c.train.steps = 100
  c.train.batch_size = 128  # prompts = rollouts per iteration
  c.train.learning_rate = 3e-4
  c.train.warmup_steps = 2
  c.train.checkpoint_every = 25
  c.train.log_every = 1
  c.eval.every = 25
  c.ppo.reward_source = "ground_truth"
  c.ppo.properties = "reward"
  c.ppo.missing_eos = "subtract"
  c.ppo.temperature = 1.0
  c.f_dpg.divergence = "js"
  c.f_dpg.beta = 1.0  # at 0.1 every sample has t = π_θ/p ≫ 1 and JS's bounded f' gives no signal
  c.f_dpg.baseline = "mean"
  c.f_dpg.minibatches = 1
  apply_variant(c, variant)
  if variant == "tiny":
    c.train.steps, c.train.batch_size = 6, 16
    c.train.checkpoint_every, c.eval.every = 2, 3
  c.lock()
  return c
