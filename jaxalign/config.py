"""The base config every `configs/*.py` starts from, and its validation (one place).

Configs are `ml_collections.ConfigDict`s, locked so a misspelt override
(`--config.train.stpes=3`) is an error rather than silently ignored.
"""

from __future__ import annotations

import math
import os

import ml_collections

from jaxalign.errors import UserError


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "offline"  # sft | offline (DPO family) | unpaired (BCO, KTO) | reward_model | preference_model | online | ppo | disco | f_dpg | token_discriminator | rlthf
  #                        | token_discriminator (TLCR)
  c.seed = 0  # all randomness and data order derive from (seed, step)
  c.init_from = ""  # "" (random init), "auto" (train/reuse an SFT run in WORKDIR/sft), or a run dir
  c.precision = "float32"  # float32 | float64 (for exact parity tests)

  c.model = ml_collections.ConfigDict()
  c.model.preset = "nano"  # nano | tiny | small | 1b | 7b | 70b (see jaxalign.models.PRESETS)
  c.model.dtype = "float32"  # compute dtype (params stay float32 masters): float32 | bfloat16
  c.model.remat = "none"  # none | full | dots: per-layer rematerialisation
  c.model.attention_chunk = 512  # rows longer than this attend in query chunks, rematerialised (0: off)
  c.model.kv_cache_dtype = ""  # samplers' KV cache: "" (model.dtype) | float32 | bfloat16 | int8 (per-token/head scales)
  c.model.reference_dtype = ""  # the frozen reference's params: "" (float32) | bfloat16 (half the memory; policy stays f32)
  c.model.max_len = 0  # 0: the preset's; prompt_len + completion_len must fit
  c.model.hf_path = ""  # a local Hugging Face folder: its architecture, weights and tokenizer replace the preset

  c.data = ml_collections.ConfigDict()
  c.data.source = "builtin"  # builtin | jsonl | hh_rlhf | tfds
  c.data.path = ""  # file (jsonl, hh_rlhf) or "DATA_DIR[:NAME]" (tfds)
  c.data.split = "train"  # tfds split
  c.data.tokenizer = ""  # sentencepiece .model; "" = model.hf_path's tokenizer, else the built-in task's own
  c.data.chat_template = "auto"  # auto | on | off: render HH-style prompts with the hf_path chat template
  c.data.num_examples = 4096  # examples to use (built-in: to generate); <= 0 means all
  c.data.prompt_len = 16  # prompt tokens (left-padded / left-truncated)
  c.data.completion_len = 24  # completion tokens incl. EOS (right-padded / right-truncated)
  c.data.prompt_truncation = "left"  # left | right
  c.data.completion_truncation = "right"  # right | left
  c.data.corrupt_frac = 0.2  # built-in: fraction of pairs with one malformed side
  c.data.feedback = "binary"  # unpaired trainer: binary (rows with labels) | pairs (split each pair in two)
  c.data.split_families = False  # built-in binary feedback: up/down prompts from different families
  c.data.list_size = 4  # built-in lists (listwise losses): completions per prompt, K
  c.data.joint_fraction = 0.5  # built-in JPO pairs: share re-paired across prompts
  c.data.eval_fraction = 0.05  # other sources: held-out share, by prompt hash (a prompt is never on both sides)
  c.data.eval_path = ""  # other sources: a held-out file of the same format (replaces eval_fraction)
  c.data.eval_split = ""  # tfds: a held-out split (replaces eval_fraction)
  c.data.eval_examples = 256  # at most this many held-out rows (0: no held-out evaluation)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 200
  c.train.batch_size = 64  # global: pairs for preference losses, sequences for SFT
  c.train.grad_accum = 1  # microbatches per step (batch_size must divide evenly)
  c.train.learning_rate = 1e-3
  c.train.schedule = "cosine"  # constant | cosine | linear (after warmup)
  c.train.warmup_steps = 10
  c.train.optimizer = "adamw"  # adamw | rmsprop | sgd
  c.train.b1 = 0.9
  c.train.b2 = 0.99
  c.train.weight_decay = 0.0
  c.train.max_grad_norm = 1.0  # 0 disables clipping
  c.train.precompute_ref = True  # reference log-probs once, cached on disk (else in the step)
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 2
  c.train.log_every = 10
  c.train.logprob_chunk = 2048  # vocabulary chunk of the log-prob scan ([B,T,chunk] f32 live at once)
  c.train.packing = False  # offline trainer: pack several sequences per row (segment ids), no compute on padding
  c.train.packing_share_prompt = True  # packed pairs run their prompt once (prompt | chosen | rejected, branch mask)

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "dpo"  # a key of jaxalign.losses.LOSSES
  c.loss.beta = 0.1

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 100  # steps; also at the end. 0 = only at the end
  c.eval.samples_per_prompt = 16  # built-in task: x 12 held-out prompts
  c.eval.max_new_tokens = 24
  c.eval.temperature = 1.0
  c.eval.top_k = 0
  c.eval.top_p = 1.0
  c.eval.task = "auto"  # auto: the built-in evaluator on built-in data; builtin: also on a file made from the task
  c.eval.judge = "auto"  # builtin (ground truth) | none | a reward_model / preference_model run dir; auto: builtin
  #                        on the built-in task, else none
  c.eval.prompts = 16  # other sources: held-out prompts sampled (x samples_per_prompt) for samples and win rate

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 takes the devices left over
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.udm = ml_collections.ConfigDict()  # BCO's underlying distribution matching (algorithms.md §3.4)
  c.udm.enabled = False  # reweight thumbs-down rows by a prompt density ratio p+(x)/p-(x)
  c.udm.prompt_sample_size = 1024  # prompts drawn (with replacement) from each class to fit the classifier
  c.udm.min_density_ratio = 0.5
  c.udm.max_density_ratio = 10.0
  c.udm.steps = 300  # full-batch optimisation steps of the logistic regression
  c.udm.l2 = 1e-3  # ridge penalty on the classifier weights (standardised embeddings)

  c.reward = ml_collections.ConfigDict()  # reward / preference models (algorithms.md §9) and LSC (§5)
  c.reward.property = "reward"  # built-in ground truth the pairs are labelled on: reward | sentiment | politeness
  c.reward.label_temperature = 1.0  # built-in: Bradley-Terry label noise, P(a wins) = sigmoid(Δ/T)
  c.reward.eval_pairs = 512  # held-out pairs (built-in: generated after the training pairs; else the last rows)
  c.reward.margin = False  # Llama 2 margin loss; built-in margins = simulated rater confidence in {0,1/3,2/3,1}
  c.reward.center_coef = 0.0  # Eisenstein et al. centring η·(r_w + r_l)^2 (TRL recommends 0.01)
  c.reward.head_std = -1.0  # scalar head init std; < 0: 1/sqrt(D+1) (N+), 0: zeros
  c.reward.pm_readout = "difference"  # preference model: head(sep) - head(last) | last (see heads.pair_logit)
  c.reward.ref_statistic = "quantile"  # LSC r_ref(x) over reference-policy samples: quantile | mean | median
  c.reward.ref_quantile = 0.85  # UNVERIFIED (recalled from the LSC paper); NumPy "linear" interpolation
  c.reward.ref_samples = 16  # reference-policy samples per prompt for r_ref(x) (UNVERIFIED in the paper)

  c.d2o = ml_collections.ConfigDict()  # D²O (loss.name d2o): self-sampled "positives" per human negative
  c.d2o.samples = 4  # K completions sampled from the reference (the initial policy) per prompt (the paper: 11)
  c.d2o.temperature = 1.0  # their sampling temperature
  c.rlthf = ml_collections.ConfigDict()  # RLTHF (trainer "rlthf", algorithms.md §8.13): targeted relabelling
  c.rlthf.budget = 0.1  # share of the pairs sent to the human annotator, over all iterations
  c.rlthf.iterations = 2  # reward model -> margins -> relabel rounds
  c.rlthf.flip = 0.0  # per round, share of the pairs flipped without asking (the lowest reward-model margins)
  c.rlthf.amplification = 2  # human-labelled pairs appear this many times in the reward model's training data
  c.rlthf.final_labels = "reward_model"  # reward_model: the last reward model labels the rest (paper) | curated
  c.rlthf.ai_label_temperature = 1.0  # built-in: the AI annotator's Bradley-Terry temperature (label noise)
  c.rlthf.rm_steps = 150  # each round's reward model
  c.rlthf.rm_batch_size = 64
  c.rlthf.rm_eval_pairs = 256
  c.rlthf.downstream = True  # train DPO (config.loss, config.train) on the final labels and evaluate it
  c.online = ml_collections.ConfigDict()  # online IPO / IPO-MD / Nash-MD-PG (trainer "online", algorithms.md §4)
  c.online.method = "ipo_md"  # ipo_md (online IPO when mixture_coef = 0) | nash_md
  c.online.mixture_coef = 0.0  # β: sample from softmax((1-β) log π_θ + β log π_ref), token level (not sequence level)
  c.online.tau = 0.1  # IPO: regression target (P - 1/2)/τ on h = ρ(y) - ρ(y')
  c.online.target = "soft"  # IPO: soft (P itself) | hard (label I ~ Bernoulli(P), seeded by (seed, step)) UNVERIFIED
  c.online.length_normalize = False  # IPO: per-token averaged log-ratios (TRL offline) | summed (paper) UNVERIFIED
  c.online.kl_coef = 0.1  # Nash-MD-PG: KL coefficient τ (TRL's `beta`)
  c.online.kl_estimator = "token"  # Nash-MD-PG: token (TRL, diagonal) | sequence (reward-to-go REINFORCE)
  c.online.annotator = "ground_truth"  # ground_truth (built-in task) | reward_model | preference_model
  c.online.annotator_path = ""  # run dir of a reward_model / preference_model run (jaxalign.trainers.reward)
  c.online.loss = "ipo"  # ipo_md: ipo (target (P − ½)/τ) | dpo (online DPO: −P log σ(βh) − (1 − P) log σ(−βh))
  c.online.beta = 0.1  # loss dpo: β
  c.online.reference = "fixed"  # fixed (the SFT reference) | behavior (BPO §8.12: the model that sampled the pairs)
  c.online.behavior_update_every = 1  # BPO: π_β ← π_θ after every k-th step (k = 1: on-policy DAP)
  c.online.behavior_ema = 0.0  # BPO: 0 copies the policy; e > 0: π_β ← e·π_β + (1 − e)·π_θ at each refresh
  c.online.max_new_tokens = 0  # 0: data.completion_len (samples must fit the completion buffer)
  c.online.temperature = 1.0  # rollout sampling, applied after mixing
  c.online.top_k = 0
  c.online.top_p = 1.0

  c.ppo = ml_collections.ConfigDict()  # PPO with transformed / combined rewards (trainer "ppo", algorithms.md §5, §7)
  c.ppo.epochs = 4  # optimisation passes over each rollout batch
  c.ppo.minibatches = 1  # minibatches per pass (train.batch_size must divide evenly)
  c.ppo.clip_eps = 0.2  # ε of the clipped policy objective
  c.ppo.clip_eps_v = 0.2  # ε_v of the clipped value loss
  c.ppo.vf_coef = 0.1  # c_v
  c.ppo.gamma = 1.0
  c.ppo.lam = 0.95  # GAE λ
  c.ppo.whiten_unbiased = True  # advantage whitening variance: unbiased (TRL, N+) | biased (lm-human-preferences)
  c.ppo.kl_coef = 0.05  # β_KL (initial value when adaptive)
  c.ppo.kl_estimator = "k1"  # k1 | k3 per-token KL in the rewards | full (exact KL over the vocabulary, TLCR's)
  c.ppo.adaptive_kl = False  # Ziegler et al.'s controller (state checkpointed)
  c.ppo.kl_target = 6.0  # adaptive: target sequence KL (nats)
  c.ppo.kl_horizon = 10000.0  # adaptive: horizon in episodes
  c.ppo.value = "head"  # head (value head on the policy trunk) | reward_model (separate net from a reward model)
  #                        | discriminator (separate net from the TLCR discriminator's trunk, the authors' critic)
  c.ppo.value_init_path = ""  # value=reward_model: reward_model run dir ("" = the first reward model)
  c.ppo.value_head_std = -1.0  # value head init std; < 0: 1/sqrt(D+1) (N+), 0: zeros
  c.ppo.reward_source = "ground_truth"  # ground_truth (built-in judge, on the host) | reward_models
  #                                       | token_discriminator (TLCR token rewards, see c.tlcr)
  c.ppo.properties = "reward"  # ground_truth: comma-separated built-in properties (reward | sentiment | politeness)
  c.ppo.reward_paths = ""  # reward_models: comma-separated reward_model run dirs ("" = train ppo.auto_rewards)
  c.ppo.auto_rewards = ""  # e.g. "sentiment,politeness": train WORKDIR/rm_<p> on first use when reward_paths is ""
  c.ppo.rm_steps = 300  # auto reward models: training steps, batch size, pairs, held-out pairs
  c.ppo.rm_batch_size = 128
  c.ppo.rm_num_examples = 16384
  c.ppo.rm_eval_pairs = 512
  c.ppo.aggregation = "raw_sum"  # lsc | raw_sum | weighted_raw_sum | centered_sum (several rewards -> one score)
  c.ppo.weights = ""  # comma-separated weights (weighted_raw_sum; optional for lsc / centered_sum)
  c.ppo.missing_eos = "subtract"  # subtract (TRL) | replace (lm-h-p, N+) | none
  c.ppo.missing_eos_penalty = 1.0  # subtract: score - penalty
  c.ppo.missing_eos_value = -1.0  # replace: the score of unfinished samples
  c.ppo.max_new_tokens = 0  # 0: data.completion_len
  c.ppo.temperature = 1.0  # rollout temperature, also applied to the log-probs of the update (TRL/N+: 0.7)
  c.ppo.top_k = 0
  c.ppo.top_p = 1.0
  c.ppo.reset_prob = 0.0  # DR-PO (§8.11) β_mix: P(a rollout starts from a prefix of a reference response); 0 = PPO
  c.ppo.reset_path = ""  # DR-PO on user data: SFT JSONL of reference responses ("" = data's chosen responses)

  c.disco = ml_collections.ConfigDict()  # DisCO / DisCO-b (trainer "disco", algorithms.md §8.6); rollouts: ppo.*
  c.disco.group = 8  # G rollouts per prompt (train.batch_size counts prompts)
  c.disco.variant = "disco"  # disco (DRO over negatives, log-sum-exp) | disco_b (difference of means)
  c.disco.score = "logL"  # logL (token-averaged log-likelihood) | Lratio (token-averaged π_θ/π_old)
  c.disco.tau = 10.0  # DRO temperature τ (released scripts: 10 for logL, 1 for Lratio)
  c.disco.delta = 1e-4  # δ of the KL constraint against the rollout policy
  c.disco.beta_c = 1e3  # β_c of the squared-hinge penalty
  c.disco.reward = "all_good"  # all_good (built-in: valid, positive and polite) | threshold (ppo score > threshold)
  c.disco.threshold = 0.0
  c.disco.epochs = 1  # passes over each rollout batch
  c.disco.minibatches = 4  # optimiser steps per pass (minibatches of whole prompts)
  c.f_dpg = ml_collections.ConfigDict()  # f-DPG (trainer "f_dpg", algorithms.md §8.5); rollouts and rewards: ppo.*
  c.f_dpg.divergence = "js"  # rkl | fkl | js | tv: D_f(π_θ‖p), p ∝ π₀·exp(r/β)
  c.f_dpg.beta = 1.0  # β of the target's exp(r/β) (reverse KL: RL with KL coefficient β)
  c.f_dpg.baseline = "mean"  # mean (batch mean of f'(t)) | none
  c.f_dpg.minibatches = 1  # optimiser steps per rollout batch (the weights are computed once, on-policy)

  c.tlcr = ml_collections.ConfigDict()  # TLCR: token discriminator (trainer token_discriminator) and token rewards
  c.tlcr.revise_frac = 0.4  # built-in: share of preference pairs revised (the authors' data: 40% of HH-RLHF)
  c.tlcr.revision_noise = 0.1  # built-in reviser: P(miss a needed edit) = P(unneeded edit of a good adjective)
  c.tlcr.run_on_frac = 0.2  # built-in: share of rejected completions that run on past their end (the editor cuts it)
  c.tlcr.eval_pairs = 256  # held-out revision rows (the last rows)
  c.tlcr.hard_label = False  # True: unchanged tokens out of the loss (default: trained towards D = 1/2)
  c.tlcr.head_std = -1.0  # 2-class head init std; < 0: 1/sqrt(D)
  c.tlcr.discriminator_path = ""  # PPO: token_discriminator run dir ("" = train WORKDIR/discriminator on first use)
  c.tlcr.disc_steps = 300  # auto discriminator: steps, batch size, revision rows (before revise_frac), lr
  c.tlcr.disc_batch_size = 64
  c.tlcr.disc_num_examples = 8192
  c.tlcr.disc_learning_rate = 1e-3
  c.tlcr.token_reward = "continuous"  # continuous 2D-1 (paper) | official 2σ(2D-1)-1 (authors' code) | discrete
  c.tlcr.low, c.tlcr.high = 0.4, 0.6  # discrete: negative at D <= low, positive at D >= high, else 0
  c.tlcr.positive, c.tlcr.negative = 1.0, -1.0  # discrete: the two reward values
  c.tlcr.sign = "both"  # both | positive (negative token rewards set to 0) | negative (positive ones set to 0)
  c.tlcr.reward_clip = 5.0  # token rewards clipped to [-clip, clip] (the authors' 5)
  c.tlcr.sequence_reward = False  # also add the reward models' score (ppo.reward_paths / auto_rewards) at EOS

  c.debug = ml_collections.ConfigDict()  # for tests of the failure paths; leave at the defaults
  c.debug.nonfinite_at_step = 0  # > 0: the step with this number sees NaN params (the run must stop cleanly)

  c.sft = ml_collections.ConfigDict()  # the SFT run that init_from="auto" trains
  c.sft.steps = 300
  c.sft.batch_size = 64
  c.sft.learning_rate = 3e-3
  c.sft.num_examples = 8192
  return c


_CHOICES = {
    "reward.property": ("reward", "sentiment", "politeness"),
    "reward.ref_statistic": ("quantile", "mean", "median"),
    "reward.pm_readout": ("difference", "last"),
    "data.feedback": ("binary", "pairs"),
    "precision": ("float32", "float64"),
    "model.dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "model.kv_cache_dtype": ("", "float32", "bfloat16", "int8"),
    "model.reference_dtype": ("", "float32", "bfloat16"),
    "data.source": ("builtin", "jsonl", "hh_rlhf", "tfds"),
    "data.prompt_truncation": ("left", "right"),
    "data.chat_template": ("auto", "on", "off"),
    "data.completion_truncation": ("left", "right"),
    "eval.task": ("auto", "builtin"),
    "rlthf.final_labels": ("reward_model", "curated"),
}


# (low, high, whether low itself is allowed, whether high itself is allowed); None = unbounded on that side.
_RANGES = {
    "data.corrupt_frac": (0, 1, True, True), "data.list_size": (2, None, True, True),
    "data.joint_fraction": (0, 1, True, True), "data.eval_fraction": (0, 1, True, False),
    "data.eval_examples": (0, None, True, True), "eval.prompts": (0, None, True, True),
    "eval.every": (0, None, True, True), "eval.max_new_tokens": (0, None, False, True),
    "eval.samples_per_prompt": (0, None, False, True),
    "eval.temperature": (0, None, False, True), "online.temperature": (0, None, False, True),
    "ppo.temperature": (0, None, False, True), "d2o.samples": (1, None, True, True),
    "d2o.temperature": (0, None, False, True), "rlthf.budget": (0, 1, True, True),
    "rlthf.iterations": (1, None, True, True), "rlthf.flip": (0, 1, True, True),
    "rlthf.amplification": (1, None, True, True), "rlthf.ai_label_temperature": (0, None, False, True),
    "rlthf.rm_steps": (1, None, True, True), "rlthf.rm_batch_size": (1, None, True, True),
    "rlthf.rm_eval_pairs": (1, None, True, True),
    "eval.top_k": (0, None, True, True), "online.top_k": (0, None, True, True), "ppo.top_k": (0, None, True, True),
    "eval.top_p": (0, 1, False, True), "online.top_p": (0, 1, False, True), "ppo.top_p": (0, 1, False, True),
    "loss.beta": (0, None, False, True), "loss.tau": (0, None, False, True),
    "loss.lambda_d": (0, None, False, True),
    "loss.lambda_u": (0, None, False, True), "loss.lam": (0, None, True, True),
    "model.max_len": (0, None, True, True),
    "train.warmup_steps": (0, None, True, True), "train.max_grad_norm": (0, None, True, True),
    "train.weight_decay": (0, None, True, True), "train.b1": (0, 1, True, False), "train.b2": (0, 1, True, False),
    "train.keep_checkpoints": (1, None, True, True),
    "online.kl_coef": (0, None, True, True), "online.tau": (0, None, False, True),
    "online.beta": (0, None, False, True), "online.behavior_update_every": (1, None, True, True),
    "online.behavior_ema": (0, 1, True, False),
    "online.max_new_tokens": (0, None, True, True), "ppo.max_new_tokens": (0, None, True, True),
    "ppo.clip_eps": (0, None, False, True), "ppo.clip_eps_v": (0, None, False, True),
    "ppo.gamma": (0, 1, True, True), "ppo.lam": (0, 1, True, True), "ppo.kl_coef": (0, None, True, True),
    "ppo.kl_horizon": (0, None, False, True), "ppo.kl_target": (0, None, False, True),
    "disco.group": (2, None, True, True), "disco.tau": (0, None, False, True), "disco.delta": (0, None, True, True),
    "disco.beta_c": (0, None, False, True), "disco.epochs": (1, None, True, True),
    "disco.minibatches": (1, None, True, True), "f_dpg.beta": (0, None, False, True),
    "f_dpg.minibatches": (1, None, True, True),
    "ppo.vf_coef": (0, None, True, True), "ppo.reset_prob": (0, 1, True, True), "ppo.epochs": (1, None, True, True),
    "ppo.rm_steps": (1, None, True, True), "ppo.rm_batch_size": (1, None, True, True),
    "ppo.rm_num_examples": (1, None, True, True), "ppo.rm_eval_pairs": (1, None, True, True),
    "reward.center_coef": (0, None, True, True), "reward.label_temperature": (0, None, False, True),
    "reward.ref_quantile": (0, 1, True, True), "reward.ref_samples": (1, None, True, True),
    "reward.eval_pairs": (1, None, True, True),
    "tlcr.revise_frac": (0, 1, True, True), "tlcr.revision_noise": (0, 1, True, True),
    "tlcr.run_on_frac": (0, 1, True, True), "tlcr.low": (0, 1, True, True), "tlcr.high": (0, 1, True, True),
    "tlcr.reward_clip": (0, None, False, True), "tlcr.disc_steps": (1, None, True, True),
    "tlcr.disc_batch_size": (1, None, True, True), "tlcr.disc_num_examples": (1, None, True, True),
    "tlcr.eval_pairs": (1, None, True, True),
    "udm.min_density_ratio": (0, None, False, True), "udm.max_density_ratio": (0, None, False, True),
    "udm.steps": (1, None, True, True), "udm.prompt_sample_size": (1, None, True, True),
    "sft.steps": (1, None, True, True), "sft.batch_size": (1, None, True, True),
    "sft.learning_rate": (0, None, True, True), "debug.nonfinite_at_step": (0, None, True, True),
}


def _flat(c, prefix=""):
  for k, v in c.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _flat(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def check_ranges(c: ml_collections.ConfigDict) -> None:
  """No NaN or infinite number anywhere; the keys of `_RANGES` (where present) inside their ranges."""
  values = dict(_flat(c))
  for key, v in values.items():
    if isinstance(v, float) and not math.isfinite(v):
      raise UserError(f"config {key}: must be a finite number, got {v!r}")
  for key, (lo, hi, lo_ok, hi_ok) in _RANGES.items():
    v = values.get(key)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
      continue
    bad_lo = lo is not None and (v < lo or (v == lo and not lo_ok))
    bad_hi = hi is not None and (v > hi or (v == hi and not hi_ok))
    if bad_lo or bad_hi:
      left = "(-inf" if lo is None else ("[" if lo_ok else "(") + f"{lo}"
      right = "inf)" if hi is None else f"{hi}" + ("]" if hi_ok else ")")
      raise UserError(f"config {key}: {v!r} is out of range {left}, {right}")


def _get(c, dotted):
  for part in dotted.split("."):
    c = c[part]
  return c


def check_choices(c: ml_collections.ConfigDict, choices: dict[str, tuple]) -> None:
  """`{"section.key": allowed values}`: a one-line UserError for the first value not allowed."""
  for key, allowed in choices.items():
    if _get(c, key) not in allowed:
      raise UserError(f"config {key}: {_get(c, key)!r} is not one of {', '.join(allowed)}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks the shared values before anything is built or compiled; raises a one-line UserError.

  Each trainer checks its own section (`jaxalign.trainers.check`).
  """
  check_choices(c, _CHOICES)
  check_ranges(c)
  for key in ("train.steps", "train.batch_size", "train.grad_accum", "train.log_every",
              "train.checkpoint_every", "data.prompt_len", "data.completion_len"):
    if int(_get(c, key)) <= 0:
      raise UserError(f"config {key}: must be a positive integer, got {_get(c, key)!r}")
  if c.train.batch_size % c.train.grad_accum:
    raise UserError(f"config train.grad_accum: {c.train.grad_accum} does not divide "
                    f"train.batch_size={c.train.batch_size}")
  if c.train.get("packing") and c.trainer != "offline":
    raise UserError(f"config train.packing: only the offline trainer packs rows (trainer={c.trainer!r})")
  if int(c.model.get("attention_chunk", 0)) < 0:
    raise UserError(f"config model.attention_chunk: must be >= 0 (0: off), got {c.model.attention_chunk}")
  if c.train.learning_rate < 0:
    raise UserError(f"config train.learning_rate: must be >= 0, got {c.train.learning_rate}")
  if c.data.source != "builtin" and not c.data.path:
    raise UserError(f"config data.path: required for data.source={c.data.source!r}")
  if c.model.hf_path and not os.path.isfile(os.path.join(c.model.hf_path, "config.json")):
    raise UserError(f"config model.hf_path: {os.path.join(c.model.hf_path, 'config.json')}: file not found "
                    "(a local Hugging Face model folder is needed; nothing is downloaded)")


def _builtin_run(trainer: str) -> ml_collections.ConfigDict:
  """The built-in task's run budget, shared by the offline and online trainers (unlocked)."""
  c = base_config()
  c.trainer = trainer
  c.init_from = "auto"  # SFT reference in WORKDIR/sft, trained on first use
  c.train.steps = 150
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 10
  c.train.checkpoint_every = 50
  c.eval.every = 50
  return c


def offline_config(loss: dict, variant: str = "", **train) -> ml_collections.ConfigDict:
  """An offline preference run on the built-in task: SFT reference in WORKDIR/sft, then `loss`.

  `loss` is the whole `config.loss` section (`name` plus that loss's hyper-parameters, so only
  keys the loss accepts are present); `train` overrides `config.train.*`. Variant `tiny` is a
  few-step smoke run for tests.
  """
  c = _builtin_run("offline")
  c.loss = ml_collections.ConfigDict(loss)
  for k, v in train.items():
    c.train[k] = v
  apply_variant(c, variant)
  c.lock()
  return c


def listwise_config(loss: dict, variant: str = "", **train) -> ml_collections.ConfigDict:
  """A listwise run (`losses.LISTWISE`) on the built-in task: like `offline_config`, with lists of
  `data.list_size` = 4 completions per prompt, batches of 32 lists and 2048 lists, i.e. the completions of the
  DPO default (150 steps x 64 pairs; 4096 pairs)."""
  c = offline_config(loss, "", **train)
  with c.unlocked():
    c.data.list_size = 4
    c.data.num_examples = 2048
    if "batch_size" not in train:
      c.train.batch_size = 32
    apply_variant(c, variant)
  return c


def unpaired_config(loss: dict, variant: str = "", **train) -> ml_collections.ConfigDict:
  """An unpaired (binary-feedback) run on the built-in task: like `offline_config`, with batches of rows.

  The default budget sees as many completions as the DPO default (150 steps x 128 rows = 150 x 64 pairs).
  """
  c = offline_config(loss, "", **train)
  with c.unlocked():
    c.trainer = "unpaired"
    c.data.num_examples = 8192  # rows (the DPO default's 4096 pairs hold 8192 completions)
    if "batch_size" not in train:
      c.train.batch_size = 128
    apply_variant(c, variant)
  return c


def apply_variant(c: ml_collections.ConfigDict, variant: str) -> None:
  """`tiny`: a few-step smoke run (tests, CI); "" leaves the config as it is."""
  if variant == "tiny":
    c.sft.steps, c.sft.num_examples = 40, 1024
    c.train.steps, c.train.batch_size, c.data.num_examples = 6, 16, 256
    c.train.checkpoint_every, c.train.log_every, c.eval.every = 3, 1, 3
    c.eval.samples_per_prompt = 2
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (tiny)")


def online_config(variant: str = "", **online) -> ml_collections.ConfigDict:
  """An online run (trainer "online") on the built-in task: SFT reference in WORKDIR/sft, then
  `train.steps` rounds of generate → annotate (ground truth by default) → one update.

  `online` overrides `config.online.*`. Each step annotates `train.batch_size` pairs, so a run
  uses `steps × batch_size` preference annotations. Variant `tiny` is a few-step smoke run.
  """
  c = _builtin_run("online")
  for k, v in online.items():
    c.online[k] = v
  apply_variant(c, variant)
  c.lock()
  return c
