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
import numpy as np

from jaxalign import losses
from jaxalign.data import packing, pipeline
from jaxalign.errors import UserError
from jaxalign.evaluation import builtin_evaluate
from jaxalign.logprobs import sequence_logps
from jaxalign.models.transformer import count_params
from jaxalign.inference import map_rows
from jaxalign.scoring import completion_token_logps, packed_sequence_logps
from jaxalign.trainers import loop, prologue, setup


def list_logps(cfg, params, b, chunk: int, *, token_level: bool = False):
  """Summed completion log-probs `[B, K]` of K completions per prompt, in one forward pass.

  `b` is either the fixed layout (`prompt [B, P]`, `completions [B, K, C]`, masks; the K completions of
  the batch run as K·B rows, completion-major) or a packed batch (`jaxalign.data.packing.pack_lists`);
  both give the same numbers. `token_level` (fixed layout only): also the token log-probs `[K·B, C]`.
  """
  if "tokens" in b:
    bsz, k = b["completion_lens"].shape
    seq = packed_sequence_logps(cfg, params, b, k * bsz, chunk_size=chunk)
    return seq.reshape(k, bsz).T
  comps, masks = b["completions"], b["completions_mask"]
  bsz, k, c = comps.shape
  flat = lambda x: jnp.swapaxes(x, 0, 1).reshape(k * bsz, c)  # completion-major: all k = 0 rows first
  tile = lambda x: jnp.concatenate([x] * k, axis=0)
  mask = flat(masks)
  lp = completion_token_logps(cfg, params, tile(b["prompt"]), tile(b["prompt_mask"]), flat(comps), mask,
                              chunk_size=chunk)
  seq = sequence_logps(lp, mask).reshape(k, bsz).T
  return (seq, lp) if token_level else seq


def pair_logps(cfg, params, b, chunk: int, *, tails: bool = False):
  """Summed completion log-probs of chosen and rejected, `([B], [B])`: `list_logps` with K = 2.

  `b` is either the fixed layout (chosen and rejected `[B, C]`) or a packed batch (`pack_pairs`).
  `tails` (fixed layout only; LD-DPO): also `Σ_{t > l_p} ℓ_t` of each side, `l_p` the pair's shorter length.
  """
  if "tokens" in b:
    seq = list_logps(cfg, params, {**b, "completion_lens": jnp.stack([b["chosen_len"], b["rejected_len"]], 1)},
                     chunk)
    return seq[:, 0], seq[:, 1]
  lists = {"prompt": b["prompt"], "prompt_mask": b["prompt_mask"],
           "completions": jnp.stack([b["chosen"], b["rejected"]], 1),
           "completions_mask": jnp.stack([b["chosen_mask"], b["rejected_mask"]], 1)}
  seq, lp = list_logps(cfg, params, lists, chunk, token_level=True)
  if tails:
    return (seq[:, 0], seq[:, 1], *losses.common_length_tails(lp, b["chosen_mask"], b["rejected_mask"]))
  return seq[:, 0], seq[:, 1]


TAIL_KEYS = ("policy_chosen_tail", "policy_rejected_tail", "reference_chosen_tail", "reference_rejected_tail")


def list_objective(loss_name: str, hparams: dict):
  """`f(policy [B, K], reference [B, K], scores, list_mask) -> (values [B], weights [B], metrics)` of a listwise
  loss, or of D²O (`losses.SELF_SAMPLED`: the K − 1 self-samples first, the human negative last)."""
  fn, kw = losses.get_listwise(loss_name, hparams)
  beta = kw.get("beta", 0.05 if loss_name in losses.LISTWISE else 0.1)

  def f(pol, ref, scores, mask):
    if loss_name in losses.SELF_SAMPLED:
      per = fn(pol[:, :-1], ref[:, :-1], pol[:, -1], ref[:, -1], mask[:, :-1], **kw)
      return per, jnp.ones_like(per), losses.self_sampled_metrics(pol, ref, mask, beta=beta)
    values, weights = fn(pol, ref, scores, mask, **kw)
    return values, weights, losses.listwise_metrics(pol, ref, scores, mask, beta=beta)
  return f


def listwise_loss(cfg, loss_name: str, hparams: dict, chunk: int):
  """Per-microbatch loss for a `losses.LISTWISE` entry on K completions per prompt (`scores`, `list_mask`), or
  D²O's on self-samples and a negative: `(Σ values, Σ weights)`, so Rax's pooled pair mean is over the pairs
  of the whole global batch."""
  objective = list_objective(loss_name, hparams)

  def loss_fn(params, mb, ref_params, extra=None):
    pol = list_logps(cfg, params, mb, chunk)
    if ref_params is None:  # precomputed and carried in the batch
      ref = mb["ref_list_logps"]
    else:
      ref = jax.lax.stop_gradient(list_logps(cfg, ref_params, mb, chunk))
    values, weights, metrics = objective(pol, ref, mb.get("scores"), mb["list_mask"])
    return jnp.sum(values), (jnp.sum(weights), metrics)
  return loss_fn


def with_self_samples(config, cfg, tok, ref_params, arrays: dict, mesh, cache_dir: str, desc: str) -> dict:
  """D²O's lists: `config.d2o.samples` completions per prompt sampled from the reference (the initial policy),
  then the human negative, as `completions [N, K + 1, C]` (+ masks, `list_mask`). Samples are a function of
  (seed, data, reference params, K, temperature, batch size) and cached in `cache_dir`."""
  from jaxalign import sampling
  from jaxalign.inference import map_rows
  k, temp, seed = int(config.d2o.samples), float(config.d2o.temperature), int(config.seed)
  c = arrays["negative"].shape[1]
  bs = int(config.train.batch_size)

  def draw(params, b):
    rng = jax.random.fold_in(jax.random.key(seed), b["row_id"][0])
    outs = [sampling.sample(params, b["prompt"], b["prompt_mask"], jax.random.fold_in(rng, j), cfg=cfg,
                            max_new_tokens=c, eos_id=tok.eos_id, pad_id=tok.pad_id, temperature=temp)
            for j in range(k)]
    return jnp.stack([o[0] for o in outs], 1), jnp.stack([o[1] for o in outs], 1).astype(jnp.int32)
  src = {"prompt": arrays["prompt"], "prompt_mask": arrays["prompt_mask"],
         "row_id": np.arange(len(arrays["prompt"]), dtype=np.int32)}
  (toks, masks), _ = map_rows(draw, ref_params, src, mesh, batch_size=bs, desc=desc,
                              cache=(cache_dir, f"d2o_samples-k{k}-t{temp:g}-s{seed}-b{bs}"))
  comps = np.concatenate([toks.astype(np.int32), arrays["negative"][:, None]], 1)
  cmask = np.concatenate([masks.astype(np.int32), arrays["negative_mask"][:, None]], 1)
  return {"prompt": arrays["prompt"], "prompt_mask": arrays["prompt_mask"], "completions": comps,
          "completions_mask": cmask, "list_mask": cmask.sum(2) > 0}


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

  tails = "policy_chosen_tail" in need

  def loss_fn(params, mb, ref_params, extra=None):
    inputs = {}
    pc, pr, *pt = pair_logps(cfg, params, mb, chunk, tails=tails)
    if reference_free:
      rc = rr = jnp.zeros_like(pc)
      rt = [jnp.zeros_like(pc)] * len(pt)
    elif ref_params is None:  # precomputed and carried in the batch
      rc, rr = mb["ref_chosen_logps"], mb["ref_rejected_logps"]
      rt = [mb["ref_chosen_tail"], mb["ref_rejected_tail"]] if tails else []
    else:
      rc, rr, *rt = jax.lax.stop_gradient(pair_logps(cfg, ref_params, mb, chunk, tails=tails))
    if tails:
      inputs.update(zip(TAIL_KEYS, (*pt, *rt)))
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
                    rows=None, tails: bool = False):
  """`({name: [N] reference column}, cache key)` for the examples `rows` (default: all; the others are NaN),
  from the disk cache where it has them: `ref_chosen_logps`, `ref_rejected_logps` (and with `tails` the
  LD-DPO `ref_chosen_tail`, `ref_rejected_tail`) for pairs; `ref_list_logps` `[N, K]` for lists."""
  if "completions" in arrays:
    (cols,), key = map_rows(lambda p, b: list_logps(cfg, p, b, chunk), ref_params, arrays, mesh,
                            batch_size=batch_size, desc="reference log-probs", cache=(cache_dir, "reference_list_logps"),
                            rows=rows)
    return {"ref_list_logps": cols}, key
  names = ("ref_chosen_logps", "ref_rejected_logps") + (("ref_chosen_tail", "ref_rejected_tail") if tails else ())
  cols, key = map_rows(lambda p, b: pair_logps(cfg, p, b, chunk, tails=tails), ref_params, arrays, mesh,
                       batch_size=batch_size, desc="reference log-probs",
                       cache=(cache_dir, "reference_logps_tails" if tails else "reference_logps"), rows=rows)
  return dict(zip(names, cols)), key


def heldout_evaluate(config, tok, cfg, mesh, held: dict, prompts: list[str], *, ref_params, reference_free: bool,
                     hparams: dict, chunk: int, cache_dir: str):
  """`evaluate(params, step)` on held-out pairs (or lists) of a user data source
  (`jaxalign.data_eval.HeldoutEvaluator`): the loss of `config.loss` and the implicit-reward metrics, policy
  and reference samples, the judge."""
  from jaxalign.data_eval import HeldoutEvaluator
  name = config.loss.name
  common = dict(ref_params=ref_params, cache_dir=cache_dir, batch_size=int(config.train.batch_size),
                reference_free=reference_free)
  if losses.data_kind(name) in ("lists", "negatives"):
    objective = list_objective(name, hparams)

    @jax.jit
    def list_loss(pol, ref, scores, mask):
      values, weights, metrics = objective(pol, ref, scores, mask)
      return jnp.sum(values) / jnp.maximum(jnp.sum(weights), 1e-9), metrics
    return HeldoutEvaluator(config, tok, cfg, held, prompts, mesh, logps=lambda p, b: (list_logps(cfg, p, b, chunk),),
                            loss=lambda pol, ref, b: list_loss(pol[0], ref[0], jnp.asarray(b["scores"]) if "scores" in b
                                                               else None, jnp.asarray(b["list_mask"])),
                            cache_name="eval_reference_list_logps", **common)
  fn, kw = losses.get_loss(name, hparams)
  need = losses.EXTRA_INPUTS.get(name, ())
  tails = "policy_chosen_tail" in need
  metric_beta = kw.get("beta", kw.get("tau", 1.0))

  @jax.jit
  def loss(pol, ref, lengths):
    (pc, pr, *pt), (rc, rr, *rt) = pol, ref
    metrics = losses.preference_metrics(pc, pr, rc, rr, beta=metric_beta)
    inputs = dict(chosen_lengths=lengths[0], rejected_lengths=lengths[1]) if "chosen_lengths" in need else {}
    if tails:
      inputs.update(zip(TAIL_KEYS, (*pt, *rt)))
    if "delta" in need:  # bco_pair's δ is a running statistic of training: held out at the running mean of
      inputs["delta"] = losses.bco_pair_reward_mean(pc, pr, rc, rr, **kw)  # the held-out rewards instead
    return jnp.mean(fn(pc, pr, rc, rr, **kw, **inputs)), metrics

  def loss_of(pol, ref, batch):
    lengths = tuple(jnp.asarray(batch[f"{s}_mask"].sum(-1), jnp.float32) for s in ("chosen", "rejected"))
    return loss(tuple(pol), tuple(ref), lengths)

  return HeldoutEvaluator(config, tok, cfg, held, prompts, mesh,
                          logps=lambda p, b: pair_logps(cfg, p, b, chunk, tails=tails), loss=loss_of,
                          cache_name="eval_reference_logps_tails" if tails else "eval_reference_logps", **common)


def packer(config, mesh, lists: bool = False):
  """Host-side packing of each batch (`train.packing`), grouped so that microbatches and
  process slices keep their pairs (lists), with row counts divisible by the batch shards."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  nproc = jax.process_count()
  return functools.partial(packing.pack_lists if lists else packing.pack_pairs,
                           groups=int(config.train.grad_accum) * nproc, micro_groups=nproc,
                           row_multiple=shards // math.gcd(shards, nproc),
                           share_prompt=bool(config.train.get("packing_share_prompt", True)))


def check(config) -> None:
  name = config.loss.name
  hparams = {k: v for k, v in config.loss.items() if k != "name"}
  if losses.data_kind(name) in ("lists", "negatives"):
    losses.get_listwise(name, hparams)  # one-line errors
  else:
    losses.get_loss(name, hparams)
  if "policy_chosen_tail" in losses.EXTRA_INPUTS.get(name, ()) and config.train.packing:
    raise UserError(f"config train.packing: loss {name!r} needs per-token log-probs of the fixed layout; "
                    "set train.packing=False")


_DATA = {"pairs": (pipeline.preference_split, pipeline.tokenize_preference),
         "negatives": (pipeline.negative_split, pipeline.tokenize_negatives),
         "lists": (pipeline.list_split, pipeline.tokenize_lists),
         "joint": (pipeline.joint_split, pipeline.tokenize_joint)}


def split_rows(config) -> tuple[list[dict], list[dict]]:
  """`(training rows, held-out rows)` of the data the run's loss reads (`losses.data_kind`): pairs, lists of
  completions, D²O's negatives, or JPO's instruction–response pairs."""
  return _DATA[losses.data_kind(config.loss.name)][0](config.data, int(config.seed))


def tokenized(config, tok, cfg, ref_params, mesh, cache_dir: str, rows: list[dict], desc: str) -> dict:
  """`rows` as the step's arrays (D²O: with the reference's own samples, `with_self_samples`)."""
  d = config.data
  arrays = _DATA[losses.data_kind(config.loss.name)][1](tok, rows, d.prompt_len, d.completion_len,
                                                        d.prompt_truncation, d.completion_truncation)
  if losses.data_kind(config.loss.name) == "negatives" and len(arrays["prompt"]):
    arrays = with_self_samples(config, cfg, tok, ref_params, arrays, mesh, cache_dir, desc)
  return arrays


def heldout_arrays(config, tok, cfg, ref_params, mesh, cache_dir: str) -> tuple[dict, list[str]]:
  """The held-out split of the data the run's loss reads, tokenized, and the prompts to sample at evaluation:
  what `jaxalign.evaluate` evaluates a finished run on."""
  held = split_rows(config)[1]
  if not held:
    return {}, []
  return (tokenized(config, tok, cfg, ref_params, mesh, cache_dir, held, "D2O self-samples (held out)"),
          [row_prompt(r) for r in held])


def row_prompt(row: dict) -> str:
  """The prompt to sample a held-out row's policy and reference completions for (JPO: the chosen side's)."""
  return row["prompt"] if "prompt" in row else row["chosen_prompt"]


def train(config, workdir: str):
  name = config.loss.name
  hparams = {k: v for k, v in config.loss.items() if k != "name"}
  kind = losses.data_kind(name)
  lists = kind in ("lists", "negatives")
  run = prologue.begin(config, workdir)
  mesh, tok, cfg, ref_params, params = run.mesh, run.tok, run.cfg, run.reference, run.policy
  cache_dir = os.path.join(workdir, "ref_cache")
  train_rows, held_rows = split_rows(config)
  arrays = tokenized(config, tok, cfg, ref_params, mesh, cache_dir, train_rows, "D2O self-samples")
  if not len(arrays["prompt"]):
    raise UserError(f"data: no {losses.data_kind(name)} left to train on after tokenization (every row lost its "
                    "completions to truncation?)")
  chunk = int(config.train.logprob_chunk)
  meta = {}
  reference_free = name in losses.REFERENCE_FREE
  tails = "policy_chosen_tail" in losses.EXTRA_INPUTS.get(name, ())
  frozen = None if reference_free else ref_params  # reference-free: the step never sees it
  if config.train.precompute_ref and not reference_free:
    visited = pipeline.rows_visited(int(config.seed), int(config.train.steps), int(config.train.batch_size),
                                    len(arrays["prompt"]))  # a short run on a big file computes what it uses
    cols, key = reference_logps(cfg, ref_params, arrays, mesh, batch_size=int(config.train.batch_size),
                                chunk=chunk, cache_dir=cache_dir, rows=visited, tails=tails)
    arrays = {**arrays, **{k: v.astype(setup.dtype(config)) for k, v in cols.items()}}
    meta["ref_cache_key"] = key
    frozen = None
  evaluate = builtin_evaluate(config, tok, cfg, ref_params)
  if evaluate is None and held_rows:
    held = tokenized(config, tok, cfg, ref_params, mesh, cache_dir, held_rows, "D2O self-samples (held out)")
    evaluate = heldout_evaluate(config, tok, cfg, mesh, held, [row_prompt(r) for r in held_rows],
                                ref_params=ref_params, reference_free=reference_free, hparams=hparams, chunk=chunk,
                                cache_dir=cache_dir)

  def tokens_fn(hb):
    if lists:
      real = float(hb["prompt_mask"].sum() * hb["completions"].shape[1] + hb["completions_mask"].sum())
    else:
      real = float(2 * hb["prompt_mask"].sum() + hb["chosen_mask"].sum() + hb["rejected_mask"].sum())
    return real, real, 0.0 if (config.train.precompute_ref or reference_free) else real

  loss_fn = listwise_loss(cfg, name, hparams, chunk) if lists else preference_loss(cfg, name, hparams, chunk)
  state, _ = loop.run_loss(config, workdir, mesh=mesh, params=params, arrays=arrays,
                           loss_fn=loss_fn, frozen=frozen, evaluate=evaluate, tokens_fn=tokens_fn,
                           flops_params=count_params(params, cfg)["flops_params"], meta=meta,
                           desc=name, extra=None if lists else initial_extra(name, setup.dtype(config)),
                           prepare=packer(config, mesh, lists) if config.train.packing else None)
  return state.params
