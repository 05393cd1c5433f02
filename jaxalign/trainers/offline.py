"""Offline preference optimisation (DPO family) on fixed (prompt, chosen, rejected) data.

Chosen and rejected rows go through one forward pass, concatenated on the batch
axis. Reference log-probs are either computed in the step under stop_gradient, or
(`train.precompute_ref`) before training for the rows the run will visit
(`train.steps × batch_size` of them, all once an epoch is done) and cached on disk under a
key of (data fingerprint, reference-params checksum); a later or longer run computes only
the rows the cache lacks.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp

from jaxalign import losses
from jaxalign.data import packing, pipeline
from jaxalign.evaluation import builtin_evaluate
from jaxalign.logprobs import sequence_logps
from jaxalign.models.transformer import count_params
from jaxalign.inference import map_rows
from jaxalign.scoring import completion_token_logps, packed_sequence_logps
from jaxalign.trainers import loop, prologue, setup


def pair_logps(cfg, params, b, chunk: int):
  """Summed completion log-probs of chosen and rejected, `([B], [B])`, in one forward pass.

  `b` is either the fixed layout (chosen and rejected rows concatenated on the batch axis) or a
  packed batch (`jaxalign.data.packing`, several sequences per row); both give the same numbers.
  """
  if "tokens" in b:
    seq = packed_sequence_logps(cfg, params, b, 2 * b["chosen_len"].shape[0], chunk_size=chunk)
    return jnp.split(seq, 2)
  cat = lambda k: jnp.concatenate([b[k], b[k]], axis=0)
  comp = jnp.concatenate([b["chosen"], b["rejected"]], axis=0)
  mask = jnp.concatenate([b["chosen_mask"], b["rejected_mask"]], axis=0)
  lp = completion_token_logps(cfg, params, cat("prompt"), cat("prompt_mask"), comp, mask, chunk_size=chunk)
  seq = sequence_logps(lp, mask)
  return jnp.split(seq, 2)


def preference_loss(cfg, loss_name: str, hparams: dict, chunk: int):
  """Per-microbatch loss for any pairwise `LOSSES` entry.

  Reference-free losses (`losses.REFERENCE_FREE`) get zeros for the reference log-probs and are
  compiled with no reference parameters at all; losses listed in `losses.EXTRA_INPUTS` get the
  completion token counts they ask for. `bco_pair` is stateful (see `make_step`): its reward shift δ
  is the running mean of per-batch mean rewards carried in `TrainState.extra` (`initial_extra`).
  """
  fn, kw = losses.get_loss(loss_name, hparams)
  need = losses.EXTRA_INPUTS.get(loss_name, ())
  reference_free = loss_name in losses.REFERENCE_FREE
  metric_beta = kw.get("beta", kw.get("tau", 1.0))

  def loss_fn(params, mb, ref_params, extra=None):
    pc, pr = pair_logps(cfg, params, mb, chunk)
    if reference_free:
      rc = rr = jnp.zeros_like(pc)
    elif ref_params is None:  # precomputed and carried in the batch
      rc, rr = mb["ref_chosen_logps"], mb["ref_rejected_logps"]
    else:
      rc, rr = jax.lax.stop_gradient(pair_logps(cfg, ref_params, mb, chunk))
    inputs = {}
    if "chosen_lengths" in need:
      lengths = lambda s: (mb[f"{s}_len"] if f"{s}_len" in mb else mb[f"{s}_mask"].sum(-1)).astype(pc.dtype)
      inputs = dict(chosen_lengths=lengths("chosen"), rejected_lengths=lengths("rejected"))
    metrics = losses.preference_metrics(pc, pr, rc, rr, beta=metric_beta)
    if "delta" in need:  # δ includes this batch's mean reward (TRL ≤ v0.28), each batch weight 1
      running = losses.running_mean_update(extra["delta"], losses.bco_pair_reward_mean(pc, pr, rc, rr, **kw))
      extra = {**extra, "delta": running}
      inputs["delta"] = running[0]
      metrics["delta"] = running[0]
    per_pair = fn(pc, pr, rc, rr, **kw, **inputs)
    aux = (jnp.float32(per_pair.shape[0]), metrics)
    return jnp.sum(per_pair), (aux + (extra,) if "delta" in need else aux)
  return loss_fn


def initial_extra(loss_name: str, dtype=jnp.float32):
  """`TrainState.extra` a loss needs (None: the step is stateless)."""
  if "delta" in losses.EXTRA_INPUTS.get(loss_name, ()):
    return {"delta": losses.running_mean_init(dtype)}
  return None


def reference_logps(cfg, ref_params, arrays: dict, mesh, *, batch_size: int, chunk: int, cache_dir: str,
                    rows=None):
  """`(ref_chosen_logps, ref_rejected_logps, cache key)` for the examples `rows` (default: all; the others
  are NaN), from the disk cache where it has them."""
  (chosen, rejected), key = map_rows(lambda p, b: pair_logps(cfg, p, b, chunk), ref_params, arrays, mesh,
                                     batch_size=batch_size, desc="reference log-probs",
                                     cache=(cache_dir, "reference_logps"), rows=rows)
  return chosen, rejected, key


def heldout_evaluate(config, tok, cfg, mesh, held: dict, prompts: list[str], *, ref_params, reference_free: bool,
                     hparams: dict, chunk: int, cache_dir: str):
  """`evaluate(params, step)` on held-out pairs of a user data source (`jaxalign.data_eval.HeldoutEvaluator`):
  the loss of `config.loss` and the implicit-reward metrics, policy and reference samples, the judge."""
  from jaxalign.data_eval import HeldoutEvaluator
  name = config.loss.name
  fn, kw = losses.get_loss(name, hparams)
  need = losses.EXTRA_INPUTS.get(name, ())
  metric_beta = kw.get("beta", kw.get("tau", 1.0))

  @jax.jit
  def loss(pc, pr, rc, rr, lengths):
    metrics = losses.preference_metrics(pc, pr, rc, rr, beta=metric_beta)
    inputs = dict(chosen_lengths=lengths[0], rejected_lengths=lengths[1]) if "chosen_lengths" in need else {}
    if "delta" in need:  # bco_pair's δ is a running statistic of training: held out at the running mean of
      inputs["delta"] = losses.bco_pair_reward_mean(pc, pr, rc, rr, **kw)  # the held-out rewards instead
    return jnp.mean(fn(pc, pr, rc, rr, **kw, **inputs)), metrics

  def loss_of(pol, ref, batch):
    lengths = tuple(jnp.asarray(batch[f"{s}_mask"].sum(-1), jnp.float32) for s in ("chosen", "rejected"))
    return loss(*pol, *ref, lengths)

  ev = HeldoutEvaluator(config, tok, cfg, held, prompts, mesh, logps=lambda p, b: pair_logps(cfg, p, b, chunk),
                        loss=loss_of, ref_params=ref_params, cache_dir=cache_dir,
                        batch_size=int(config.train.batch_size), reference_free=reference_free)
  return ev


def packer(config, mesh):
  """Host-side packing of each batch (`train.packing`), grouped so that microbatches and
  process slices keep their pairs, with row counts divisible by the batch shards."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  nproc = jax.process_count()
  return functools.partial(packing.pack_pairs, groups=int(config.train.grad_accum) * nproc, micro_groups=nproc,
                           row_multiple=shards // math.gcd(shards, nproc),
                           share_prompt=bool(config.train.get("packing_share_prompt", True)))


def check(config) -> None:
  losses.get_loss(config.loss.name, {k: v for k, v in config.loss.items() if k != "name"})  # one-line errors


def train(config, workdir: str):
  hparams = {k: v for k, v in config.loss.items() if k != "name"}
  run = prologue.begin(config, workdir)
  mesh, tok, cfg, ref_params, params = run.mesh, run.tok, run.cfg, run.reference, run.policy
  d = config.data
  train_rows, held_rows = pipeline.preference_split(d, int(config.seed))
  tokenize = lambda rows: pipeline.tokenize_preference(tok, rows, d.prompt_len, d.completion_len,
                                                       d.prompt_truncation, d.completion_truncation)
  arrays = tokenize(train_rows)
  chunk = int(config.train.logprob_chunk)
  meta = {}
  reference_free = config.loss.name in losses.REFERENCE_FREE
  frozen = None if reference_free else ref_params  # reference-free: the step never sees it
  if config.train.precompute_ref and not reference_free:
    visited = pipeline.rows_visited(int(config.seed), int(config.train.steps), int(config.train.batch_size),
                                    len(arrays["prompt"]))  # a short run on a big file computes what it uses
    rc, rr, key = reference_logps(cfg, ref_params, arrays, mesh, batch_size=int(config.train.batch_size),
                                  chunk=chunk, cache_dir=os.path.join(workdir, "ref_cache"), rows=visited)
    arrays = {**arrays, "ref_chosen_logps": rc.astype(setup.dtype(config)),
              "ref_rejected_logps": rr.astype(setup.dtype(config))}
    meta["ref_cache_key"] = key
    frozen = None
  evaluate = builtin_evaluate(config, tok, cfg, ref_params)
  if evaluate is None and held_rows:
    evaluate = heldout_evaluate(config, tok, cfg, mesh, tokenize(held_rows), [r["prompt"] for r in held_rows],
                                ref_params=ref_params, reference_free=reference_free, hparams=hparams, chunk=chunk,
                                cache_dir=os.path.join(workdir, "ref_cache"))

  def tokens_fn(hb):
    real = float(2 * hb["prompt_mask"].sum() + hb["chosen_mask"].sum() + hb["rejected_mask"].sum())
    return real, real, 0.0 if (config.train.precompute_ref or reference_free) else real

  state, _ = loop.run_loss(config, workdir, mesh=mesh, params=params, arrays=arrays,
                           loss_fn=preference_loss(cfg, config.loss.name, hparams, chunk), frozen=frozen,
                           evaluate=evaluate, tokens_fn=tokens_fn,
                           flops_params=count_params(params, cfg)["flops_params"], meta=meta,
                           desc=config.loss.name, extra=initial_extra(config.loss.name, setup.dtype(config)),
                           prepare=packer(config, mesh) if config.train.packing else None)
  return state.params
