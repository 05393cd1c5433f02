"""PPO with two reward models combined by LSC (Wang et al. 2024, algorithms.md §5) on the built-in task.

  python -m jaxalign.main --config=configs/ppo_transformed.py --workdir=runs/ppo_lsc

On first use it trains (or resumes, or reuses) the SFT reference in WORKDIR/sft and two
Bradley–Terry reward models on the SFT trunk, WORKDIR/rm_sentiment and WORKDIR/rm_politeness
(`ppo.auto_rewards`, `ppo.rm_*`; pairs labelled on each property's ground truth). Existing
reward models can be given instead: --config.ppo.reward_paths=runs/rm_sentiment,runs/rm_politeness
(then nothing is trained). r_ref,k(x) per training prompt is the 0.85-quantile
(`reward.ref_statistic`, `reward.ref_quantile`, UNVERIFIED in the paper) of reward model k over
`reward.ref_samples` SFT samples of that prompt, computed once and cached in WORKDIR/lsc_cache.
The PPO score is `ppo.aggregation`:

  lsc               Σ_k log σ(r_k − r_ref,k(x))   (log P(good on both), the paper's logical AND)
  raw_sum           Σ_k r_k                        (the baseline)
  weighted_raw_sum  Σ_k w_k r_k                    (--config.ppo.weights=1.0,0.5)
  centered_sum      Σ_k (r_k − r_ref,k(x))

Training logs, besides the PPO keys, the ground truth of the rollouts: train/both_good
(valid, positive sentiment and a polite closing), train/gt_sentiment, train/gt_politeness,
train/reward_0 / reward_1 (reward-model means). experiments/ppo_lsc.py compares lsc with raw_sum
over several KL coefficients. Variant `:tiny` for smoke runs (random init, a few steps).
"""

from jaxalign.config import apply_variant, base_config


def get_config(variant: str = ""):
  c = base_config()
  c.trainer = "ppo"
  c.init_from = "auto"  # SFT reference in WORKDIR/sft, trained on first use
  c.train.steps = 100  # PPO iterations
  c.train.batch_size = 64
  c.train.learning_rate = 3e-4
  c.train.warmup_steps = 2
  c.train.checkpoint_every = 25
  c.train.log_every = 1
  c.eval.every = 25
  c.ppo.reward_source = "reward_models"
  c.ppo.reward_paths = ""  # "" = train ppo.auto_rewards into WORKDIR/rm_<property> on first use
  c.ppo.auto_rewards = "sentiment,politeness"
  c.ppo.rm_steps = 300
  c.ppo.aggregation = "lsc"  # lsc | raw_sum | weighted_raw_sum | centered_sum
  c.ppo.epochs = 4
  c.ppo.minibatches = 2
  c.ppo.kl_coef = 0.05
  c.ppo.missing_eos = "subtract"
  c.reward.ref_statistic = "quantile"
  c.reward.ref_quantile = 0.85
  c.reward.ref_samples = 16
  apply_variant(c, variant)
  if variant == "tiny":
    c.init_from = ""
    c.train.steps, c.train.batch_size = 4, 16
    c.train.checkpoint_every, c.eval.every = 2, 2
    c.ppo.epochs, c.ppo.minibatches = 1, 2
    c.ppo.rm_steps, c.ppo.rm_batch_size, c.ppo.rm_num_examples, c.ppo.rm_eval_pairs = 4, 16, 128, 16
    c.reward.ref_samples = 2
  c.lock()
  return c
