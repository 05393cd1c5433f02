"""Train state, its sharded creation, the shared scoring forward, and the jitted step builder.

Every trainer's step is `(state, batch, frozen params) -> (state, metrics)`, built by
`make_step` from a per-microbatch loss; it is jitted once with explicit shardings and
a donated state. A step whose loss or gradient is not finite leaves the state
unchanged and reports `nonfinite=1`, and the loop stops before saving.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxalign import sharding as shd
from jaxalign.logprobs import token_logps
from jaxalign.models.transformer import ModelConfig, Transformer, output_matrix_DxV, positions_from_mask

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any
  extra: Any  # method state that must survive a restart (e.g. BCO's running δ)


def abstract_params(cfg: ModelConfig):
  """Boxed (`nn.Partitioned`) abstract params: shapes plus logical axis names, no memory."""
  tok = jnp.zeros((1, 4), jnp.int32)
  return jax.eval_shape(lambda r: Transformer(cfg).init(r, tok, tok, tok + 1), jax.random.key(0))["params"]


def init_params(cfg: ModelConfig, rng: Array, mesh) -> Any:
  """Params born sharded: `jit(init, out_shardings=...)`, never whole on one device."""
  shardings = shd.param_shardings(abstract_params(cfg), mesh)
  tok = jnp.zeros((1, 4), jnp.int32)
  init = lambda r: nn.meta.unbox(Transformer(cfg).init(r, tok, tok, tok + 1)["params"])
  return jax.jit(init, out_shardings=shardings)(rng)


def create_state(params, optimizer: optax.GradientTransformation, mesh, extra=None) -> TrainState:
  """State around existing (sharded) params; optimiser moments inherit their shardings."""
  opt_state = jax.jit(optimizer.init)(params)
  # Moments inherit the params' shardings; scalars (counts) must live on the mesh too.
  on_mesh = lambda x: isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh == mesh
  opt_state = jax.tree.map(lambda x: x if on_mesh(x) else jax.device_put(x, shd.replicated(mesh)), opt_state)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shd.replicated(mesh)),
                    params=params, opt_state=opt_state, extra=extra if extra is not None else {})


def state_shardings(state: TrainState):
  return jax.tree.map(lambda x: x.sharding, state)


def completion_token_logps(cfg: ModelConfig, params, prompt_BxP: Array, prompt_mask_BxP: Array,
                           completion_BxC: Array, completion_mask_BxC: Array, *,
                           chunk_size: int = 2048, with_entropy: bool = False):
  """Log-probs `[B, C]` of completion tokens given prompts (fixed P | C row layout)."""
  p = prompt_BxP.shape[1]
  c = completion_BxC.shape[1]
  tokens = jnp.concatenate([prompt_BxP, completion_BxC], axis=1)
  mask = jnp.concatenate([prompt_mask_BxP, completion_mask_BxC], axis=1).astype(jnp.int32)
  hidden, _ = Transformer(cfg).apply({"params": params}, tokens, positions_from_mask(mask), mask)
  # Only the C positions that predict completion tokens are scored.
  h_BxCxD = jax.lax.dynamic_slice_in_dim(hidden, p - 1, c, axis=1)
  return token_logps(h_BxCxD, output_matrix_DxV(cfg, params), completion_BxC,
                     chunk_size=chunk_size, with_entropy=with_entropy)


def packed_sequence_logps(cfg: ModelConfig, params, b: dict, n_seqs: int, *, chunk_size: int = 2048) -> Array:
  """Summed completion log-probs `[n_seqs]` of a packed batch (`jaxalign.data.packing`).

  Only the `[G, N]` scored slots go through the vocabulary projection; slot sums are
  scattered to their sequence by `seq_idx` (unused slots point past the end and are dropped).
  """
  hidden_RxLxD, _ = Transformer(cfg).apply({"params": params}, b["tokens"], b["positions"], b["segment_ids"],
                                           branch_ids_BxL=b.get("branch_ids"))
  r, l, d = hidden_RxLxD.shape
  g = b["score_pos"].shape[0]
  hidden_GxMxD = hidden_RxLxD.reshape(g, (r // g) * l, d)  # each block's rows, flattened
  # Picking the scored positions as a one-hot matmul (exact) keeps the block axis sharded in both
  # passes, where a gather's transpose (a scatter) makes the partitioner replicate.
  pick_GxNxM = (b["score_pos"][..., None] == jnp.arange(hidden_GxMxD.shape[1])).astype(hidden_GxMxD.dtype)
  h_GxNxD = jnp.einsum("GNM,GMD->GND", pick_GxNxM, hidden_GxMxD)
  lp_GxN = token_logps(h_GxNxD, output_matrix_DxV(cfg, params), b["targets"], chunk_size=chunk_size)
  idx = b["seq_idx"].reshape(-1)
  lp = jnp.where(idx < n_seqs, lp_GxN.reshape(-1), 0.0)
  return jax.ops.segment_sum(lp, idx, num_segments=n_seqs + 1)[:n_seqs]


def params_checksum(params) -> str:
  """A short hash of every parameter's sum and sum of squares (cache keys for derived data)."""
  sums = jax.device_get(jax.tree.map(lambda x: jnp.stack([jnp.sum(x.astype(jnp.float32)),
                                                          jnp.sum(jnp.square(x.astype(jnp.float32)))]), params))
  flat = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(sums)])
  return hashlib.sha256(flat.astype(np.float64).tobytes()).hexdigest()[:16]


def map_rows(fn, params, arrays: dict, mesh, *, batch_size: int, desc: str,
             cache: tuple[str, str] | None = None):
  """`fn(params, batch) -> tuple of [b, ...] arrays` over every row of `arrays`, in sharded batches.

  Returns `(tuple of numpy arrays [N, ...], key)`. Outputs are gathered on every host. With
  `cache=(dir, name)` the result is stored in `dir/name-KEY.npz`, KEY = (data fingerprint, params
  checksum), and read back instead of recomputed when present (e.g. reference log-probs).
  """
  from jaxalign.data import pipeline  # (data imports nothing from trainers)
  key = f"{pipeline.fingerprint(arrays)}-{params_checksum(params)}"
  path = os.path.join(cache[0], f"{cache[1]}-{key}.npz") if cache else None
  if path and os.path.exists(path):
    with np.load(path) as z:
      return tuple(z[f"out{i}"] for i in range(len(z.files))), key
  n = next(iter(arrays.values())).shape[0]
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  bs = max(shards, (batch_size // shards) * shards)
  jfn = jax.jit(fn)
  outs = None
  for lo in tqdm(range(0, n, bs), desc=desc, disable=jax.process_index() != 0):
    idx = np.arange(lo, lo + bs) % n  # the last batch wraps around; extra rows are dropped
    b = shd.shard_batch(pipeline.process_slice(pipeline.get_batch(arrays, idx)), mesh)
    # Outputs are sharded over the batch across hosts: gather them everywhere.
    got = multihost_utils.process_allgather(jfn(params, b), tiled=True)
    got = got if isinstance(got, (tuple, list)) else (got,)
    outs = outs or [[] for _ in got]
    for o, g in zip(outs, got):
      o.append(np.asarray(g))
  result = tuple(np.concatenate(o)[:n] for o in outs)
  if path and jax.process_index() == 0:
    os.makedirs(cache[0], exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{f"out{i}": r for i, r in enumerate(result)})
    os.replace(tmp, path)
  return result, key


LossFn = Callable[[Any, dict, Any], tuple[Array, tuple[Array, dict]]]


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, grad_accum: int = 1,
              stateful: bool = False):
  """Step from `loss_fn(params, microbatch, frozen) -> (loss_sum, (weight, metrics))`.

  The loss is `Σ loss_sum / Σ weight` over `grad_accum` equal microbatches
  (token-weighted for SFT, pair-weighted for preference losses); metrics are
  averaged over microbatches.

  `stateful=True`: `loss_fn(params, microbatch, frozen, extra) -> (loss_sum, (weight, metrics, extra))`
  threads `state.extra` (e.g. BCO's running reward shift) through the microbatches in order, so it
  sees exactly what a sequence of unaccumulated steps would; a non-finite step keeps the old `extra`.
  """

  def step_grads(state: TrainState, batch: dict, frozen):
    """The gradient (already divided by the weight) and what the update needs, `(grads, aux)`."""
    if grad_accum == 1:
      # No loop and no accumulator; the gradient comes out already divided by the weight (the
      # weight does not depend on the params), so no second params-sized tree is ever live.
      def normalised(params, mb, frozen, *extra):
        loss_sum, aux = loss_fn(params, mb, frozen, *extra)
        return loss_sum / jax.lax.stop_gradient(jnp.maximum(aux[0], 1e-9)), (loss_sum, aux)
      (_, (l_sum, aux)), grads = jax.value_and_grad(normalised, has_aux=True)(
          state.params, batch, frozen, *((state.extra,) if stateful else ()))
      w_sum, metrics = aux[0], aux[1]
      extra = aux[2] if stateful else state.extra
    else:
      def one(carry, mb):
        g_acc, l_acc, w_acc, extra = carry
        if stateful:
          (loss_sum, (weight, metrics, extra)), g = jax.value_and_grad(loss_fn, has_aux=True)(
              state.params, mb, frozen, extra)
        else:
          (loss_sum, (weight, metrics)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, mb, frozen)
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss_sum, w_acc + weight, extra), metrics
      micro = jax.tree.map(lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]), batch)
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (g_sum, l_sum, w_sum, extra), metrics = jax.lax.scan(one, (zeros, 0.0, 0.0, state.extra), micro)
      metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
      grads = jax.tree.map(lambda g: g / jnp.maximum(w_sum, 1e-9), g_sum)
    loss = l_sum / jnp.maximum(w_sum, 1e-9)
    gnorm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    metrics = {**metrics, "loss": loss, "grad_norm": gnorm, "nonfinite": 1 - ok.astype(jnp.int32)}
    return grads, (metrics, extra, ok)

  def step_update(state: TrainState, grads, aux):
    """The optimiser update, skipped (state kept, step counted) when the step was not finite."""
    metrics, extra, ok = aux

    def update(operand):
      params, opt_state, extra = operand
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, extra

    # A branch rather than `where(ok, new, old)`: the update runs in place on the donated state
    # instead of holding new and old copies of the params and moments at once.
    params, opt_state, extra = jax.lax.cond(ok, update, lambda operand: operand[:2] + (state.extra,),
                                            (state.params, state.opt_state, extra))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra), metrics

  def step(state: TrainState, batch: dict, frozen):
    return step_update(state, *step_grads(state, batch, frozen))

  step.grads, step.update = step_grads, step_update
  return step


def jit_step(step_fn, state: TrainState, batch_shardings: dict, frozen_shardings, mesh):
  """`jit` with explicit shardings; the state is donated and comes back with the same layout.

  A `make_step` step runs as two compiled programs, the gradient (`jit(step_grads)`, compiled
  once per batch shape) and the update (`jit(step_update)`, which donates the state): XLA then
  updates the params and moments in place, where one program that also holds the backward
  pass keeps copies of them (about 1.2 GB more scratch for the `small` preset). The step is
  still one pure function (`make_step`'s return value, which `jax.jit` compiles whole too).
  """
  st_sh = state_shardings(state)
  rep = shd.replicated(mesh)
  if not hasattr(step_fn, "grads"):
    return jax.jit(step_fn, in_shardings=(st_sh, batch_shardings, frozen_shardings), out_shardings=(st_sh, rep),
                   donate_argnums=(0,))
  grads = jax.jit(step_fn.grads, in_shardings=(st_sh, batch_shardings, frozen_shardings),
                  out_shardings=(st_sh.params, rep))
  update = jax.jit(step_fn.update, in_shardings=(st_sh, st_sh.params, rep), out_shardings=(st_sh, rep),
                   donate_argnums=(0,))

  def step(state: TrainState, batch: dict, frozen):
    return update(state, *grads(state, batch, frozen))
  return step
