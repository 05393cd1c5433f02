"""PPO's per-token rewards, GAE, returns, masked whitening and the KL controller (algorithms.md §7).

Pure functions on arrays `[B, T]` over response tokens (`T` = completion length),
meant to run inside the one compiled PPO step. `mask_BxT` is 1 on response tokens
(the EOS included) and 0 on padding; every reduction is over masked entries only, so
on a mesh they are global over the rollout batch. Conventions where reference
implementations differ are keyword arguments (defaults follow TRL / N+):

  KL estimator            k1 = log π_old − log π_ref (default) | k3 = (e^{−k1} − 1) + k1
  score position          the last real response token (the EOS when present)
  missing EOS             "subtract" a penalty (TRL) | "replace" the score by a value (lm-h-p, N+: −1)
  whitening variance      unbiased (TRL, N+) | biased (lm-human-preferences)
  adaptive KL coefficient Ziegler et al.: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Log-prob stored at padding positions for both policy and reference (TRL), so KL there is 0.
INVALID_LOGPROB = 1.0


def masked_sum(x: Array, mask: Array) -> Array:
  return jnp.sum(jnp.where(mask > 0, x, 0.0))


def masked_mean(x: Array, mask: Array) -> Array:
  """Mean over masked entries (0 if there are none)."""
  return masked_sum(x, mask) / jnp.maximum(jnp.sum(mask > 0), 1).astype(x.dtype)


def masked_var(x: Array, mask: Array, *, unbiased: bool = True) -> Array:
  """Variance over masked entries; `unbiased` applies Bessel's correction n/(n−1)."""
  n = jnp.sum(mask > 0).astype(x.dtype)
  mean = masked_mean(x, mask)
  var = masked_sum(jnp.square(x - mean), mask) / jnp.maximum(n, 1.0)
  if unbiased:
    var = var * n / jnp.maximum(n - 1.0, 1.0)
  return var


def masked_whiten(x: Array, mask: Array, *, shift_mean: bool = True, unbiased: bool = True,
                  eps: float = 1e-8) -> Array:
  """`(x − mean)/sqrt(var + eps)` over masked entries; 0 at masked-out positions.

  `shift_mean=False` adds the mean back (only the scale changes): the form used to
  whiten rewards, while advantages are whitened with `shift_mean=True`.
  """
  mean, var = masked_mean(x, mask), masked_var(x, mask, unbiased=unbiased)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return jnp.where(mask > 0, out, 0.0)


def kl_per_token(logp_BxT: Array, ref_logp_BxT: Array, mask_BxT: Array, *, estimator: str = "k1") -> Array:
  """Per-token KL estimate of π_old against π_ref on sampled tokens; 0 on padding.

  k1 = log π − log π_ref (unbiased, can be negative); k3 = (e^{−k1} − 1) + k1 (unbiased, ≥ 0).
  """
  k1 = jnp.where(mask_BxT > 0, logp_BxT - ref_logp_BxT, 0.0)
  if estimator == "k1":
    return k1
  if estimator == "k3":
    return jnp.where(mask_BxT > 0, jnp.expm1(-k1) + k1, 0.0)
  raise ValueError(f"unknown KL estimator {estimator!r} (k1 | k3)")


def last_token_index(mask_BxT: Array) -> Array:
  """Index `[B]` of the last real token of each row (0 for an empty row)."""
  t = jnp.arange(mask_BxT.shape[-1])
  return jnp.maximum(jnp.max(jnp.where(mask_BxT > 0, t, -1), axis=-1), 0)


def penalize_missing_eos(score_B: Array, finished_B: Array, *, mode: str = "subtract",
                         penalty: float = 1.0, value: float = -1.0) -> Array:
  """Score of responses that never emitted EOS: `score − penalty` (TRL) or `value` (lm-h-p, N+)."""
  if mode == "none":
    return score_B
  if mode == "subtract":
    return jnp.where(finished_B, score_B, score_B - penalty)
  if mode == "replace":
    return jnp.where(finished_B, score_B, jnp.asarray(value, score_B.dtype))
  raise ValueError(f"unknown missing-EOS mode {mode!r} (none | subtract | replace)")


def ppo_rewards(score_B: Array, logp_old_BxT: Array, logp_ref_BxT: Array, mask_BxT: Array, *,
                kl_coef: float | Array, estimator: str = "k1", kl_BxT: Array | None = None,
                token_rewards_BxT: Array | None = None) -> tuple[Array, Array]:
  """Per-token rewards `R_t = r_t − β·k_t + 1[t = last real token]·score` and the KL `k_t` used.

  `kl_BxT` replaces the sampled-token estimate (e.g. the exact KL over the vocabulary, masked here);
  `token_rewards_BxT` are dense rewards `r_t` attached to each action (TLCR), default 0.
  Returns `(rewards_BxT, kl_BxT)`, both 0 on padding.
  """
  if kl_BxT is None:
    kl = kl_per_token(logp_old_BxT, logp_ref_BxT, mask_BxT, estimator=estimator)
  else:
    kl = jnp.where(mask_BxT > 0, kl_BxT, 0.0)
  at_end = jnp.arange(mask_BxT.shape[-1]) == last_token_index(mask_BxT)[:, None]
  at_end = at_end & (mask_BxT > 0)
  rewards = -kl_coef * kl + jnp.where(at_end, score_B[:, None], 0.0)
  if token_rewards_BxT is not None:
    rewards = rewards + jnp.where(mask_BxT > 0, token_rewards_BxT, 0.0)
  return rewards, kl


def gae(rewards_BxT: Array, values_BxT: Array, mask_BxT: Array, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Array, Array]:
  """Generalised advantage estimation by a reverse `lax.scan` over time.

  `δ_t = R_t + γ V_{t+1} − V_t`, `A_t = δ_t + γλ A_{t+1}`, `G_t = A_t + V_t`, with
  `V` and `A` after the last real token taken as 0. Masked-out positions are skipped
  (the recursion links each real token to the next real one) and get `A = G = 0`.
  Returns `(advantages_BxT, returns_BxT)`.
  """
  m = mask_BxT > 0
  r = jnp.where(m, rewards_BxT, 0.0)
  v = jnp.where(m, values_BxT, 0.0)

  def back(carry, xs):
    next_v, next_a = carry
    r_t, v_t, m_t = xs
    a_t = r_t + gamma * next_v - v_t + gamma * lam * next_a
    carry = (jnp.where(m_t, v_t, next_v), jnp.where(m_t, a_t, next_a))
    return carry, jnp.where(m_t, a_t, 0.0)

  zero = jnp.zeros(r.shape[:1], r.dtype)
  _, adv_TxB = jax.lax.scan(back, (zero, zero), (r.T, v.T, m.T), reverse=True)
  adv = adv_TxB.T
  return adv, jnp.where(m, adv + v, 0.0)


def adaptive_kl_coef(kl_coef: float | Array, current_kl: float | Array, n_steps: int | Array, *,
                     target: float, horizon: float) -> Array:
  """Ziegler et al.'s proportional controller, one update.

  `current_kl` is the batch mean of the summed per-sequence KL; `n_steps` the number of
  episodes (sequences) in the batch: `β·(1 + clip(KL/target − 1, −0.2, 0.2)·n_steps/horizon)`.
  """
  err = jnp.clip(jnp.asarray(current_kl) / target - 1.0, -0.2, 0.2)
  return jnp.asarray(kl_coef) * (1.0 + err * n_steps / horizon)


def update_kl_coef(kl_coef, current_kl, n_steps, *, adaptive: bool, target: float = 6.0,
                   horizon: float = 10000.0) -> Array:
  """The KL coefficient after a batch: adaptive (Ziegler) or fixed."""
  if not adaptive:
    return jnp.asarray(kl_coef)
  return adaptive_kl_coef(kl_coef, current_kl, n_steps, target=target, horizon=horizon)
