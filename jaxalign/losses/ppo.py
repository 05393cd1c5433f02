"""PPO's clipped policy and value losses and their diagnostics (algorithms.md §7.3).

Per-token functions return `[B, T]`; `ppo_loss` reduces them with masked means over
every response token of the (mini)batch, as lm-human-preferences, N+ and TRL do:

  ratio_t = exp(ℓ_θ − ℓ_old)
  L_pg = mean_t max(−A_t·ratio_t, −A_t·clip(ratio_t, 1−ε, 1+ε))
  L_v  = ½·mean_t max((V_θ − G_t)², (clip(V_θ, V_old−ε_v, V_old+ε_v) − G_t)²)
  L    = L_pg + c_v·L_v

A trainer that accumulates microbatches can instead sum the per-token values and
divide by the token count (`make_step`'s loss-sum / weight convention): the result is
the same masked mean over the whole minibatch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.advantages import masked_mean

Array = jax.Array


def log_ratio(logp_new_BxT: Array, logp_old_BxT: Array, mask_BxT: Array) -> Array:
  """`ℓ_θ − ℓ_old`, 0 on padding (so the ratio there is exactly 1 and never overflows)."""
  return jnp.where(mask_BxT > 0, logp_new_BxT - logp_old_BxT, 0.0)


def policy_loss_tokens(logp_new_BxT: Array, logp_old_BxT: Array, advantages_BxT: Array, mask_BxT: Array, *,
                       clip_eps: float = 0.2) -> tuple[Array, Array]:
  """Clipped surrogate per token and whether the clipped branch was taken; both 0 on padding."""
  ratio = jnp.exp(log_ratio(logp_new_BxT, logp_old_BxT, mask_BxT))
  unclipped = -advantages_BxT * ratio
  clipped = -advantages_BxT * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  m = mask_BxT > 0
  return jnp.where(m, jnp.maximum(unclipped, clipped), 0.0), m & (clipped > unclipped)


def value_loss_tokens(values_new_BxT: Array, values_old_BxT: Array, returns_BxT: Array, mask_BxT: Array, *,
                      clip_eps_v: float = 0.2) -> tuple[Array, Array]:
  """`½·max((V − G)², (V_clip − G)²)` per token and whether clipping won; both 0 on padding."""
  v_clip = values_old_BxT + jnp.clip(values_new_BxT - values_old_BxT, -clip_eps_v, clip_eps_v)
  unclipped = jnp.square(values_new_BxT - returns_BxT)
  clipped = jnp.square(v_clip - returns_BxT)
  m = mask_BxT > 0
  return jnp.where(m, 0.5 * jnp.maximum(unclipped, clipped), 0.0), m & (clipped > unclipped)


def ppo_loss(logp_new_BxT: Array, logp_old_BxT: Array, advantages_BxT: Array, values_new_BxT: Array,
             values_old_BxT: Array, returns_BxT: Array, mask_BxT: Array, *, clip_eps: float = 0.2,
             clip_eps_v: float = 0.2, vf_coef: float = 0.1, entropy_BxT: Array | None = None,
             pg_mask_BxT: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """`(L_pg + vf_coef·L_v, metrics)`, masked means over all response tokens.

  `pg_mask_BxT` (default `mask_BxT`): the tokens the policy loss averages over; DR-PO leaves out the
  teacher-forced reset prefix there while the value loss (and the KL penalty in the rewards) keep it.

  Metrics (detached): policy/value losses, `approxkl = ½·mean((ℓ_θ − ℓ_old)²)`,
  clip fractions, mean ratio, and the mean entropy when `entropy_BxT` is given.
  """
  pm = mask_BxT if pg_mask_BxT is None else pg_mask_BxT
  pg, pg_clipped = policy_loss_tokens(logp_new_BxT, logp_old_BxT, advantages_BxT, pm, clip_eps=clip_eps)
  vf, vf_clipped = value_loss_tokens(values_new_BxT, values_old_BxT, returns_BxT, mask_BxT,
                                     clip_eps_v=clip_eps_v)
  pg_loss, vf_loss = masked_mean(pg, pm), masked_mean(vf, mask_BxT)
  lr = log_ratio(logp_new_BxT, logp_old_BxT, mask_BxT)
  sg = jax.lax.stop_gradient
  dt = pg_loss.dtype
  metrics = {
      "policy_loss": sg(pg_loss), "value_loss": sg(vf_loss),
      "approxkl": sg(0.5 * masked_mean(jnp.square(lr), mask_BxT)),
      "policy_clipfrac": masked_mean(pg_clipped.astype(dt), pm),
      "value_clipfrac": masked_mean(vf_clipped.astype(dt), mask_BxT),
      "ratio": sg(masked_mean(jnp.exp(lr), mask_BxT)),
  }
  if entropy_BxT is not None:
    metrics["entropy"] = sg(masked_mean(entropy_BxT, mask_BxT))
  return pg_loss + vf_coef * vf_loss, metrics
