"""Critic-free policy-gradient trainers of the seeds: DisCO / DisCO-b (trainer "disco", algorithms.md §8.6)
and f-DPG (trainer "f_dpg", §8.5).

Both run on PPO's rollouts and rewards (`ppo.make_rollout`, `ppo.sequence_scores`, the `ppo.*` keys
`reward_source`, `properties`, `reward_paths` / `auto_rewards`, `aggregation`, `missing_eos*`,
`max_new_tokens`, `temperature`, `top_k`, `top_p`) and through the shared loop: each iteration samples
`train.batch_size` prompts × a group of completions, and ONE compiled update scores them (reward models
inside the step; the built-in task's ground truth on the host), computes the rollout policy's log-probs
and takes the optimiser steps (`ppo.minibatch_steps`).

  disco   G = `disco.group` rollouts per prompt with binary rewards (`disco.reward`: the built-in task's
          "good on every property" or `score > disco.threshold` of the rewards above); per prompt
          J = mean_{O⁺} s − τ·log Σ_{O⁻} exp(s/τ) (DisCO) or − mean_{O⁻} s (DisCO-b) with the token-averaged
          score s_logL or s_Lratio; loss −mean_q J + (β_c/2)·[KL̂(π_old‖π_θ) − δ]₊², over
          `disco.epochs` × `disco.minibatches` steps on the rollout (minibatches of whole prompts), the
          constraint against the rollout policy π_old (no reference term).
  f_dpg   target p(y) ∝ π₀(y)·exp(r(y)/β), π₀ the SFT reference; one sample per prompt; weights
          f'(t_i) − mean f' with log t_i = S_θ(y_i) − S_0(y_i) − r_i/β + log Ẑ, loss mean_i w_i·S_θ(y_i);
          Ẑ the running importance-sampling estimate over every batch so far (`TrainState.extra`,
          checkpointed). Samples must come from π_θ itself (temperature 1, no top-k / top-p).

Params are the policy's alone (no value network). Prompt choice, rollout keys and minibatch
permutations are functions of (seed, step): a killed run resumes on the same trajectory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import judges, losses
from jaxalign import sharding as shd
from jaxalign.config import check_choices
from jaxalign.data_eval import sample_evaluate
from jaxalign.errors import UserError
from jaxalign.evaluation import builtin_evaluate
from jaxalign.logprobs import sequence_logps
from jaxalign.losses.rl import DISCO_SCORES, DISCO_VARIANTS, DIVERGENCES
from jaxalign.models.transformer import count_params
from jaxalign.optim import make_optimizer, schedule
from jaxalign.trainers import loop, ppo, prologue, setup
from jaxalign.trainers.state import create_state

_PERM_STREAM = 2**29 + 9  # minibatch permutations

CHOICES = {"disco.score": DISCO_SCORES, "disco.variant": DISCO_VARIANTS, "disco.reward": ("all_good", "threshold"),
           "f_dpg.divergence": DIVERGENCES, "f_dpg.baseline": ("mean", "none")}


def _schedule_shape(config) -> tuple[int, int, int]:
  """(rollouts per prompt, epochs, minibatches) of the trainer."""
  if config.trainer == "disco":
    d = config.disco
    return int(d.group), int(d.epochs), int(d.minibatches)
  return 1, 1, int(config.f_dpg.minibatches)


def check(config) -> None:
  check_choices(config, {**ppo.CHOICES, **CHOICES})
  p, bsz = config.ppo, int(config.train.batch_size)
  group, epochs, n_mb = _schedule_shape(config)
  if epochs <= 0 or n_mb <= 0:
    raise UserError(f"config {config.trainer}.epochs, {config.trainer}.minibatches: must be positive integers")
  if bsz % n_mb:
    raise UserError(f"config {config.trainer}.minibatches: {n_mb} does not divide train.batch_size={bsz} (prompts)")
  if p.reward_source == "token_discriminator":
    raise UserError(f"config ppo.reward_source: {config.trainer} takes sequence rewards (ground_truth | reward_models)")
  if p.reward_source == "ground_truth" and config.data.source != "builtin":
    raise UserError("config ppo.reward_source: ground_truth needs data.source=builtin")
  if p.aggregation in ("lsc", "centered_sum"):
    raise UserError(f"config ppo.aggregation: {p.aggregation} needs per-prompt reference rewards; "
                    f"{config.trainer} supports raw_sum | weighted_raw_sum")
  if int(p.max_new_tokens) > int(config.data.completion_len):
    raise UserError(f"config ppo.max_new_tokens: {p.max_new_tokens} exceeds data.completion_len="
                    f"{config.data.completion_len}")
  if config.trainer == "disco":
    d = config.disco
    if group < 2:
      raise UserError(f"config disco.group: needs at least 2 rollouts per prompt, got {group}")
    if d.reward == "all_good" and config.data.source != "builtin":
      raise UserError("config disco.reward: all_good is the built-in task's; use threshold with reward models")
    for k in ("tau", "beta_c"):
      if not float(d[k]) > 0:
        raise UserError(f"config disco.{k}: must be > 0, got {d[k]}")
    if float(d.delta) < 0:
      raise UserError(f"config disco.delta: must be >= 0, got {d.delta}")
  else:
    f = config.f_dpg
    if not float(f.beta) > 0:
      raise UserError(f"config f_dpg.beta: must be > 0, got {f.beta}")
    if float(p.temperature) != 1.0 or int(p.top_k) != 0 or float(p.top_p) != 1.0:
      raise UserError("config ppo.temperature: f_dpg's importance weights need samples of π_θ itself "
                      "(ppo.temperature=1, ppo.top_k=0, ppo.top_p=1)")


def make_update(config, cfg, optimizer, *, reward_cfgs: tuple = (), weights=None, chunk: int = 2048):
  """`update(state, batch, frozen) -> (state, metrics)`: one DisCO or f-DPG iteration (module docstring)."""
  p, seed, trainer = config.ppo, int(config.seed), config.trainer
  group, epochs, n_mb = _schedule_shape(config)
  temp = float(p.temperature)
  sg = jax.lax.stop_gradient
  fields = ("prompt", "prompt_mask", "completion", "completion_mask")

  def logps(params, b):
    return ppo.reference_forward(cfg, params, b, temperature=temp, chunk=chunk)  # [B, C], padding masked

  def flat(d):  # [q, G, ...] -> [q·G, ...]
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), d)

  if trainer == "disco":
    dc = config.disco
    tau, score_kind, variant = float(dc.tau), str(dc.score), str(dc.variant)
    delta, beta_c = float(dc.delta), float(dc.beta_c)

    def loss_fn(params, d):
      d = flat(d)
      lp = logps(params, d)
      m = d["completion_mask"]
      s = losses.disco_scores(lp, d["logp_old"], m, score=score_kind)
      j, valid = losses.disco_objective(s.reshape(-1, group), d["positive"].reshape(-1, group), tau=tau,
                                        variant=variant)
      kl = losses.token_kl(d["logp_old"], lp, m)
      pen = losses.disco_penalty(kl, delta=delta, beta_c=beta_c)
      obj = jnp.mean(j)  # N_q: every prompt of the minibatch, all-same groups contributing 0
      return -obj + pen, {"objective": sg(obj), "token_kl": sg(kl), "penalty": sg(pen),
                          "score": sg(jnp.mean(s)), "valid_groups": jnp.mean(valid.astype(s.dtype))}
  else:
    fc = config.f_dpg
    beta, divergence, baseline = float(fc.beta), str(fc.divergence), str(fc.baseline)

    def loss_fn(params, d):
      seq = sequence_logps(jnp.where(d["completion_mask"] > 0, logps(params, d), 0.0), d["completion_mask"])
      return jnp.mean(d["weight"] * seq), {}

  def update(state, batch, frozen):
    mask = batch["completion_mask"]
    r_xK, score = sg(ppo.sequence_scores(p, batch, frozen, reward_cfgs=reward_cfgs, weights=weights))
    lp_old = sg(logps(state.params, batch))
    data = {k: batch[k] for k in fields}
    metrics, extra = {}, state.extra
    seq_old = sequence_logps(jnp.where(mask > 0, lp_old, 0.0), mask)
    ref_tok = sg(logps(frozen["reference"], batch))
    seq_ref = sequence_logps(jnp.where(mask > 0, ref_tok, 0.0), mask)
    if trainer == "disco":
      pos = batch["both_good"] if dc.reward == "all_good" else (score > float(dc.threshold))
      pos = pos.astype(lp_old.dtype)
      data.update(logp_old=lp_old, positive=pos)
      data = jax.tree.map(lambda x: x.reshape((-1, group) + x.shape[1:]), data)  # minibatches of whole prompts
      metrics["positive"] = jnp.mean(pos)
    else:
      r = score.astype(seq_old.dtype)
      log_p = seq_ref + r / beta  # log P(y), the unnormalised target
      blz = losses.batch_log_z(log_p, seq_old)
      log_z, count = losses.running_log_z(extra["log_z"], extra["z_count"], blz, r.shape[0])
      w, log_t = losses.f_dpg_weights(seq_old, seq_ref, r, log_z, beta=beta, divergence=divergence,
                                      baseline=baseline)
      data["weight"] = w
      iw = jax.nn.softmax(log_p - seq_old)  # self-normalised importance weights of p over the batch
      metrics.update(log_z=log_z, batch_log_z=blz, ess=1.0 / jnp.sum(jnp.square(iw)) / r.shape[0],
                     log_t=jnp.mean(log_t), weight_abs=jnp.mean(jnp.abs(w)))
      extra = {**extra, "log_z": log_z.astype(extra["log_z"].dtype), "z_count": count.astype(extra["z_count"].dtype)}
    perm_key = lambda e: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _PERM_STREAM),
                                            state.step * epochs + e)
    params, opt_state, bad, ms = ppo.minibatch_steps(loss_fn, optimizer, state.params, state.opt_state, data,
                                                     perm_key=perm_key, epochs=epochs, minibatches=n_mb)
    metrics.update(jax.tree.map(jnp.mean, ms))
    seq_kl = seq_old - seq_ref
    metrics.update(kl=jnp.mean(seq_kl), reward=jnp.mean(score),
                   length=jnp.mean(jnp.sum(mask, -1).astype(jnp.float32)),
                   finished=jnp.mean(batch["finished"].astype(jnp.float32)), nonfinite=bad.astype(jnp.int32))
    if r_xK.shape[-1] > 1:
      metrics.update({f"reward_{k}": jnp.mean(r_xK[:, k]) for k in range(r_xK.shape[-1])})
    metrics.update({k: jnp.mean(v) for k, v in batch.items() if k.startswith("gt_") or k == "both_good"})
    extra = jax.tree.map(lambda new, old: jnp.where(bad, old, new), extra, state.extra)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra), metrics

  return update


def _optimizer_train_cfg(config):
  _, epochs, n_mb = _schedule_shape(config)
  return ppo._optimizer_train_cfg(config, epochs * n_mb)


def initial_extra(config, dtype=np.float32) -> dict:
  if config.trainer == "f_dpg":  # the running estimate of log Z and how many weights it averages
    return {"log_z": np.zeros((), dtype), "z_count": np.zeros((), dtype)}
  return {}


def train(config, workdir: str):
  p = config.ppo
  run = prologue.begin(config, workdir)
  mesh, tok, cfg, ref_params = run.mesh, run.tok, run.cfg, run.reference
  group, epochs, n_mb = _schedule_shape(config)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  rows_mb = int(config.train.batch_size) // n_mb * group
  if rows_mb % shards:
    raise UserError(f"config {config.trainer}.minibatches: a minibatch of {rows_mb} rollouts is not divisible by "
                    f"data*fsdp={shards} devices")
  models = []
  if p.reward_source == "reward_models":
    paths = ppo._split(p.reward_paths) or ppo._auto_reward_models(config, workdir, run.init_from)
    if not paths:
      raise UserError("config ppo.reward_paths: no reward models (set ppo.reward_paths or ppo.auto_rewards)")
    models = judges.reward_models(paths, mesh)
  optimizer = make_optimizer(_optimizer_train_cfg(config))
  state = create_state(run.policy, optimizer, mesh,
                       jax.device_put(initial_extra(config, setup.dtype(config)), shd.replicated(mesh)))
  update = make_update(config, cfg, optimizer, reward_cfgs=tuple(m.cfg for m in models),
                       weights=[float(w) for w in ppo._split(p.weights)] or None,
                       chunk=int(config.train.logprob_chunk))
  frozen = {"reference": ref_params, "reward_models": tuple(m.params for m in models)}
  evaluate = builtin_evaluate(config, tok, cfg, ref_params) or sample_evaluate(config, tok, cfg, ref_params, mesh)
  k = epochs * n_mb
  lr_sched = schedule(_optimizer_train_cfg(config))
  forwards = 3 + len(models)  # sampling, rollout policy, reference, each reward model

  def tokens_fn(b):
    t = b["prompt_mask"].sum() + b["completion_mask"].sum()
    return t, epochs * t, forwards * t

  state, _ = loop.run(config, workdir, mesh=mesh, state=state, step_fn=update,
                      batches=ppo.make_rollout(config, tok, cfg, mesh, None, group=group, params_of=lambda x: x),
                      frozen=frozen, evaluate=evaluate, tokens_fn=tokens_fn,
                      flops_params=count_params(run.policy, cfg)["flops_params"], desc=config.trainer,
                      learning_rate=lambda i: lr_sched(i * k + k - 1), time_split=True)
  return state.params
