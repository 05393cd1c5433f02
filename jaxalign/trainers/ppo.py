"""PPO for language models with transformed and combined rewards (algorithms.md §5, §7).

Each iteration (`train.steps` of them): draw `train.batch_size` training prompts, sample one
completion each with the KV-cache sampler, score it (the built-in ground truth on the host,
or reward models inside jit; several rewards combined by `ppo.aggregation`, LSC's
`Σ log σ(r_k − r_ref,k(x))` included), apply the missing-EOS penalty, then run ONE compiled
update. That update computes, from the current (= old) policy and value params, the frozen
reference params and the rollout: old log-probs and values, reference log-probs, the per-token
KL (k1 | k3), rewards with the score on the last real token, GAE (a reverse scan), masked
advantage whitening, and `ppo.epochs` × `ppo.minibatches` clipped policy + value optimiser
steps (nested `lax.scan`), and the (fixed or adaptive) KL coefficient for the next iteration.

Params are `{"policy": <Transformer params>, "value": {"head"} | {"trunk", "head"}}`:
`ppo.value=head` puts a scalar head on the policy trunk (lm-human-preferences; one forward pass
gives log-probs, entropies and values); `ppo.value=reward_model` is a separate network
initialised from a reward model (Stiennon et al., N+, TRL). `TrainState.step` counts PPO
iterations; the learning-rate schedule counts optimiser steps (iterations × epochs × minibatches).
The KL coefficient lives in `TrainState.extra` and is checkpointed. Prompt choice, rollout keys
and minibatch permutations are functions of (seed, step), so a killed run resumes on the same
trajectory.
"""

from __future__ import annotations

import copy
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxalign import advantages as adv_lib
from jaxalign import rewards as rw
from jaxalign import sampling
from jaxalign import sharding as shd
from jaxalign.checkpoint import Checkpointer, abstract_like
from jaxalign.data import builtin, pipeline
from jaxalign.errors import UserError
from jaxalign.evaluation import builtin_evaluate
from jaxalign.logprobs import token_logps
from jaxalign.losses.ppo import ppo_loss
from jaxalign.metrics import MetricWriter
from jaxalign.models import heads
from jaxalign.models.transformer import output_matrix_DxV
from jaxalign.optim import make_optimizer
from jaxalign.trainers import loop, setup
from jaxalign.trainers.offline import _auto_sft, _dtype
from jaxalign.trainers.state import create_state, state_shardings

_ROLLOUT_STREAM = 2**29 + 7  # fold_in stream of rollout keys (evaluator: 2**30, 2**30 + 1)
_PERM_STREAM = 2**29 + 8  # minibatch permutations
_PROMPT_STREAM = 12  # numpy stream of prompt choice


def _split(s) -> list[str]:
  if isinstance(s, (list, tuple)):
    return [str(x).strip() for x in s if str(x).strip()]
  return [x.strip() for x in str(s or "").split(",") if x.strip()]


def check(config) -> None:
  p, bsz = config.ppo, int(config.train.batch_size)
  if int(p.epochs) <= 0 or int(p.minibatches) <= 0:
    raise UserError("config ppo.epochs, ppo.minibatches: must be positive integers")
  if bsz % int(p.minibatches):
    raise UserError(f"config ppo.minibatches: {p.minibatches} does not divide train.batch_size={bsz}")
  if p.reward_source == "ground_truth" and config.data.source != "builtin":
    raise UserError("config ppo.reward_source: ground_truth needs data.source=builtin")
  if p.aggregation in ("lsc", "centered_sum") and p.reward_source != "reward_models":
    raise UserError(f"config ppo.aggregation: {p.aggregation} needs ppo.reward_source=reward_models "
                    "(r_ref(x) comes from reward-model scores of reference samples)")
  if p.aggregation == "weighted_raw_sum" and not _split(p.weights):
    raise UserError("config ppo.weights: weighted_raw_sum needs one weight per reward (e.g. 1.0,0.5)")
  if p.reward_source == "ground_truth" and not _split(p.properties):
    raise UserError("config ppo.properties: at least one ground-truth property is needed")
  if p.value == "reward_model" and not (p.value_init_path or _split(p.reward_paths) or _split(p.auto_rewards)):
    raise UserError("config ppo.value: reward_model needs ppo.value_init_path or a reward model")
  if int(p.max_new_tokens) > int(config.data.completion_len):
    raise UserError(f"config ppo.max_new_tokens: {p.max_new_tokens} exceeds data.completion_len="
                    f"{config.data.completion_len}")
  if float(p.temperature) <= 0:
    raise UserError(f"config ppo.temperature: must be > 0, got {p.temperature}")


# ---- the compiled update ----

def _scaled_hidden(h, temperature: float):
  return h if temperature == 1.0 else h / jnp.asarray(temperature, h.dtype)


def policy_forward(cfg, vcfg, params, b: dict, *, value_kind: str, temperature: float, chunk: int):
  """`(logps, entropies, values)` `[B, C]` of the rollout's completions (log-probs at the rollout temperature)."""
  args = (b["prompt"], b["prompt_mask"], b["completion"], b["completion_mask"])
  h = heads.completion_hidden(cfg, params["policy"], *args)
  lp, ent = token_logps(_scaled_hidden(h, temperature), output_matrix_DxV(cfg, params["policy"]), b["completion"],
                        chunk_size=chunk, with_entropy=True)
  if value_kind == "head":
    v = heads.apply_head(params["value"]["head"], h)
  else:
    v = heads.token_values(vcfg, params["value"], *args)
  m = b["completion_mask"] > 0
  return jnp.where(m, lp, adv_lib.INVALID_LOGPROB), jnp.where(m, ent, 0.0), jnp.where(m, v, 0.0)


def reference_forward(cfg, ref_params, b: dict, *, temperature: float, chunk: int):
  args = (b["prompt"], b["prompt_mask"], b["completion"], b["completion_mask"])
  h = heads.completion_hidden(cfg, ref_params, *args)
  lp = token_logps(_scaled_hidden(h, temperature), output_matrix_DxV(cfg, ref_params), b["completion"],
                   chunk_size=chunk)
  return jnp.where(b["completion_mask"] > 0, lp, adv_lib.INVALID_LOGPROB)


def make_update(p, cfg, vcfg, optimizer: optax.GradientTransformation, *, seed: int, chunk: int = 2048):
  """`update(state, batch, ref_params) -> (state, metrics)`: one PPO iteration (see the module docstring).

  `p` is the `config.ppo` section; `batch` holds prompt, prompt_mask, completion, completion_mask
  and the (penalised, aggregated) `score` `[B]`.
  """
  epochs, n_mb = int(p.epochs), int(p.minibatches)
  temp, est = float(p.temperature), str(p.kl_estimator)
  fwd = lambda params, b: policy_forward(cfg, vcfg, params, b, value_kind=str(p.value), temperature=temp,
                                         chunk=chunk)
  sg = jax.lax.stop_gradient

  def loss_fn(params, d):
    lp, ent, v = fwd(params, d)
    return ppo_loss(lp, d["logp_old"], d["adv"], v, d["v_old"], d["returns"], d["completion_mask"],
                    clip_eps=float(p.clip_eps), clip_eps_v=float(p.clip_eps_v), vf_coef=float(p.vf_coef),
                    entropy_BxT=ent)

  def update(state, batch, ref_params):
    mask = batch["completion_mask"]
    lp_old, _, v_old = sg(fwd(state.params, batch))
    lp_ref = sg(reference_forward(cfg, ref_params, batch, temperature=temp, chunk=chunk))
    kl_coef = state.extra["kl_coef"]
    rewards, kl = adv_lib.ppo_rewards(batch["score"], lp_old, lp_ref, mask, kl_coef=kl_coef, estimator=est)
    adv, returns = adv_lib.gae(rewards, v_old, mask, gamma=float(p.gamma), lam=float(p.lam))
    adv_w = adv_lib.masked_whiten(adv, mask, shift_mean=True, unbiased=bool(p.whiten_unbiased))
    data = {**batch, "logp_old": lp_old, "v_old": v_old, "adv": adv_w, "returns": returns}
    bsz = mask.shape[0]

    def opt_step(carry, d):
      params, opt_state, bad = carry
      (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(params, d)
      gnorm = optax.tree.norm(g)
      ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)

      def apply(op):
        params, opt_state = op
        updates, opt_state = optimizer.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

      params, opt_state = jax.lax.cond(ok, apply, lambda op: op, (params, opt_state))
      return (params, opt_state, bad | ~ok), {**m, "loss": loss, "grad_norm": gnorm}

    def epoch(carry, e):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _PERM_STREAM), state.step * epochs + e)
      perm = jax.random.permutation(key, bsz)
      mbs = jax.tree.map(lambda x: x[perm].reshape((n_mb, bsz // n_mb) + x.shape[1:]), data)
      return jax.lax.scan(opt_step, carry, mbs)

    (params, opt_state, bad), ms = jax.lax.scan(epoch, (state.params, state.opt_state, jnp.bool_(False)),
                                                jnp.arange(epochs))
    metrics = jax.tree.map(jnp.mean, ms)
    seq_kl = jnp.sum(kl, axis=-1)
    mean_kl = jnp.mean(seq_kl)
    new_coef = adv_lib.update_kl_coef(kl_coef, mean_kl, bsz, adaptive=bool(p.adaptive_kl),
                                      target=float(p.kl_target), horizon=float(p.kl_horizon))
    metrics.update(
        kl=mean_kl, kl_coef=kl_coef, score=jnp.mean(batch["score"]),
        non_score_reward=jnp.mean(jnp.sum(-kl_coef * kl, axis=-1)),
        rlhf_reward=jnp.mean(batch["score"] - kl_coef * seq_kl),
        clipfrac=metrics["policy_clipfrac"], advantage=adv_lib.masked_mean(adv, mask),
        returns=adv_lib.masked_mean(returns, mask), value=adv_lib.masked_mean(v_old, mask),
        length=jnp.mean(jnp.sum(mask, axis=-1).astype(jnp.float32)),
        nonfinite=bad.astype(jnp.int32))
    extra = {**state.extra, "kl_coef": new_coef.astype(jnp.asarray(kl_coef).dtype)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra), metrics

  return update


def jit_update(update, state, batch_shardings: dict, ref_shardings, mesh):
  st_sh = state_shardings(state)
  return jax.jit(update, in_shardings=(st_sh, batch_shardings, ref_shardings),
                 out_shardings=(st_sh, shd.replicated(mesh)), donate_argnums=(0,))


def optimizer_for(config):
  """The optimiser whose schedule counts optimiser steps: iterations × epochs × minibatches."""
  t = copy.deepcopy(config.train)
  k = int(config.ppo.epochs) * int(config.ppo.minibatches)
  with t.unlocked():
    t.steps, t.warmup_steps = int(t.steps) * k, int(t.warmup_steps) * k
  return make_optimizer(t)


def initial_extra(config, dtype=np.float32) -> dict:
  return {"kl_coef": np.asarray(float(config.ppo.kl_coef), dtype)}


# ---- rollouts and scoring ----

def decode(tok, tokens, mask, finished) -> list[str]:
  out = []
  for t, m, f in zip(np.asarray(tokens), np.asarray(mask), np.asarray(finished)):
    ids = t[m.astype(bool)]
    out.append(tok.decode(ids[:-1] if f else ids))
  return out


def _auto_reward_models(config, workdir: str, init_from: str) -> list[str]:
  """Trains (or resumes, or reuses) WORKDIR/rm_<property> for each of `ppo.auto_rewards`."""
  from jaxalign.trainers.reward import train_reward_model
  dirs = []
  for prop in _split(config.ppo.auto_rewards):
    c = copy.deepcopy(config)
    with c.unlocked():
      c.trainer, c.init_from = "reward_model", init_from
      c.reward.property, c.reward.margin, c.reward.eval_pairs = prop, True, int(config.ppo.rm_eval_pairs)
      c.data.num_examples = int(config.ppo.rm_num_examples)
      c.train.steps, c.train.batch_size = int(config.ppo.rm_steps), int(config.ppo.rm_batch_size)
      c.train.learning_rate, c.train.warmup_steps = 1e-3, 10
      c.train.checkpoint_every = c.eval.every = int(config.ppo.rm_steps)
    d = os.path.join(workdir, f"rm_{prop}")
    train_reward_model(c, d)
    dirs.append(d)
  return dirs


def make_scorer(config, tok, mesh, reward_models):
  """`score(prompts, ids, mask, tokens, cmask, finished) -> (rewards [B, K], host metrics)`."""
  p = config.ppo
  if p.reward_source == "ground_truth":
    props = _split(p.properties)

    def score(prompts, ids, mask, tokens, cmask, finished):
      texts, fin = decode(tok, tokens, cmask, finished), np.asarray(finished).tolist()
      r = np.array([[builtin.property_score(q, t, f, k) for k in props] for q, t, f in zip(prompts, texts, fin)])
      return r, texts
    return score

  cfgs = tuple(m.cfg for m in reward_models)

  @jax.jit
  def rm_scores(params, ids, mask, tokens, cmask):
    return jnp.stack([heads.sequence_score(c, q, ids, mask, tokens, cmask) for c, q in zip(cfgs, params)], -1)

  rm_params = tuple(m.params for m in reward_models)

  def score(prompts, ids, mask, tokens, cmask, finished):
    return np.asarray(jax.device_get(rm_scores(rm_params, ids, mask, tokens, cmask)), np.float64), \
        decode(tok, tokens, cmask, finished)
  return score


def host_ground_truth(prompts, texts, finished) -> dict[str, float]:
  fin = np.asarray(finished).tolist()
  return {"gt_reward": float(np.mean(builtin.rewards(prompts, texts, fin))),
          "gt_sentiment": float(np.mean([builtin.property_score(q, t, f, "sentiment")
                                         for q, t, f in zip(prompts, texts, fin)])),
          "gt_politeness": float(np.mean([builtin.property_score(q, t, f, "politeness")
                                          for q, t, f in zip(prompts, texts, fin)])),
          "both_good": float(np.mean([f and builtin.both_good(q, t) for q, t, f in zip(prompts, texts, fin)])),
          "finished": float(np.mean(fin))}


def make_rollout(config, tok, cfg, mesh, score, r_ref):
  """`make_batch(policy_params, step) -> (host batch, host metrics)`; a function of (seed, step)."""
  p, seed, bsz = config.ppo, int(config.seed), int(config.train.batch_size)
  pool = list(builtin.TRAIN_PROMPTS) if config.data.source == "builtin" else list(dict.fromkeys(
      r["prompt"] for r in pipeline.preference_examples(config.data, seed)))
  pool_ids, pool_mask = pipeline.encode_prompts(tok, pool, int(config.data.prompt_len),
                                                config.data.prompt_truncation)
  new = int(p.max_new_tokens) or int(config.data.completion_len)
  kw = dict(cfg=cfg, max_new_tokens=new, eos_id=tok.eos_id, pad_id=tok.pad_id, temperature=float(p.temperature),
            top_k=int(p.top_k), top_p=float(p.top_p))
  weights = [float(w) for w in _split(p.weights)] or None
  dtype = _dtype(config)
  builtin_task = config.data.source == "builtin"

  def make_batch(params, step: int):
    rng = np.random.default_rng([seed, _PROMPT_STREAM, step])
    idx = rng.integers(0, len(pool), size=bsz)
    prompts, ids, mask = [pool[i] for i in idx], pool_ids[idx], pool_mask[idx]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _ROLLOUT_STREAM), step)
    sb = shd.shard_batch(pipeline.process_slice(dict(prompt=ids, prompt_mask=mask)), mesh)
    tokens, cmask, fin = sampling.sample(params, sb["prompt"], sb["prompt_mask"], key, **kw)
    r_xK, texts = score(prompts, sb["prompt"], sb["prompt_mask"], tokens, cmask, fin)
    tokens, cmask, fin = (np.asarray(x) for x in jax.device_get((tokens, cmask, fin)))
    ref = r_ref[idx] if r_ref is not None else None
    s = np.asarray(rw.aggregate(r_xK, ref, method=p.aggregation, weights=weights), np.float64)
    s = np.asarray(adv_lib.penalize_missing_eos(s, fin, mode=p.missing_eos, penalty=float(p.missing_eos_penalty),
                                                value=float(p.missing_eos_value)))
    metrics = {f"reward_{k}": float(v) for k, v in enumerate(r_xK.mean(0))} if r_xK.shape[1] > 1 else {}
    if builtin_task:
      metrics.update(host_ground_truth(prompts, texts, fin))
    batch = dict(prompt=ids, prompt_mask=mask, completion=tokens.astype(np.int32),
                 completion_mask=cmask.astype(np.int32), score=s.astype(dtype))
    return batch, metrics
  return make_batch


# ---- the trainer ----

def _load_models(paths, mesh):
  from jaxalign.trainers.reward import load_reward_model
  models = [load_reward_model(d, mesh) for d in paths]
  for d, m in zip(paths, models):
    if m.kind != "reward_model":
      raise UserError(f"config ppo.reward_paths: {d} holds a {m.kind}, not a reward_model")
  return models


def train(config, workdir: str):
  mesh, tok, cfg = setup.prepare(config, workdir)
  setup.batch_sizes_ok(config, mesh)
  check(config)
  p = config.ppo
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if (int(config.train.batch_size) // int(p.minibatches)) % shards:
    raise UserError(f"config ppo.minibatches: minibatch {int(config.train.batch_size) // int(p.minibatches)} "
                    f"is not divisible by data*fsdp={shards} devices")
  loop.write_config(config, workdir)
  init_from = _auto_sft(config, workdir) if config.init_from == "auto" else config.init_from
  ref_params = setup.initial_params(config, cfg, mesh, init_from)
  policy = jax.tree.map(jnp.copy, ref_params)  # separate buffers: the state is donated

  reward_paths = _split(p.reward_paths)
  if p.reward_source == "reward_models" and not reward_paths:
    reward_paths = _auto_reward_models(config, workdir, init_from)
    if not reward_paths:
      raise UserError("config ppo.reward_paths: no reward models (set ppo.reward_paths or ppo.auto_rewards)")
  models = _load_models(reward_paths, mesh) if p.reward_source == "reward_models" else []
  r_ref, meta = None, {}
  if p.aggregation in ("lsc", "centered_sum"):
    pool = list(builtin.TRAIN_PROMPTS) if config.data.source == "builtin" else list(dict.fromkeys(
        r["prompt"] for r in pipeline.preference_examples(config.data, int(config.seed))))
    ids, mask = pipeline.encode_prompts(tok, pool, int(config.data.prompt_len), config.data.prompt_truncation)
    r_ref, meta["lsc_ref_key"] = rw.lsc_reference(
        cfg, ref_params, [(m.cfg, m.params) for m in models], ids, mask, mesh=mesh,
        cache_dir=os.path.join(workdir, "lsc_cache"), eos_id=tok.eos_id, pad_id=tok.pad_id,
        max_new_tokens=int(p.max_new_tokens) or int(config.data.completion_len),
        n_samples=int(config.reward.ref_samples), seed=int(config.seed), statistic=config.reward.ref_statistic,
        q=float(config.reward.ref_quantile), temperature=float(p.temperature), top_k=int(p.top_k),
        top_p=float(p.top_p), batch_size=int(config.train.batch_size))

  rng = jax.random.fold_in(jax.random.key(int(config.seed)), 3)
  if p.value == "head":
    std = float(p.value_head_std)
    value, vcfg = {"head": heads.init_head(cfg, rng, mesh, std=None if std < 0 else std)}, cfg
  else:
    vm = _load_models([p.value_init_path], mesh)[0] if p.value_init_path else models[0]
    value, vcfg = jax.tree.map(jnp.copy, vm.params), vm.cfg
  params = {"policy": policy, "value": value}

  optimizer = optimizer_for(config)
  state = create_state(params, optimizer, mesh, jax.device_put(initial_extra(config, _dtype(config)),
                                                               shd.replicated(mesh)))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=int(config.train.keep_checkpoints))
  start, steps = ckpt.latest_step() or 0, int(config.train.steps)
  log_buffer: list[dict] = []
  if start:
    state, saved = ckpt.restore(abstract_like(state))
    log_buffer = saved.get("log_buffer", [])
  if start >= steps:
    ckpt.close()
    return state.params
  writer = MetricWriter(workdir, resume_step=start)
  make_batch = make_rollout(config, tok, cfg, mesh, make_scorer(config, tok, mesh, models), r_ref)
  evaluate = builtin_evaluate(config, tok, cfg, ref_params)

  update_fn = None
  tcfg, last_saved = config.train, start
  pbar = tqdm(total=steps, initial=start, desc="ppo", disable=jax.process_index() != 0, file=sys.stderr,
              dynamic_ncols=True, mininterval=1.0)
  for s in range(start, steps):
    t0 = time.perf_counter()
    hb, host_m = make_batch(state.params["policy"], s)
    t1 = time.perf_counter()
    batch = shd.shard_batch(pipeline.process_slice(hb), mesh)
    if update_fn is None:
      batch_sh = {k: v.sharding for k, v in batch.items()}
      update_fn = jit_update(make_update(p, cfg, vcfg, optimizer, seed=int(config.seed),
                                         chunk=int(tcfg.logprob_chunk)),
                             state, batch_sh, jax.tree.map(lambda x: x.sharding, ref_params), mesh)
    state, m = update_fn(state, batch, ref_params)
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    done = s + 1
    if m["nonfinite"]:
      pbar.close()
      ckpt.close()
      raise loop.NonFiniteError(f"non-finite loss or gradient at step {done}; stopped; last good checkpoint: "
                                f"step {last_saved} in {ckpt.directory}")
    m.update(host_m)
    m["rollout_time_s"], m["update_time_s"] = t1 - t0, time.perf_counter() - t1
    log_buffer.append(m)
    if done % int(tcfg.log_every) == 0 or done == steps:
      row = {(f"perf/{k}" if k.endswith("_time_s") else f"train/{k}"): float(np.mean([r[k] for r in log_buffer]))
             for k in log_buffer[0] if k != "nonfinite"}
      log_buffer = []
      writer.write(done, row)
      pbar.set_postfix(score=f"{row['train/score']:.3f}", kl=f"{row['train/kl']:.3f}")
    ev_every = int(config.eval.every)
    if evaluate is not None and ((ev_every > 0 and done % ev_every == 0) or done == steps):
      ev_m, samples = evaluate(state.params["policy"], done)
      writer.write(done, ev_m)
      writer.write_samples(done, samples)
      pbar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(ev_m.items())), file=sys.stderr)
    if done % int(tcfg.checkpoint_every) == 0 or done == steps:
      ckpt.save(done, state, {**meta, "log_buffer": log_buffer})
      last_saved = done
    pbar.update(1)
  pbar.close()
  ckpt.close()
  writer.close()
  return state.params
