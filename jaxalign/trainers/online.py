"""Online preference optimisation: online IPO, IPO-MD and Nash-MD-PG (algorithms.md §4).

Each step: draw `train.batch_size` training prompts, sample two completions per prompt,
annotate the pair with P(a ≻ b), then run one compiled update. The loop is the shared one
(`loop.run(make_batch=...)`), so resume, metrics, evaluation and checkpoints are the
offline trainers'. Sampling and annotation are separate compiled functions; the update is one.

  ipo_md   a, b ~ π_mix^β (β = online.mixture_coef; β = 0 is online IPO: both from π_θ),
           loss (ρ(a) − ρ(b) − (P − ½)/τ)², or the hard label I ~ Bernoulli(P) (online.target)
  nash_md  a ~ π_θ (the learner), b ~ π_mix^β (the opponent); the Nash-MD-PG surrogate on a only,
           with the per-token (TRL) or sequence (reward-to-go) KL estimator

Annotators (`online.annotator`): `ground_truth` (built-in task: decode, score with the task's
reward r, P = σ((r(a) − r(b)) / reward.label_temperature)), `reward_model` (P = σ(r_φ(a) − r_φ(b)))
or `preference_model` (symmetrised P_φ(a ≻ b)), the last two loaded from `online.annotator_path`.
Rollout keys, prompt choice and hard labels are functions of (seed, step): a killed run that
resumes from its checkpoint draws exactly the batches the uninterrupted run drew.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import losses, sampling
from jaxalign.data import builtin, pipeline
from jaxalign.errors import UserError
from jaxalign.evaluation import builtin_evaluate
from jaxalign.logprobs import sequence_logps
from jaxalign.mixture import mixture_sample
from jaxalign.models import heads
from jaxalign.models.transformer import count_params
from jaxalign.trainers import loop, setup
from jaxalign.trainers.offline import _auto_sft, _dtype
from jaxalign.trainers.state import completion_token_logps

_ROLLOUT_STREAM = 2**29  # fold_in stream of rollout keys (the evaluator uses 2**30, 2**30 + 1)


def check(config) -> None:
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
  if int(o.max_new_tokens) > int(config.data.completion_len):
    raise UserError(f"config online.max_new_tokens: {o.max_new_tokens} exceeds data.completion_len="
                    f"{config.data.completion_len}")


def prompt_pool(config) -> list[str]:
  if config.data.source == "builtin":
    return list(builtin.TRAIN_PROMPTS)
  return list(dict.fromkeys(r["prompt"] for r in pipeline.preference_examples(config.data, int(config.seed))))


def decode(tok, tokens, mask, finished) -> list[str]:
  """Completion texts (EOS dropped) of sampled rows."""
  out = []
  for t, m, f in zip(np.asarray(tokens), np.asarray(mask), np.asarray(finished)):
    ids = t[m.astype(bool)]
    out.append(tok.decode(ids[:-1] if f else ids))
  return out


def make_annotator(config, tok, mesh):
  """`annotate(prompts, prompt_ids, prompt_mask, a, b) -> (P(a ≻ b) [B], host metrics {name: [B]})`,
  `a`, `b` = `(tokens, mask, finished)` as the samplers return them."""
  o = config.online
  if o.annotator == "ground_truth":
    temp = float(config.reward.label_temperature)

    def annotate(prompts, ids, mask, a, b):
      ra = builtin.rewards(prompts, decode(tok, *a), np.asarray(a[2]).tolist())
      rb = builtin.rewards(prompts, decode(tok, *b), np.asarray(b[2]).tolist())
      return 1.0 / (1.0 + np.exp(-(ra - rb) / temp)), {"gt_reward_a": ra, "gt_reward_b": rb}
    return annotate

  from jaxalign.trainers.reward import load_reward_model
  m = load_reward_model(o.annotator_path, mesh)
  if m.kind != o.annotator:
    raise UserError(f"config online.annotator_path: {o.annotator_path} holds a {m.kind}, "
                    f"not a {o.annotator}")
  if m.kind == "reward_model":
    @jax.jit
    def prob(params, ids, mask, at, am, bt, bm):
      cat = lambda u, v: jnp.concatenate([u, v], axis=0)
      r = heads.sequence_score(m.cfg, params, cat(ids, ids), cat(mask, mask), cat(at, bt), cat(am, bm))
      ra, rb = jnp.split(r, 2)
      return heads.bt_preference_prob(ra, rb), ra, rb
  else:
    @jax.jit
    def prob(params, ids, mask, at, am, bt, bm):
      p = heads.preference_prob(m.cfg, params, ids, mask, at, am, bt, bm, sep_id=m.sep_id, readout=m.readout)
      return p, p, p

  def annotate(prompts, ids, mask, a, b):
    p, ra, rb = jax.device_get(prob(m.params, ids, mask, a[0], a[1], b[0], b[1]))
    extra = {"rm_reward_a": ra, "rm_reward_b": rb} if m.kind == "reward_model" else {}
    return np.asarray(p, np.float64), extra
  return annotate


def make_rollout(config, tok, cfg, ref_params, annotate):
  """`make_batch(params, step) -> host batch` for `loop.run`: prompts, two samples, P and a label."""
  o, seed, bsz = config.online, int(config.seed), int(config.train.batch_size)
  pool = prompt_pool(config)
  pool_ids, pool_mask = pipeline.encode_prompts(tok, pool, int(config.data.prompt_len),
                                                config.data.prompt_truncation)
  c_len = int(config.data.completion_len)
  beta = float(o.mixture_coef)
  kw = dict(cfg=cfg, max_new_tokens=int(o.max_new_tokens) or c_len, eos_id=tok.eos_id, pad_id=tok.pad_id,
            temperature=float(o.temperature), top_k=int(o.top_k), top_p=float(o.top_p))
  dtype = _dtype(config)

  def mixture(params, ids, mask, key):
    """β = 0 / 1 are exactly policy / reference sampling: skip the other model entirely."""
    if beta == 0.0:
      return sampling.sample(params, ids, mask, key, **kw)
    if beta == 1.0:
      return sampling.sample(ref_params, ids, mask, key, **kw)
    return mixture_sample(params, ref_params, ids, mask, key, beta=beta, **kw)

  def pad(x):  # completions to the fixed completion_len
    return np.pad(np.asarray(x), ((0, 0), (0, c_len - x.shape[1])), constant_values=0)

  def make_batch(params, step: int) -> dict:
    rng = np.random.default_rng([seed, 11, step])
    idx = rng.integers(0, len(pool), size=bsz)
    prompts, ids, mask = [pool[i] for i in idx], pool_ids[idx], pool_mask[idx]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _ROLLOUT_STREAM), step)
    if o.method == "ipo_md":  # both samples from the mixture, in one call
      t, m, f = jax.device_get(mixture(params, np.concatenate([ids, ids]), np.concatenate([mask, mask]), key))
      a, b = (t[:bsz], m[:bsz], f[:bsz]), (t[bsz:], m[bsz:], f[bsz:])
    else:  # nash_md: the learner from π_θ, the opponent from the mixture
      ka, kb = jax.random.split(key)
      a = jax.device_get(sampling.sample(params, ids, mask, ka, **kw))
      b = jax.device_get(mixture(params, ids, mask, kb))
    a = (pad(a[0]).astype(np.int32), pad(a[1]).astype(np.int32), a[2])
    b = (pad(b[0]).astype(np.int32), pad(b[1]).astype(np.int32), b[2])
    p, extra = annotate(prompts, ids, mask, a, b)
    label = rng.random(bsz) < p  # hard label I ~ Bernoulli(P): 1 when a wins
    batch = dict(prompt=ids, prompt_mask=mask, a=a[0], a_mask=a[1], b=b[0], b_mask=b[1],
                 pref=p.astype(dtype), label=label.astype(dtype))
    batch.update({k: np.asarray(v, dtype) for k, v in extra.items()})
    return batch
  return make_batch


def online_loss(config, cfg, chunk: int):
  """Per-microbatch loss (`make_step` contract); reference log-probs in the step, no gradient."""
  o = config.online
  tau, kl_coef = float(o.tau), float(o.kl_coef)

  def logps(params, prompt, prompt_mask, comp, mask):
    return completion_token_logps(cfg, params, prompt, prompt_mask, comp, mask, chunk_size=chunk)

  def loss_fn(params, mb, ref_params):
    p = mb["pref"]
    metrics = {"pref_prob": jnp.mean(p)}
    for k in ("gt_reward_a", "gt_reward_b", "rm_reward_a", "rm_reward_b"):
      if k in mb:
        metrics[k] = jnp.mean(mb[k])
    if o.method == "ipo_md":
      cat = lambda u, v: jnp.concatenate([u, v], axis=0)
      args = (cat(mb["prompt"], mb["prompt"]), cat(mb["prompt_mask"], mb["prompt_mask"]),
              cat(mb["a"], mb["b"]), cat(mb["a_mask"], mb["b_mask"]))
      mask = args[3]
      pol = sequence_logps(logps(params, *args), mask)
      ref = jax.lax.stop_gradient(sequence_logps(logps(ref_params, *args), mask))
      (pa, pb), (ra, rb) = jnp.split(pol, 2), jnp.split(ref, 2)
      per = losses.online_ipo(pa, pb, ra, rb, p, tau=tau, length_normalize=bool(o.length_normalize),
                              lengths_a=mb["a_mask"].sum(-1), lengths_b=mb["b_mask"].sum(-1),
                              label=mb["label"] if o.target == "hard" else None)
      metrics.update(margin=jnp.mean((pa - ra) - (pb - rb)), log_ratio=jnp.mean(pol - ref),
                     target=jnp.mean(losses.ipo_target(p, tau=tau,
                                                       label=mb["label"] if o.target == "hard" else None)))
    else:
      args = (mb["prompt"], mb["prompt_mask"], mb["a"], mb["a_mask"])
      lp = logps(params, *args)
      lr = jax.lax.stop_gradient(logps(ref_params, *args))
      per = losses.nash_md_pg(lp, lr, mb["a_mask"], p, kl_coef=kl_coef, kl_estimator=o.kl_estimator)
      metrics["kl"] = jnp.mean(losses.sequence_kl(jax.lax.stop_gradient(lp), lr, mb["a_mask"]))
    return jnp.sum(per), (jnp.asarray(per.shape[0], per.dtype), metrics)
  return loss_fn


def train(config, workdir: str):
  mesh, tok, cfg = setup.prepare(config, workdir)
  setup.batch_sizes_ok(config, mesh)
  check(config)
  loop.write_config(config, workdir)
  init_from = _auto_sft(config, workdir) if config.init_from == "auto" else config.init_from
  ref_params = setup.initial_params(config, cfg, mesh, init_from)
  params = jax.tree.map(jnp.copy, ref_params)  # separate buffers: the state is donated
  annotate = make_annotator(config, tok, mesh)
  make_batch = make_rollout(config, tok, cfg, ref_params, annotate)
  evaluate = builtin_evaluate(config, tok, cfg, ref_params)
  two = config.online.method == "ipo_md"  # both samples scored (policy and reference) or only the learner's

  def tokens_fn(hb):
    prompt = float(hb["prompt_mask"].sum())
    scored = prompt + float(hb["a_mask"].sum()) + (prompt + float(hb["b_mask"].sum()) if two else 0.0)
    return scored, scored, scored

  state, _ = loop.run(config, workdir, mesh=mesh, params=params, arrays={},
                      loss_fn=online_loss(config, cfg, int(config.train.logprob_chunk)), frozen=ref_params,
                      evaluate=evaluate, tokens_fn=tokens_fn, flops_params=count_params(params, cfg)["flops_params"],
                      desc=f"online {config.online.method}", make_batch=make_batch)
  return state.params
