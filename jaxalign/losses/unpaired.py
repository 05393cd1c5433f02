"""Unpaired (binary-feedback) losses: BCO with its running-mean reward shift and UDM, and KTO.

algorithms.md §3 and §8.2. Inputs are `[N]` summed completion log-probs of single examples with a boolean
`is_desirable[N]` (thumbs-up); losses are per-example `[N]`, reduced by the caller with a mean over all
examples (TRL's nanmean, classes weighted by their batch counts). State is plain tuples of arrays, so it
is a pytree that jits, shards and checkpoints like any other. Under SPMD the arrays are global, so the
batch statistics below are already what TRL obtains by all-reducing across processes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
RunningMeanState = tuple[Array, Array]  # (mean, count)

_COUNT0 = 1e-24  # TRL RunningMoments' initial count: the first update returns the batch mean


def running_mean_init(dtype=jnp.float32) -> RunningMeanState:
  """Fresh `(mean, count) = (0, 1e-24)`, as TRL `RunningMoments`."""
  return jnp.zeros((), dtype), jnp.asarray(_COUNT0, dtype)


def running_mean_update(state: RunningMeanState, values: Array, mask: Array | None = None) -> RunningMeanState:
  """Count-weighted running mean (TRL `RunningMoments.update`, mean part; not an EMA).

  `mean += (batch_mean − mean)·n/(count + n)` with `n` the number of (unmasked) values. Call it with the
  current batch BEFORE computing the loss and use the new mean as δ (TRL includes the current batch).
  A scalar `values` counts as one observation (`bco_pair` pushes one per-batch mean per step).
  Values are detached; an all-masked batch leaves the state unchanged.
  """
  mean, count = state
  values = jax.lax.stop_gradient(jnp.asarray(values, mean.dtype))
  mask = jnp.ones(values.shape, bool) if mask is None else jnp.asarray(mask, bool)
  n = jnp.sum(mask).astype(mean.dtype)
  batch_mean = jnp.sum(jnp.where(mask, values, 0)) / jnp.maximum(n, 1)
  total = count + n
  return mean + (batch_mean - mean) * n / total, total


def class_balanced_init(dtype=jnp.float32) -> tuple[RunningMeanState, RunningMeanState]:
  """Two running means, `(desirable, undesirable)`, for the class-balanced δ estimator."""
  return running_mean_init(dtype), running_mean_init(dtype)


def class_balanced_update(state: tuple[RunningMeanState, RunningMeanState], values: Array,
                          is_desirable: Array, mask: Array | None = None
                          ) -> tuple[RunningMeanState, RunningMeanState]:
  """Updates each class's running mean with its own rows (TRL semantics per class)."""
  pos = jnp.asarray(is_desirable, bool)
  mask = jnp.ones(pos.shape, bool) if mask is None else jnp.asarray(mask, bool)
  return (running_mean_update(state[0], values, mask & pos),
          running_mean_update(state[1], values, mask & ~pos))


def class_balanced_delta(state: tuple[RunningMeanState, RunningMeanState]) -> Array:
  """δ = ½(mean₊ + mean₋): the midpoint that minimises the BCE–DPO gap (§3.2), robust to class imbalance.

  Before a class has been seen its (zero) mean is meaningless, so the other class's mean is used alone;
  with neither seen δ = 0.
  """
  (m_pos, c_pos), (m_neg, c_neg) = state
  seen_pos, seen_neg = c_pos >= 0.5, c_neg >= 0.5  # counts are integers plus 1e-24
  both = 0.5 * (m_pos + m_neg)
  return jnp.where(seen_pos & seen_neg, both, jnp.where(seen_pos, m_pos, jnp.where(seen_neg, m_neg, 0)))


def udm_weights(prob_desirable: Array, is_desirable: Array, clip: tuple[float, float] = (0.5, 10.0)) -> Array:
  """UDM density-ratio weights (§3.4): `clip(p/(1−p+1e-8), lo, hi)` on thumbs-down rows, 1 on thumbs-up.

  `p = P(D+ | x)` from a class-balanced prompt classifier, so the odds estimate `p₊(x)/p₋(x)`.
  """
  p = jnp.asarray(prob_desirable)
  w = jnp.clip(p / (1 - p + 1e-8), clip[0], clip[1])  # 1e-8 as TRL: p = 1 must not divide by zero
  return jnp.where(jnp.asarray(is_desirable, bool), jnp.ones_like(w), w)


def bco_loss(policy_logps: Array, reference_logps: Array, is_desirable: Array, *, beta: float = 0.1,
             delta: Array | float, udm_weight: Array | None = None) -> Array:
  """Per-example BCO (§3.1, §3.4): `−log σ(r − δ)` on thumbs-up, `−w·log σ(−(r − δ))` on thumbs-down.

  `r = β(S_θ − S_ref)`; δ (reward units, no gradient) comes from `running_mean_update` (TRL) or
  `class_balanced_delta`; it has no default so a forgotten shift is not silently plain BCE (δ = 0).
  `udm_weight` (from `udm_weights`) scales thumbs-down rows only.
  """
  r = beta * (policy_logps - reference_logps)
  d = jax.lax.stop_gradient(jnp.asarray(delta, r.dtype))
  pos = jnp.asarray(is_desirable, bool)
  neg_loss = jax.nn.softplus(r - d)
  if udm_weight is not None:
    neg_loss = neg_loss * jax.lax.stop_gradient(jnp.asarray(udm_weight, r.dtype))
  return jnp.where(pos, jax.nn.softplus(-(r - d)), neg_loss)


def kto_kl_baseline(kl_policy: Array, kl_reference: Array) -> Array:
  """KTO reference point `z₀ = max(0, sg(mean(S_θ(x, y') − S_ref(x, y'))))` over mismatched pairs (§8.2)."""
  return jax.lax.stop_gradient(jnp.maximum(jnp.mean(kl_policy - kl_reference), 0))


def kto_loss(policy_logps: Array, reference_logps: Array, is_desirable: Array, kl_policy: Array,
             kl_reference: Array, *, beta: float = 0.1, lambda_d: float = 1.0, lambda_u: float = 1.0) -> Array:
  """Per-example KTO (§8.2, TRL's Eq. 7): `λ_D σ(−β(ρ − z₀))` desirable, `λ_U σ(−β(z₀ − ρ))` undesirable.

  `kl_policy`, `kl_reference` are summed log-probs of mismatched completions (`y'` taken from another
  example of the batch, TRL cycles by one); z₀ is their clamped, detached mean log-ratio.
  """
  rho = policy_logps - reference_logps
  z0 = kto_kl_baseline(kl_policy, kl_reference).astype(rho.dtype)
  pos = jnp.asarray(is_desirable, bool)
  # 1 − σ(z) written as σ(−z): no cancellation when σ(z) ≈ 1.
  return jnp.where(pos, lambda_d * jax.nn.sigmoid(-beta * (rho - z0)),
                   lambda_u * jax.nn.sigmoid(-beta * (z0 - rho)))
