"""Unpaired binary feedback (thumbs-up / thumbs-down): BCO (with reward shift and UDM) and KTO.

Rows are `(prompt, completion, label)`; the two classes need not share prompts. Every row is
scored once (plus, for KTO, a mismatched `(prompt_i, completion_{i−1})` row in the same forward
pass for the KL reference point). The loss is the mean over all rows of the batch (algorithms.md
§11: TRL's nanmean, classes weighted by their batch counts).

BCO's reward shift δ lives in `TrainState.extra`: a running mean of all implicit rewards seen in
training (TRL's `RunningMoments`, this batch included) or, with `loss.delta_estimator =
"class_balanced"`, the midpoint of the two classes' running means. Under jit the batch is global, so
the statistics are reduced over every device and host; δ is checkpointed with the state and never
touched by evaluation (which does not run the step). With `udm.enabled`, thumbs-down rows carry a
density-ratio weight fitted before training (`jaxalign.udm`); the classifier is saved in the state.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from jaxalign import losses, udm
from jaxalign.data import pipeline
from jaxalign.errors import UserError
from jaxalign.evaluation import builtin_evaluate
from jaxalign.logprobs import sequence_logps
from jaxalign.models.transformer import count_params
from jaxalign.inference import map_rows
from jaxalign.scoring import completion_token_logps
from jaxalign.trainers import loop, prologue, setup

# loss name -> (loss function, its config hyper-parameters, trainer options read from config.loss)
UNPAIRED = {
    "bco": (losses.bco_loss, ("beta",), ("delta_estimator",)),
    "kto": (losses.kto_loss, ("beta", "lambda_d", "lambda_u"), ()),
}
DELTA_ESTIMATORS = ("running_mean", "class_balanced")


def check_loss(loss_cfg) -> tuple[str, dict, dict]:
  """`(name, loss hyper-parameters, trainer options)` from `config.loss`, or a one-line error."""
  name = loss_cfg.name
  if name not in UNPAIRED:
    raise UserError(f"config loss.name: {name!r} is not an unpaired loss; choose from {sorted(UNPAIRED)} "
                    "(pairwise losses use trainer='offline')")
  _, hp_keys, opt_keys = UNPAIRED[name]
  items = {k: v for k, v in loss_cfg.items() if k != "name"}
  unknown = sorted(set(items) - set(hp_keys) - set(opt_keys))
  if unknown:
    raise UserError(f"config loss.{unknown[0]}: not an option of loss {name!r} "
                    f"(accepted: {sorted(hp_keys + opt_keys)})")
  opts = {k: items[k] for k in opt_keys if k in items}
  if opts.get("delta_estimator", "running_mean") not in DELTA_ESTIMATORS:
    raise UserError(f"config loss.delta_estimator: {opts['delta_estimator']!r} is not one of "
                    f"{', '.join(DELTA_ESTIMATORS)}")
  return name, {k: items[k] for k in hp_keys if k in items}, opts


def row_logps(cfg, params, b, chunk: int, with_kl: bool):
  """Summed completion log-probs `[B]` of each row (and `[B]` of its mismatched KL row), one forward."""
  prompt, pmask = b["prompt"], b["prompt_mask"]
  comp, cmask = b["completion"], b["completion_mask"]
  if with_kl:
    prompt, pmask = jnp.concatenate([prompt, prompt]), jnp.concatenate([pmask, pmask])
    comp = jnp.concatenate([comp, b["kl_completion"]])
    cmask = jnp.concatenate([cmask, b["kl_completion_mask"]])
  seq = sequence_logps(completion_token_logps(cfg, params, prompt, pmask, comp, cmask, chunk_size=chunk), cmask)
  return tuple(jnp.split(seq, 2)) if with_kl else (seq,)


def _class_mean(x, m):
  m = m.astype(x.dtype)
  return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1)


def initial_extra(name: str, opts: dict, dtype=jnp.float32, udm_classifier: dict | None = None):
  """`TrainState.extra`: δ's running statistics (BCO) and the UDM classifier; None for KTO."""
  if name != "bco":
    return None
  if opts.get("delta_estimator", "running_mean") == "class_balanced":
    extra = {"delta": losses.class_balanced_init(dtype)}
  else:
    extra = {"delta": losses.running_mean_init(dtype)}
  if udm_classifier is not None:
    extra["udm"] = jax.tree.map(jnp.asarray, udm_classifier)
  return extra


def unpaired_loss(cfg, name: str, hparams: dict, opts: dict, chunk: int):
  """Per-microbatch loss; stateful for BCO (`(params, mb, ref, extra)`), stateless for KTO."""
  fn = UNPAIRED[name][0]
  with_kl = name == "kto"
  beta = float(hparams.get("beta", 0.1))
  balanced = opts.get("delta_estimator", "running_mean") == "class_balanced"

  def loss_fn(params, mb, ref_params, extra=None):
    pol = row_logps(cfg, params, mb, chunk, with_kl)
    if ref_params is None:  # precomputed and carried in the batch
      ref = (mb["ref_logps"], mb["ref_kl_logps"]) if with_kl else (mb["ref_logps"],)
    else:
      ref = jax.lax.stop_gradient(row_logps(cfg, ref_params, mb, chunk, with_kl))
    pos = mb["label"] > 0
    reward = jax.lax.stop_gradient(beta * (pol[0] - ref[0]))
    metrics = {"rewards/desirable": _class_mean(reward, pos), "rewards/undesirable": _class_mean(reward, ~pos),
               "logps/desirable": _class_mean(pol[0], pos), "logps/undesirable": _class_mean(pol[0], ~pos),
               "desirable_fraction": jnp.mean(pos.astype(jnp.float32))}
    if name == "bco":
      if balanced:
        stats = losses.class_balanced_update(extra["delta"], reward, pos)
        delta = losses.class_balanced_delta(stats)
      else:  # TRL: every reward of the batch enters the running mean before the loss
        stats = losses.running_mean_update(extra["delta"], reward)
        delta = stats[0]
      extra = {**extra, "delta": stats}
      w = mb.get("udm_weight")
      per = fn(pol[0], ref[0], pos, **hparams, delta=delta, udm_weight=w)
      metrics["delta"] = delta
      metrics["rewards/accuracies"] = jnp.mean((reward > delta) == pos)
      if w is not None:
        metrics["udm_weight"] = _class_mean(w, ~pos)
    else:
      per = fn(pol[0], ref[0], pos, pol[1], ref[1], **hparams)
      metrics["kl"] = losses.kto_kl_baseline(pol[1], ref[1])
    aux = (jnp.asarray(per.shape[0], jnp.float32), metrics)
    return jnp.sum(per), (aux + (extra,) if name == "bco" else aux)
  return loss_fn


def heldout_loss(name: str, hparams: dict, opts: dict):
  """`loss(policy columns, reference columns, labels) -> (mean loss, metrics)` over held-out rows, all of
  them one batch (see `heldout_evaluate`); columns are `(S,)` for BCO, `(S, S_mismatched)` for KTO."""
  fn = UNPAIRED[name][0]
  beta = float(hparams.get("beta", 0.1))
  balanced = opts.get("delta_estimator", "running_mean") == "class_balanced"

  @jax.jit
  def loss(pol, ref, label):
    pos = label > 0
    r = beta * (pol[0] - ref[0])
    des, und = _class_mean(r, pos), _class_mean(r, ~pos)
    if name == "bco":
      delta = (des + und) / 2 if balanced else jnp.mean(r)
      per, threshold, extra = fn(pol[0], ref[0], pos, **hparams, delta=delta), delta, {"delta": delta}
    else:
      z0 = losses.kto_kl_baseline(pol[1], ref[1])
      per, threshold, extra = fn(pol[0], ref[0], pos, pol[1], ref[1], **hparams), beta * z0, {"kl": z0}
    return jnp.mean(per), {"rewards/desirable": des, "rewards/undesirable": und, "rewards/margins": des - und,
                           "rewards/accuracies": jnp.mean((r > threshold) == pos),
                           "logps/desirable": _class_mean(pol[0], pos), "logps/undesirable": _class_mean(pol[0], ~pos),
                           **extra}
  return loss


def heldout_evaluate(config, tok, cfg, mesh, held: dict, prompts: list[str], *, ref_params, name: str, hparams: dict,
                     opts: dict, chunk: int, cache_dir: str):
  """`evaluate(params, step)` on held-out rows of a user data source (`jaxalign.data_eval.HeldoutEvaluator`):
  the run's loss over all held-out rows as one batch, its implicit rewards `β(S_θ − S_ref)` per class, their
  margin, and the accuracy of the class they imply; policy and reference samples; the judge.

  The batch statistics the loss needs come from the held-out rows themselves, never from training (evaluation
  leaves the train state alone): BCO's δ is the mean held-out reward (`class_balanced`: the midpoint of the
  two classes' means), KTO's z₀ the clamped mean log-ratio of the held-out mismatched rows. UDM weights are
  not applied (they are fitted on the training rows). A reward counts as accurate when it lies on its label's
  side of δ (BCO) or of βz₀ (KTO).
  """
  from jaxalign.data_eval import HeldoutEvaluator
  loss = heldout_loss(name, hparams, opts)
  return HeldoutEvaluator(config, tok, cfg, held, prompts, mesh,
                          logps=lambda p, b: row_logps(cfg, p, b, chunk, name == "kto"),
                          loss=lambda pol, ref, b: loss(pol, ref, jnp.asarray(b["label"])), ref_params=ref_params,
                          cache_dir=cache_dir, batch_size=int(config.train.batch_size),
                          cache_name=f"eval_unpaired_{name}_logps")


def check(config) -> None:
  name = check_loss(config.loss)[0]
  if config.udm.enabled and name != "bco":
    raise UserError(f"config udm.enabled: UDM reweights BCO's thumbs-down rows; loss {name!r} does not use it")


def train(config, workdir: str):
  name, hparams, opts = check_loss(config.loss)
  run = prologue.begin(config, workdir)
  mesh, tok, cfg, ref_params, params = run.mesh, run.tok, run.cfg, run.reference, run.policy
  d = config.data
  rows, held = pipeline.binary_split(d, int(config.seed))  # no held-out rows on the built-in task
  tokenize = functools.partial(pipeline.tokenize_binary, tok, prompt_len=d.prompt_len, completion_len=d.completion_len,
                               prompt_truncation=d.prompt_truncation, completion_truncation=d.completion_truncation)
  arrays = tokenize(rows)
  n_pos = int(arrays["label"].sum())
  if n_pos == 0 or n_pos == len(arrays["label"]):
    raise UserError(f"data: unpaired training needs both thumbs-up and thumbs-down rows; got {n_pos} up, "
                    f"{len(arrays['label']) - n_pos} down")
  chunk = int(config.train.logprob_chunk)
  dtype = setup.dtype(config)
  bsz = int(config.train.batch_size)
  meta, clf = {"udm": {}}, None
  if config.udm.enabled:
    clf, weights, stats = udm.fit_udm(cfg, ref_params, arrays, mesh, config.udm, seed=int(config.seed),
                                      batch_size=bsz)
    arrays = {**arrays, "udm_weight": weights.astype(dtype)}
    meta["udm"] = stats
  frozen = ref_params
  if config.train.precompute_ref:
    visited = pipeline.rows_visited(int(config.seed), int(config.train.steps), bsz, len(arrays["prompt"]))
    cols, key = map_rows(lambda p, b: row_logps(cfg, p, b, chunk, name == "kto"), ref_params, arrays, mesh,
                         batch_size=bsz, desc="reference log-probs",
                         cache=(os.path.join(workdir, "ref_cache"), f"unpaired_{name}_logps"), rows=visited)
    arrays = {**arrays, "ref_logps": cols[0].astype(dtype)}
    if name == "kto":
      arrays["ref_kl_logps"] = cols[1].astype(dtype)
    meta["ref_cache_key"] = key
    frozen = None
  evaluate = builtin_evaluate(config, tok, cfg, ref_params)
  if evaluate is None and held:
    evaluate = heldout_evaluate(config, tok, cfg, mesh, tokenize(held), [r["prompt"] for r in held],
                                ref_params=ref_params, name=name, hparams=hparams, opts=opts, chunk=chunk,
                                cache_dir=os.path.join(workdir, "ref_cache"))

  def tokens_fn(hb):
    real = float(hb["prompt_mask"].sum() + hb["completion_mask"].sum())
    if name == "kto":
      real += float(hb["prompt_mask"].sum() + hb["kl_completion_mask"].sum())
    return real, real, 0.0 if config.train.precompute_ref else real

  state, _ = loop.run_loss(config, workdir, mesh=mesh, params=params, arrays=arrays,
                           loss_fn=unpaired_loss(cfg, name, hparams, opts, chunk), frozen=frozen,
                           evaluate=evaluate, tokens_fn=tokens_fn,
                           flops_params=count_params(params, cfg)["flops_params"], meta=meta, desc=name,
                           extra=initial_extra(name, opts, dtype, clf))
  return state.params
