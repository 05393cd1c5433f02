"""PPO for language models with transformed and combined rewards (algorithms.md §5, §7).

Each iteration (`train.steps` of them, through the shared loop): draw `train.batch_size`
training prompts, sample one completion each with the KV-cache sampler, then run ONE compiled
update. That update computes, from the rollout, the current (= old) policy and value params
and the frozen trees (`reference`, `reward_models`): the reward-model scores of every model,
their aggregation by `ppo.aggregation` (LSC's `Σ log σ(r_k − r_ref,k(x))` with the per-prompt
`r_ref` carried in the batch), the missing-EOS penalty, old log-probs and values, reference
log-probs, the per-token KL (k1 | k3), rewards with the score on the last real token, GAE (a
reverse scan), masked advantage whitening, and `ppo.epochs` × `ppo.minibatches` clipped policy +
value optimiser steps (nested `lax.scan`), and the (fixed or adaptive) KL coefficient for the
next iteration. With `ppo.reward_source=token_discriminator` (TLCR, algorithms.md §6) the frozen
`discriminator` scores every generated token in the same program and each action gets its token
reward (`rw.token_rewards`); `ppo.kl_estimator=full` takes the exact KL over the vocabulary from the
old and reference hidden states. Only the built-in task's ground truth (`ppo.reward_source=ground_truth`, a
Python function of text) runs on the host: each process decodes and scores its own rows, and
the per-row rewards enter the batch. Rollouts stay global arrays sharded over the batch, so
several hosts each sample and score their own prompts.

Params are `{"policy": <Transformer params>, "value": {"head"} | {"trunk", "head"}}`:
`ppo.value=head` puts a scalar head on the policy trunk (lm-human-preferences; one forward pass
gives log-probs, entropies and values); `ppo.value=reward_model` is a separate network
initialised from a reward model (Stiennon et al., N+, TRL); `ppo.value=discriminator` one initialised from
the TLCR discriminator's trunk (the authors' critic). `TrainState.step` counts PPO
iterations; the learning-rate schedule counts optimiser steps (iterations × epochs × minibatches).
The KL coefficient lives in `TrainState.extra` and is checkpointed. Prompt choice, rollout keys
and minibatch permutations are functions of (seed, step), so a killed run resumes on the same
trajectory.
"""

from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxalign import advantages as adv_lib
from jaxalign import judges, losses
from jaxalign import rewards as rw
from jaxalign import sampling
from jaxalign import sharding as shd
from jaxalign.config import check_choices
from jaxalign.data import pipeline
from jaxalign.errors import UserError
from jaxalign.data_eval import sample_evaluate
from jaxalign.evaluation import builtin_evaluate
from jaxalign.logprobs import full_kl, token_logps
from jaxalign.losses.ppo import ppo_loss
from jaxalign.models import heads
from jaxalign.models.loading import load_discriminator
from jaxalign.models.transformer import count_params, output_matrix_DxV
from jaxalign.optim import make_optimizer, schedule
from jaxalign.trainers import loop, prologue, setup
from jaxalign.trainers.discriminator import train as train_discriminator
from jaxalign.trainers.reward import train_reward_model
from jaxalign.trainers.state import create_state

_ROLLOUT_STREAM = 2**29 + 7  # fold_in stream of rollout keys (evaluator: 2**30, 2**30 + 1)
_PERM_STREAM = 2**29 + 8  # minibatch permutations
_PROMPT_STREAM = 12  # numpy stream of prompt choice
_RESET_STREAM = 13  # numpy stream of DR-PO's reference responses and reset points


_split = setup.split
CHOICES = {"ppo.value": ("head", "reward_model", "discriminator"), "ppo.kl_estimator": ("k1", "k3", "full"),
           "ppo.reward_source": ("ground_truth", "reward_models", "token_discriminator"),
           "ppo.aggregation": rw.AGGREGATIONS, "ppo.missing_eos": ("subtract", "replace", "none"),
           "tlcr.token_reward": rw.TOKEN_REWARD_MODES, "tlcr.sign": ("both", "positive", "negative")}


def uses_reward_models(config) -> bool:
  """Sequence reward models are scored: the reward source, or added to TLCR's token rewards."""
  p = config.ppo
  return p.reward_source == "reward_models" or (p.reward_source == "token_discriminator"
                                                  and bool(config.tlcr.sequence_reward))


def check(config) -> None:
  check_choices(config, CHOICES)
  p, bsz = config.ppo, int(config.train.batch_size)
  if int(p.epochs) <= 0 or int(p.minibatches) <= 0:
    raise UserError("config ppo.epochs, ppo.minibatches: must be positive integers")
  if bsz % int(p.minibatches):
    raise UserError(f"config ppo.minibatches: {p.minibatches} does not divide train.batch_size={bsz}")
  if p.reward_source == "ground_truth" and config.data.source != "builtin":
    raise UserError("config ppo.reward_source: ground_truth needs data.source=builtin")
  if p.aggregation in ("lsc", "centered_sum") and not uses_reward_models(config):
    raise UserError(f"config ppo.aggregation: {p.aggregation} needs ppo.reward_source=reward_models "
                    "(r_ref(x) comes from reward-model scores of reference samples)")
  if p.value == "reward_model" and not p.value_init_path and not uses_reward_models(config):
    raise UserError(f"config ppo.value: reward_model needs ppo.value_init_path when no reward model is scored "
                    f"(ppo.reward_source={p.reward_source})")
  if p.value == "discriminator" and p.reward_source != "token_discriminator":
    raise UserError("config ppo.value: discriminator needs ppo.reward_source=token_discriminator")
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


def policy_forward(cfg, vcfg, params, b: dict, *, value_kind: str, temperature: float, chunk: int,
                   hidden: bool = False):
  """`(logps, entropies, values)` `[B, C]` of the rollout's completions (log-probs at the rollout temperature);
  with `hidden`, also the temperature-scaled hidden states `[B, C, D]` that predict them."""
  args = (b["prompt"], b["prompt_mask"], b["completion"], b["completion_mask"])
  h = heads.completion_hidden(cfg, params["policy"], *args)
  hs = _scaled_hidden(h, temperature)
  lp, ent = token_logps(hs, output_matrix_DxV(cfg, params["policy"]), b["completion"],
                        chunk_size=chunk, with_entropy=True)
  if value_kind == "head":
    v = heads.apply_head(params["value"]["head"], h)
  else:
    v = heads.token_values(vcfg, params["value"], *args)
  m = b["completion_mask"] > 0
  out = (jnp.where(m, lp, adv_lib.INVALID_LOGPROB), jnp.where(m, ent, 0.0), jnp.where(m, v, 0.0))
  return out + (hs,) if hidden else out


def reference_forward(cfg, ref_params, b: dict, *, temperature: float, chunk: int, hidden: bool = False):
  args = (b["prompt"], b["prompt_mask"], b["completion"], b["completion_mask"])
  hs = _scaled_hidden(heads.completion_hidden(cfg, ref_params, *args), temperature)
  lp = token_logps(hs, output_matrix_DxV(cfg, ref_params), b["completion"], chunk_size=chunk)
  lp = jnp.where(b["completion_mask"] > 0, lp, adv_lib.INVALID_LOGPROB)
  return (lp, hs) if hidden else lp


def reset_pg_mask(mask_BxT, reset_len_B):
  """The completion mask without each row's first `reset_len` tokens (DR-PO's teacher-forced prefix)."""
  t = jnp.arange(mask_BxT.shape[1])[None, :]
  return jnp.where(t >= reset_len_B[:, None], mask_BxT, 0)


def sequence_scores(p, batch, frozen, *, reward_cfgs: tuple = (), weights=None, tokens: bool = False):
  """`(rewards [B, K], score [B])` of a rollout inside the compiled step: every reward model of `reward_cfgs`
  (params `frozen["reward_models"]`) or the host's ground truth `batch["rewards"]`, aggregated by
  `p.aggregation` (`p` = the `config.ppo` section), with the missing-EOS penalty. `tokens`: token rewards
  only (TLCR without a sequence reward): a zero score before the penalty."""
  if reward_cfgs:
    r_xK = judges.reward_scores(reward_cfgs, frozen["reward_models"], batch["prompt"], batch["prompt_mask"],
                                batch["completion"], batch["completion_mask"])
  elif tokens:
    r_xK = jnp.zeros(batch["finished"].shape + (1,), jnp.float32)
  else:
    r_xK = batch["rewards"]
  s = rw.aggregate(r_xK, batch.get("r_ref"), method=p.aggregation, weights=weights)
  s = adv_lib.penalize_missing_eos(s, batch["finished"], mode=p.missing_eos, penalty=float(p.missing_eos_penalty),
                                   value=float(p.missing_eos_value))
  return r_xK, s


def minibatch_steps(loss_fn, optimizer: optax.GradientTransformation, params, opt_state, data: dict, *, perm_key,
                    epochs: int, minibatches: int):
  """`epochs` passes of `minibatches` optimiser steps over `data` (leading axis: the units a permutation
  shuffles, e.g. rollouts, or prompts with their group of rollouts), in nested `lax.scan`s.

  loss_fn(params, minibatch) -> (loss, metrics). The permutation of pass e is drawn from
  `perm_key(e)` (a traced e). A non-finite loss or gradient skips that optimiser step. Returns
  `(params, opt_state, bad, metrics)` with metrics stacked `[epochs, minibatches]` (plus
  `loss`, `grad_norm`); `bad` is True when any step was skipped.
  """
  n = next(iter(data.values())).shape[0]

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
    perm = jax.random.permutation(perm_key(e), n)
    mbs = jax.tree.map(lambda x: x[perm].reshape((minibatches, n // minibatches) + x.shape[1:]), data)
    return jax.lax.scan(opt_step, carry, mbs)

  (params, opt_state, bad), ms = jax.lax.scan(epoch, (params, opt_state, jnp.bool_(False)), jnp.arange(epochs))
  return params, opt_state, bad, ms


def make_update(p, cfg, vcfg, optimizer: optax.GradientTransformation, *, seed: int, chunk: int = 2048,
                reward_cfgs: tuple = (), weights=None, disc_cfg=None, tlcr=None):
  """`update(state, batch, frozen) -> (state, metrics)`: one PPO iteration (see the module docstring).

  `p` is the `config.ppo` section. `batch` holds prompt, prompt_mask, completion, completion_mask,
  finished, and `r_ref` `[B, K]` (LSC, centred sum) or, for `ppo.reward_source=ground_truth`, the
  host's `rewards` `[B, K]`; optional per-row `gt_*` / `both_good` diagnostics are averaged into the
  metrics. `frozen` holds `reference` params and `reward_models` (one params tree per `reward_cfgs`),
  and with `ppo.reward_source=token_discriminator` the `discriminator` (`disc_cfg`), whose token rewards
  (`rw.token_rewards` by the `config.tlcr` section `tlcr`) go to every action; reward models are then
  scored only with `tlcr.sequence_reward`.
  """
  epochs, n_mb = int(p.epochs), int(p.minibatches)
  temp, est = float(p.temperature), str(p.kl_estimator)
  fwd = lambda params, b: policy_forward(cfg, vcfg, params, b, value_kind=str(p.value), temperature=temp,
                                         chunk=chunk)
  sg = jax.lax.stop_gradient

  tokens = p.reward_source == "token_discriminator"

  def scores(batch, frozen):
    return sequence_scores(p, batch, frozen, reward_cfgs=reward_cfgs, weights=weights, tokens=tokens)

  def loss_fn(params, d):
    lp, ent, v = fwd(params, d)
    return ppo_loss(lp, d["logp_old"], d["adv"], v, d["v_old"], d["returns"], d["completion_mask"],
                    clip_eps=float(p.clip_eps), clip_eps_v=float(p.clip_eps_v), vf_coef=float(p.vf_coef),
                    entropy_BxT=ent, pg_mask_BxT=d["pg_mask"])

  def update(state, batch, frozen):
    mask = batch["completion_mask"]
    r_xK, score = sg(scores(batch, frozen))
    full = est == "full"
    old = sg(policy_forward(cfg, vcfg, state.params, batch, value_kind=str(p.value), temperature=temp,
                            chunk=chunk, hidden=full))
    lp_old, v_old = old[0], old[2]
    ref = sg(reference_forward(cfg, frozen["reference"], batch, temperature=temp, chunk=chunk, hidden=full))
    lp_ref = ref[0] if full else ref
    kl_tok = sg(full_kl(old[3], output_matrix_DxV(cfg, state.params["policy"]), ref[1],
                        output_matrix_DxV(cfg, frozen["reference"]), chunk_size=chunk)) if full else None
    tok_r = None
    if tokens:
      d_p = sg(heads.token_positive_prob(disc_cfg, frozen["discriminator"], batch["prompt"], batch["prompt_mask"],
                                         batch["completion"], mask))
      tok_r = rw.token_rewards(d_p, mask, tlcr)
    kl_coef = state.extra["kl_coef"]
    score = score.astype(lp_old.dtype)
    rewards, kl = adv_lib.ppo_rewards(score, lp_old, lp_ref, mask, kl_coef=kl_coef, estimator=est, kl_BxT=kl_tok,
                                      token_rewards_BxT=tok_r)
    adv, returns = adv_lib.gae(rewards, v_old, mask, gamma=float(p.gamma), lam=float(p.lam))
    adv_w = adv_lib.masked_whiten(adv, mask, shift_mean=True, unbiased=bool(p.whiten_unbiased))
    data = {k: batch[k] for k in ("prompt", "prompt_mask", "completion", "completion_mask")}
    data.update(logp_old=lp_old, v_old=v_old, adv=adv_w, returns=returns)
    bsz = mask.shape[0]
    # DR-PO: the policy gradient leaves out each row's teacher-forced reset prefix (the KL and value keep it)
    data["pg_mask"] = reset_pg_mask(mask, batch["reset_len"]) if "reset_len" in batch else mask
    perm_key = lambda e: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _PERM_STREAM),
                                            state.step * epochs + e)
    params, opt_state, bad, ms = minibatch_steps(loss_fn, optimizer, state.params, state.opt_state, data,
                                                 perm_key=perm_key, epochs=epochs, minibatches=n_mb)
    metrics = jax.tree.map(jnp.mean, ms)
    seq_kl = jnp.sum(kl, axis=-1)
    mean_kl = jnp.mean(seq_kl)
    new_coef = adv_lib.update_kl_coef(kl_coef, mean_kl, bsz, adaptive=bool(p.adaptive_kl),
                                      target=float(p.kl_target), horizon=float(p.kl_horizon))
    metrics.update(
        kl=mean_kl, kl_coef=kl_coef, score=jnp.mean(score),
        non_score_reward=jnp.mean(jnp.sum(-kl_coef * kl, axis=-1)),
        rlhf_reward=jnp.mean(score - kl_coef * seq_kl),
        clipfrac=metrics["policy_clipfrac"], advantage=adv_lib.masked_mean(adv, mask),
        returns=adv_lib.masked_mean(returns, mask), value=adv_lib.masked_mean(v_old, mask),
        length=jnp.mean(jnp.sum(mask, axis=-1).astype(jnp.float32)),
        finished=jnp.mean(batch["finished"].astype(jnp.float32)), nonfinite=bad.astype(jnp.int32))
    if r_xK.shape[-1] > 1:
      metrics.update({f"reward_{k}": jnp.mean(r_xK[:, k]) for k in range(r_xK.shape[-1])})
    if tokens:  # the discriminator's view of the rollout
      metrics.update(token_reward=adv_lib.masked_mean(tok_r, mask), disc_prob=adv_lib.masked_mean(d_p, mask),
                     token_reward_sum=jnp.mean(jnp.sum(tok_r, axis=-1)))
    metrics.update({k: jnp.mean(v) for k, v in batch.items() if k.startswith("gt_") or k == "both_good"})
    if "reset_len" in batch:  # DR-PO: how many rollouts started from a reference prefix, and its length
      metrics.update(reset_frac=jnp.mean((batch["reset_len"] > 0).astype(jnp.float32)),
                     reset_tokens=jnp.mean(batch["reset_len"].astype(jnp.float32)),
                     policy_tokens=jnp.mean(jnp.sum(data["pg_mask"], -1).astype(jnp.float32)))
    extra = {**state.extra, "kl_coef": new_coef.astype(jnp.asarray(kl_coef).dtype)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra), metrics

  return update


def _optimizer_train_cfg(config, k: int | None = None):
  """`config.train` with steps and warm-up in optimiser steps: iterations × `k` (default PPO's epochs ×
  minibatches; the policy-gradient trainers pass theirs)."""
  t = copy.deepcopy(config.train)
  k = int(config.ppo.epochs) * int(config.ppo.minibatches) if k is None else int(k)
  with t.unlocked():
    t.steps, t.warmup_steps = int(t.steps) * k, int(t.warmup_steps) * k
  return t


def optimizer_for(config):
  """The optimiser whose schedule counts optimiser steps: iterations × epochs × minibatches."""
  return make_optimizer(_optimizer_train_cfg(config))


def initial_extra(config, dtype=np.float32) -> dict:
  return {"kl_coef": np.asarray(float(config.ppo.kl_coef), dtype)}


def _auto_discriminator(config, workdir: str, init_from: str) -> str:
  """Trains (or resumes, or reuses) the TLCR token discriminator in WORKDIR/discriminator."""
  c, t = copy.deepcopy(config), config.tlcr
  with c.unlocked():
    c.trainer, c.init_from = "token_discriminator", init_from
    c.data.num_examples = int(t.disc_num_examples)
    c.train.steps, c.train.batch_size = int(t.disc_steps), int(t.disc_batch_size)
    c.train.learning_rate, c.train.warmup_steps = float(t.disc_learning_rate), 10
    c.train.checkpoint_every = c.eval.every = int(t.disc_steps)
  d = os.path.join(workdir, "discriminator")
  train_discriminator(c, d)
  return d


# ---- rollouts ----

def _auto_reward_models(config, workdir: str, init_from: str) -> list[str]:
  """Trains (or resumes, or reuses) WORKDIR/rm_<property> for each of `ppo.auto_rewards`."""
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


def reset_references(config, tok):
  """DR-PO's offline reference responses (algorithms.md §8.11): `draw(rng, pool_idx) -> (ids [n, C], lengths
  [n])`, one reference per rollout row, drawn for its prompt. Built-in task: a fresh demonstration of the SFT
  distribution (`builtin.sample_completion`, what the SFT reference was trained on); otherwise the completions
  of `ppo.reset_path` (SFT JSONL `{"prompt", "completion"}`) or, without it, the chosen responses of the
  preference data, for the same prompt (a prompt without one never resets: length 0)."""
  from jaxalign.data import builtin, sources
  c_len = int(config.data.completion_len)
  pool = pipeline.prompt_pool(config.data, int(config.seed))
  if config.data.source == "builtin" and not config.ppo.reset_path:
    def draw(rng, idx):
      texts = [builtin.sample_completion(pool[i], rng) for i in idx]
      ids, mask = pipeline.encode_completions(tok, texts, c_len)
      return ids, mask.sum(-1)
    return draw
  path = config.ppo.reset_path
  rows = (sources.read_sft_jsonl(path) if path else
          [dict(prompt=r["prompt"], completion=r["chosen"])
           for r in pipeline.preference_split(config.data, int(config.seed))[0]])
  by_prompt: dict[str, list[str]] = {}
  for r in rows:
    by_prompt.setdefault(r["prompt"], []).append(r["completion"])
  refs = []  # per pool prompt: encoded references [k, C] and their lengths
  for q in pool:
    texts = by_prompt.get(q, [])
    ids, mask = pipeline.encode_completions(tok, texts, c_len) if texts else (np.zeros((0, c_len), np.int32),
                                                                                np.zeros((0, c_len), np.int32))
    refs.append((ids, mask.sum(-1)))
  if not any(len(r[1]) for r in refs):
    raise UserError(f"config ppo.reset_path: no reference response for any training prompt "
                    f"({path or 'the chosen responses of data.path'})")

  def draw(rng, idx):
    out, lens = np.full((len(idx), c_len), tok.pad_id, np.int32), np.zeros(len(idx), np.int64)
    for j, i in enumerate(idx):
      ids, n = refs[i]
      if len(n):
        k = int(rng.integers(len(n)))
        out[j], lens[j] = ids[k], n[k]
    return out, lens
  return draw


def make_rollout(config, tok, cfg, mesh, r_ref, *, group: int = 1, params_of=lambda params: params["policy"]):
  """`batches(state, step)` for the loop: prompts, `group` samples each, and what the update scores them with.

  A function of (seed, step). Rows are `train.batch_size` prompts × `group` consecutive samples of each.
  `r_ref` `[N, K]` (per pool prompt) enters the batch for LSC; with the built-in task, each process decodes
  its own rows for the ground truth (and, with `ppo.reward_source=ground_truth`, the rewards themselves).
  With `ppo.reset_prob` > 0 (DR-PO) a row starts, with that probability, from a prefix of an offline reference
  response (`reset_references`), teacher-forced by the sampler; its length `reset_len` enters the batch.
  `params_of(state.params)` is the policy that samples.
  """
  p, seed, bsz = config.ppo, int(config.seed), int(config.train.batch_size)
  pool = pipeline.prompt_pool(config.data, seed)
  pool_ids, pool_mask = pipeline.encode_prompts(tok, pool, int(config.data.prompt_len),
                                                config.data.prompt_truncation)
  kw = dict(cfg=cfg, max_new_tokens=int(p.max_new_tokens) or int(config.data.completion_len), eos_id=tok.eos_id,
            pad_id=tok.pad_id, temperature=float(p.temperature), top_k=int(p.top_k), top_p=float(p.top_p))
  dtype = setup.dtype(config)
  props = _split(p.properties)
  host_judge = config.data.source == "builtin"
  reset_prob = float(p.get("reset_prob", 0.0))
  draw_refs = reset_references(config, tok) if reset_prob > 0 else None

  def batches(state, step: int):
    rng = np.random.default_rng([seed, _PROMPT_STREAM, step])
    idx = np.repeat(rng.integers(0, len(pool), size=bsz), group)
    host = dict(prompt=pool_ids[idx], prompt_mask=pool_mask[idx], prompt_text=np.array(pool, object)[idx])
    if r_ref is not None:
      host["r_ref"] = r_ref[idx].astype(dtype)
    if draw_refs is not None:  # DR-PO: the reference and the reset point of every row (the global batch)
      rrng = np.random.default_rng([seed, _RESET_STREAM, step])
      host["reset_ids"], ref_len = draw_refs(rrng, idx)
      h = losses.draw_resets(rrng, ref_len, reset_prob)
      host["reset_len"] = np.minimum(h, kw["max_new_tokens"] - 1).astype(np.int32)  # ≥ 1 token of the policy's
    host = pipeline.process_slice(host)
    prompts = host.pop("prompt_text").tolist()
    batch = shd.shard_batch(host, mesh)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _ROLLOUT_STREAM), step)
    forced = {}
    if draw_refs is not None:
      forced = dict(forced_BxT=batch.pop("reset_ids"), forced_len_B=batch["reset_len"])
    tokens, cmask, fin = sampling.sample(params_of(state.params), batch["prompt"], batch["prompt_mask"], key,
                                         **kw, **forced)
    batch.update(shd.to_batch_sharding(dict(completion=tokens.astype(jnp.int32),
                                            completion_mask=cmask.astype(jnp.int32), finished=fin), mesh))
    if host_judge:
      rows = [judges.local_rows(batch[k]) for k in ("completion", "completion_mask", "finished")]
      texts = judges.decode(tok, *rows)
      per_row = judges.ground_truth_metrics(prompts, texts, rows[2])
      if p.reward_source == "ground_truth":
        per_row["rewards"] = judges.ground_truth_rewards(prompts, texts, rows[2], props)
      batch.update(shd.shard_batch({k: v.astype(dtype) for k, v in per_row.items()}, mesh))
    return batch, {}
  return batches


# ---- the trainer ----

def _reference_rewards(config, workdir: str, tok, cfg, mesh, ref_params, models):
  """LSC's per-prompt `r_ref` `[N, K]` over the prompt pool (cached), and its cache key; None without it."""
  p = config.ppo
  if p.aggregation not in ("lsc", "centered_sum"):
    return None, None
  ids, mask = pipeline.encode_prompts(tok, pipeline.prompt_pool(config.data, int(config.seed)), int(config.data.prompt_len),
                                      config.data.prompt_truncation)
  return rw.lsc_reference(
      cfg, ref_params, [(m.cfg, m.params) for m in models], ids, mask, mesh=mesh,
      cache_dir=os.path.join(workdir, "lsc_cache"), eos_id=tok.eos_id, pad_id=tok.pad_id,
      max_new_tokens=int(p.max_new_tokens) or int(config.data.completion_len),
      n_samples=int(config.reward.ref_samples), seed=int(config.seed), statistic=config.reward.ref_statistic,
      q=float(config.reward.ref_quantile), temperature=float(p.temperature), top_k=int(p.top_k),
      top_p=float(p.top_p), batch_size=int(config.train.batch_size))


def train(config, workdir: str):
  p = config.ppo
  run = prologue.begin(config, workdir)
  mesh, tok, cfg, ref_params = run.mesh, run.tok, run.cfg, run.reference
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if (int(config.train.batch_size) // int(p.minibatches)) % shards:
    raise UserError(f"config ppo.minibatches: minibatch {int(config.train.batch_size) // int(p.minibatches)} "
                    f"is not divisible by data*fsdp={shards} devices")

  models, disc = [], None
  if uses_reward_models(config):
    paths = _split(p.reward_paths) or _auto_reward_models(config, workdir, run.init_from)
    if not paths:
      raise UserError("config ppo.reward_paths: no reward models (set ppo.reward_paths or ppo.auto_rewards)")
    models = judges.reward_models(paths, mesh)
  if p.reward_source == "token_discriminator":
    disc = load_discriminator(config.tlcr.discriminator_path or _auto_discriminator(config, workdir, run.init_from),
                              mesh)
    if disc.cfg.vocab_size != cfg.vocab_size:
      raise UserError(f"config tlcr.discriminator_path: its vocabulary ({disc.cfg.vocab_size}) is not the "
                      f"policy's ({cfg.vocab_size})")
  r_ref, ref_key = _reference_rewards(config, workdir, tok, cfg, mesh, ref_params, models)

  rng = jax.random.fold_in(jax.random.key(int(config.seed)), 3)
  std = float(p.value_head_std)
  if p.value == "head":
    value, vcfg = {"head": heads.init_head(cfg, rng, mesh, std=None if std < 0 else std)}, cfg
  elif p.value == "discriminator":  # the critic starts from the discriminator's trunk, with a new scalar head
    value = {"trunk": jax.tree.map(jnp.copy, disc.params["trunk"]),
             "head": heads.init_head(disc.cfg, rng, mesh, std=None if std < 0 else std)}
    vcfg = disc.cfg
  else:
    vm = judges.reward_models([p.value_init_path], mesh, key="ppo.value_init_path")[0] if p.value_init_path \
        else models[0]
    value, vcfg = jax.tree.map(jnp.copy, vm.params), vm.cfg
  params = {"policy": run.policy, "value": value}

  optimizer = optimizer_for(config)
  state = create_state(params, optimizer, mesh, jax.device_put(initial_extra(config, setup.dtype(config)),
                                                               shd.replicated(mesh)))
  update = make_update(p, cfg, vcfg, optimizer, seed=int(config.seed), chunk=int(config.train.logprob_chunk),
                       reward_cfgs=tuple(m.cfg for m in models), weights=[float(w) for w in _split(p.weights)] or None,
                       disc_cfg=disc and disc.cfg, tlcr=config.tlcr)
  frozen = {"reference": ref_params, "reward_models": tuple(m.params for m in models)}
  if disc is not None:
    frozen["discriminator"] = disc.params
  evaluate = builtin_evaluate(config, tok, cfg, ref_params) or sample_evaluate(config, tok, cfg, ref_params, mesh)
  k = int(p.epochs) * int(p.minibatches)
  lr_sched = schedule(_optimizer_train_cfg(config))
  n = count_params(run.policy, cfg)["flops_params"]
  # Forward-only passes over each rollout token: sampling, old policy, reference, each reward model
  # (counted at the policy's size), a separate value model; fwd + bwd: epochs of the policy (and value).
  forwards = 3 + len(models) + (disc is not None) + (p.value != "head")
  trained = int(p.epochs) * (1 + (p.value != "head"))

  def tokens_fn(b):
    t = b["prompt_mask"].sum() + b["completion_mask"].sum()
    return t, trained * t, forwards * t

  state, _ = loop.run(config, workdir, mesh=mesh, state=state, step_fn=update,
                      batches=make_rollout(config, tok, cfg, mesh, r_ref), frozen=frozen,
                      evaluate=None if evaluate is None else lambda params, step: evaluate(params["policy"], step),
                      tokens_fn=tokens_fn, flops_params=n, meta={"lsc_ref_key": ref_key} if ref_key else {},
                      desc="ppo", learning_rate=lambda i: lr_sched(i * k + k - 1), time_split=True)
  return state.params
