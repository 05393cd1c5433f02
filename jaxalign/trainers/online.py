"""Online preference optimisation: online IPO, IPO-MD and Nash-MD-PG (algorithms.md §4).

Each step: draw `train.batch_size` training prompts, sample two completions per prompt,
annotate the pair with P(a ≻ b), then run one compiled update through the shared loop
(`loop.run_loss`), so resume, metrics, evaluation and checkpoints are every trainer's.

  ipo_md   a, b ~ π_mix^β (β = online.mixture_coef; β = 0 is online IPO: both from π_θ),
           loss (ρ(a) − ρ(b) − (P − ½)/τ)², or the hard label I ~ Bernoulli(P) (online.target);
           `online.loss=dpo`: online DPO, −P·log σ(β_D·h) − (1 − P)·log σ(−β_D·h) (β_D = online.beta)
  BPO      `online.reference=behavior` (algorithms.md §8.12): the pairs are sampled by the behaviour
           model π_β and the loss's reference IS π_β, which is refreshed from the policy every
           `online.behavior_update_every` steps (a copy, or an EMA with `online.behavior_ema`); π_β lives
           in `TrainState.extra` (checkpointed). Every 1: on-policy DAP anchored at the last policy.
  nash_md  a ~ π_θ (the learner), b ~ π_mix^β (the opponent); the Nash-MD-PG surrogate on a only,
           with the per-token (TRL) or sequence (reward-to-go) KL estimator

Annotators (`online.annotator`): `ground_truth` (built-in task: decode, score with the task's
reward r, P = σ((r(a) − r(b)) / reward.label_temperature); on the host, each process its own
rows), `reward_model` (P = σ(r_φ(a) − r_φ(b))) or `preference_model` (symmetrised P_φ(a ≻ b)),
the last two loaded from `online.annotator_path` and evaluated INSIDE the compiled step: their
params are the frozen tree `annotator` of the loop, and the hard label compares P with a uniform
draw carried in the batch. Rollouts stay global arrays sharded over the batch, so several hosts
each sample their own prompts. Rollout keys, prompt choice and hard labels are functions of
(seed, step): a killed run that resumes from its checkpoint draws exactly the batches the
uninterrupted run drew.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import judges, losses, sampling
from jaxalign import sharding as shd
from jaxalign.config import check_choices
from jaxalign.data import builtin, pipeline
from jaxalign.errors import UserError
from jaxalign.data_eval import sample_evaluate
from jaxalign.evaluation import builtin_evaluate
from jaxalign.logprobs import sequence_logps
from jaxalign.models.transformer import count_params
from jaxalign.scoring import completion_token_logps
from jaxalign.trainers import loop, prologue, setup

_ROLLOUT_STREAM = 2**29  # fold_in stream of rollout keys (the evaluator uses 2**30, 2**30 + 1)
CHOICES = {"online.method": ("ipo_md", "nash_md"), "online.target": ("soft", "hard"),
           "online.loss": ("ipo", "dpo"), "online.reference": ("fixed", "behavior"),
           "online.kl_estimator": ("token", "sequence"),
           "online.annotator": ("ground_truth", "reward_model", "preference_model")}


def check(config) -> None:
  check_choices(config, CHOICES)
  o = config.online
  if not 0.0 <= float(o.mixture_coef) <= 1.0:
    raise UserError(f"config online.mixture_coef: must be in [0, 1], got {o.mixture_coef}")
  if float(o.tau) <= 0:
    raise UserError(f"config online.tau: must be > 0, got {o.tau}")
  if o.annotator == "ground_truth" and config.data.source != "builtin":
    raise UserError("config online.annotator: ground_truth needs data.source=builtin "
                    "(use reward_model or preference_model with online.annotator_path)")
  if o.annotator != "ground_truth" and not o.annotator_path:
    raise UserError(f"config online.annotator_path: required for online.annotator={o.annotator!r}")
  if o.reference == "behavior" and (o.method != "ipo_md" or float(o.mixture_coef) != 0.0):
    raise UserError("config online.reference: behavior (BPO) samples from the behaviour model itself: it needs "
                    "online.method=ipo_md and online.mixture_coef=0")
  if int(o.behavior_update_every) < 1:
    raise UserError(f"config online.behavior_update_every: must be >= 1, got {o.behavior_update_every}")
  if not 0.0 <= float(o.behavior_ema) < 1.0:
    raise UserError(f"config online.behavior_ema: must be in [0, 1), got {o.behavior_ema}")
  if o.loss == "dpo" and o.method != "ipo_md":
    raise UserError("config online.loss: dpo applies to online.method=ipo_md (pairs), not nash_md")
  if int(o.max_new_tokens) > int(config.data.completion_len):
    raise UserError(f"config online.max_new_tokens: {o.max_new_tokens} exceeds data.completion_len="
                    f"{config.data.completion_len}")


def ground_truth_annotation(config, tok, prompts, a, b) -> dict[str, np.ndarray]:
  """This process's rows: P(a ≻ b) from the built-in reward, and both rewards (host, float64)."""
  temp = float(config.reward.label_temperature)
  rows = [judges.local_rows(x) for x in (*a, *b)]
  ra = builtin.rewards(prompts, judges.decode(tok, *rows[:3]), rows[2].tolist())
  rb = builtin.rewards(prompts, judges.decode(tok, *rows[3:]), rows[5].tolist())
  return {"pref": 1.0 / (1.0 + np.exp(-(ra - rb) / temp)), "gt_reward_a": ra, "gt_reward_b": rb}


def make_rollout(config, tok, cfg, mesh, ref_params):
  """`batches(state, step)` for the loop: prompts, two samples each, and (ground truth) P."""
  o, seed, bsz = config.online, int(config.seed), int(config.train.batch_size)
  pool = pipeline.prompt_pool(config.data, seed)
  pool_ids, pool_mask = pipeline.encode_prompts(tok, pool, int(config.data.prompt_len),
                                                config.data.prompt_truncation)
  c_len = int(config.data.completion_len)
  beta = float(o.mixture_coef)
  kw = dict(cfg=cfg, max_new_tokens=int(o.max_new_tokens) or c_len, eos_id=tok.eos_id, pad_id=tok.pad_id,
            temperature=float(o.temperature), top_k=int(o.top_k), top_p=float(o.top_p))
  dtype = setup.dtype(config)

  def mixture(params, ids, mask, key):
    """β = 0 / 1 are exactly policy / reference sampling: skip the other model entirely."""
    if beta == 0.0:
      return sampling.sample(params, ids, mask, key, **kw)
    if beta == 1.0:
      return sampling.sample(ref_params, ids, mask, key, **kw)
    return sampling.mixture_sample(params, ref_params, ids, mask, key, beta=beta, **kw)

  pad = lambda x: jnp.pad(x.astype(jnp.int32), ((0, 0), (0, c_len - x.shape[1])))  # to the fixed completion_len

  behavior = o.reference == "behavior"

  def batches(state, step: int):
    params = state.extra["behavior"] if behavior else state.params  # BPO: the behaviour model collects the pairs
    rng = np.random.default_rng([seed, 11, step])
    idx = rng.integers(0, len(pool), size=bsz)
    label_u = rng.random(bsz)  # hard label I = [u < P]: 1 when a wins, I ~ Bernoulli(P)
    host = pipeline.process_slice(dict(prompt=pool_ids[idx], prompt_mask=pool_mask[idx],
                                       label_u=label_u.astype(dtype), prompt_text=np.array(pool, object)[idx]))
    prompts = host.pop("prompt_text").tolist()
    batch = shd.shard_batch(host, mesh)
    ids, mask = batch["prompt"], batch["prompt_mask"]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _ROLLOUT_STREAM), step)
    if o.method == "ipo_md":  # both samples from the mixture, in one call
      t, m, f = mixture(params, jnp.concatenate([ids, ids]), jnp.concatenate([mask, mask]), key)
      a, b = (t[:bsz], m[:bsz], f[:bsz]), (t[bsz:], m[bsz:], f[bsz:])
    else:  # nash_md: the learner from π_θ, the opponent from the mixture
      ka, kb = jax.random.split(key)
      a = sampling.sample(params, ids, mask, ka, **kw)
      b = mixture(params, ids, mask, kb)
    rollout = shd.to_batch_sharding(dict(a=pad(a[0]), a_mask=pad(a[1]), a_finished=a[2], b=pad(b[0]),
                                         b_mask=pad(b[1]), b_finished=b[2]), mesh)
    a_fin, b_fin = rollout.pop("a_finished"), rollout.pop("b_finished")
    batch.update(rollout)
    if o.annotator == "ground_truth":
      gt = ground_truth_annotation(config, tok, prompts, (batch["a"], batch["a_mask"], a_fin),
                                   (batch["b"], batch["b_mask"], b_fin))
      batch.update(shd.shard_batch({k: v.astype(dtype) for k, v in gt.items()}, mesh))
    return batch, {}
  return batches


def online_loss(config, cfg, chunk: int, annotator=None):
  """Per-microbatch loss (`make_step` contract); reference log-probs and (with `annotator`, a
  `ScalarModel`) P(a ≻ b) are computed in the step, without gradient. `frozen` holds
  `reference` and, with an annotator, its params under `annotator`."""
  o = config.online
  tau, kl_coef = float(o.tau), float(o.kl_coef)
  sg = jax.lax.stop_gradient

  def logps(params, prompt, prompt_mask, comp, mask):
    return completion_token_logps(cfg, params, prompt, prompt_mask, comp, mask, chunk_size=chunk)

  behavior = o.reference == "behavior"

  def loss_fn(params, mb, frozen, *extra):
    ref_params = extra[0]["behavior"] if behavior else frozen["reference"]
    if annotator is None:  # the host's ground truth, carried in the batch
      p = mb["pref"]
      metrics = {k: jnp.mean(mb[k]) for k in ("gt_reward_a", "gt_reward_b") if k in mb}
    else:
      p, diag = sg(judges.preference(annotator, frozen["annotator"], mb["prompt"], mb["prompt_mask"], mb["a"],
                                     mb["a_mask"], mb["b"], mb["b_mask"]))
      p = p.astype(mb["label_u"].dtype)
      metrics = {k: jnp.mean(v) for k, v in diag.items()}
    label = (mb["label_u"] < p).astype(p.dtype) if o.target == "hard" else None
    metrics["pref_prob"] = jnp.mean(p)
    if o.method == "ipo_md":
      cat = lambda u, v: jnp.concatenate([u, v], axis=0)
      args = (cat(mb["prompt"], mb["prompt"]), cat(mb["prompt_mask"], mb["prompt_mask"]),
              cat(mb["a"], mb["b"]), cat(mb["a_mask"], mb["b_mask"]))
      mask = args[3]
      pol = sequence_logps(logps(params, *args), mask)
      ref = sg(sequence_logps(logps(ref_params, *args), mask))
      (pa, pb), (ra, rb) = jnp.split(pol, 2), jnp.split(ref, 2)
      if o.loss == "dpo":
        per = losses.online_dpo(pa, pb, ra, rb, p, beta=float(o.beta), label=label)
      else:
        per = losses.online_ipo(pa, pb, ra, rb, p, tau=tau, length_normalize=bool(o.length_normalize),
                                lengths_a=mb["a_mask"].sum(-1), lengths_b=mb["b_mask"].sum(-1), label=label)
      metrics.update(margin=jnp.mean((pa - ra) - (pb - rb)), log_ratio=jnp.mean(pol - ref))
      if o.loss == "ipo":
        metrics["target"] = jnp.mean(losses.ipo_target(p, tau=tau, label=label))
    else:
      args = (mb["prompt"], mb["prompt_mask"], mb["a"], mb["a_mask"])
      lp = logps(params, *args)
      lr = sg(logps(ref_params, *args))
      per = losses.nash_md_pg(lp, lr, mb["a_mask"], p, kl_coef=kl_coef, kl_estimator=o.kl_estimator)
      metrics["kl"] = jnp.mean(losses.sequence_kl(sg(lp), lr, mb["a_mask"]))
    out = (jnp.asarray(per.shape[0], per.dtype), metrics)
    return jnp.sum(per), (out + extra if behavior else out)
  return loss_fn


def behavior_refresh(config):
  """`post_update(state) -> state` of BPO: after the optimiser step that makes `state.step` a multiple of
  `online.behavior_update_every`, π_β ← π_θ (or ← ema·π_β + (1 − ema)·π_θ)."""
  o = config.online
  every, ema = int(o.behavior_update_every), float(o.behavior_ema)

  def refresh(state):
    due = state.step % every == 0
    new = jax.tree.map(lambda b, p: jnp.where(due, (ema * b.astype(jnp.float32) + (1 - ema) * p.astype(jnp.float32))
                                              .astype(b.dtype), b), state.extra["behavior"], state.params)
    return state.replace(extra={**state.extra, "behavior": new})
  return refresh


def train(config, workdir: str):
  run = prologue.begin(config, workdir)
  mesh, tok, cfg, ref_params = run.mesh, run.tok, run.cfg, run.reference
  o = config.online
  frozen, annotator = {"reference": ref_params}, None
  if o.annotator != "ground_truth":
    annotator = judges.reward_models([o.annotator_path], mesh, kind=o.annotator, key="online.annotator_path")[0]
    frozen["annotator"] = annotator.params
  two = o.method == "ipo_md"  # both samples scored (policy and reference) or only the learner's

  def tokens_fn(b):
    prompt = b["prompt_mask"].sum()
    scored = prompt + b["a_mask"].sum() + ((prompt + b["b_mask"].sum()) if two else 0)
    return scored, scored, scored

  behavior = o.reference == "behavior"
  state, _ = loop.run_loss(config, workdir, mesh=mesh, params=run.policy,
                           extra={"behavior": jax.tree.map(jnp.copy, run.policy)} if behavior else None,
                           post_update=behavior_refresh(config) if behavior else None,
                           loss_fn=online_loss(config, cfg, int(config.train.logprob_chunk), annotator),
                           frozen=frozen, batches=make_rollout(config, tok, cfg, mesh, ref_params),
                           evaluate=(builtin_evaluate(config, tok, cfg, ref_params)
                                     or sample_evaluate(config, tok, cfg, ref_params, mesh)), tokens_fn=tokens_fn,
                           flops_params=count_params(run.policy, cfg)["flops_params"],
                           desc=f"online {o.method}", time_split=True)
  return state.params
