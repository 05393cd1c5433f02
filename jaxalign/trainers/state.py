"""Train state, its sharded creation, and the step builders.

Every trainer's step is `(state, batch, frozen params) -> (state, metrics)`, built by
`make_step` from a per-microbatch loss; it is jitted once with explicit shardings and
a donated state. A step whose loss or gradient is not finite leaves the state
unchanged and reports `nonfinite=1`, and the loop stops before saving.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from jaxalign import sharding as shd

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any
  extra: Any  # method state that must survive a restart (e.g. BCO's running δ)


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
  aux_sh = (rep, st_sh.extra, rep)  # (metrics, extra, ok): method state keeps its layout (e.g. BPO's params copy)
  grads = jax.jit(step_fn.grads, in_shardings=(st_sh, batch_shardings, frozen_shardings),
                  out_shardings=(st_sh.params, aux_sh))
  update = jax.jit(step_fn.update, in_shardings=(st_sh, st_sh.params, aux_sh), out_shardings=(st_sh, rep),
                   donate_argnums=(0,))

  def step(state: TrainState, batch: dict, frozen):
    return update(state, *grads(state, batch, frozen))
  step.programs = (grads, update)  # the two jitted programs (profiling: their compiled HLO)
  return step
