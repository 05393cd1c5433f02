"""Online preference losses: online IPO / IPO-MD and Nash-MD-PG (algorithms.md §4.4–4.8).

Pure functions on arrays. Samples carry no gradient (they were drawn outside the step); the
gradient flows only through the policy log-probs given here.

  online_ipo   `(h − target)²`, h = ρ(y) − ρ(y') (summed or length-normalised log-ratios),
               target `(P − ½)/τ` (soft) or `(I − ½)/τ` for a sampled label I (hard)
  nash_md_pg   `kl_coef·Σ_t sg(k_t)·ℓ_θ[t] − (P − ½)·Σ_t ℓ_θ[t]` on the learner sample y ~ π_θ,
               k_t = ℓ_θ[t] − ℓ_ref[t] ("token", TRL's diagonal estimator) or the reward-to-go
               Σ_{s≥t}(ℓ_θ[s] − ℓ_ref[s]) ("sequence", the REINFORCE gradient of the sequence KL)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def geometric_mixture_logprobs(policy_logits: Array, ref_logits: Array, beta) -> Array:
  """`log softmax((1 − β)·policy + β·reference)` over the last axis (one decoding step, NASH-1)."""
  return jax.nn.log_softmax((1 - beta) * policy_logits + beta * ref_logits, axis=-1)


def ipo_target(pref_prob: Array, *, tau: float, label: Array | None = None) -> Array:
  """Soft target `(P − ½)/τ`, or with a 0/1 `label` (1: the first sample wins) `(I − ½)/τ = ±1/(2τ)`."""
  p = pref_prob if label is None else jnp.asarray(label).astype(jnp.result_type(pref_prob))
  return (p - 0.5) / tau


def online_ipo(policy_logps_a: Array, policy_logps_b: Array, ref_logps_a: Array, ref_logps_b: Array,
               pref_prob: Array, *, tau: float = 0.1, length_normalize: bool = False,
               lengths_a: Array | None = None, lengths_b: Array | None = None,
               label: Array | None = None) -> Array:
  """Per-pair online IPO loss `[B]` for `P(a ≻ b) = pref_prob` (§4.6; IPO-MD §4.7 uses the same loss).

  `label=None`: soft target `(P − ½)/τ`; else the hard label I ∈ {0, 1} (same expected gradient,
  more variance). `length_normalize`: log-ratios divided by the token counts `lengths_*` (≥ 1).
  """
  rho_a, rho_b = policy_logps_a - ref_logps_a, policy_logps_b - ref_logps_b
  if length_normalize:
    if lengths_a is None or lengths_b is None:
      raise ValueError("online_ipo(length_normalize=True) needs lengths_a and lengths_b")
    rho_a = rho_a / jnp.maximum(jnp.asarray(lengths_a).astype(rho_a.dtype), 1)
    rho_b = rho_b / jnp.maximum(jnp.asarray(lengths_b).astype(rho_b.dtype), 1)
  return jnp.square(rho_a - rho_b - ipo_target(pref_prob, tau=tau, label=label))


def reward_to_go(x_BxT: Array, mask_BxT: Array) -> Array:
  """`Σ_{s≥t} x[s]` over masked positions (0 on padding)."""
  x = jnp.where(mask_BxT > 0, x_BxT, 0.0)
  return jnp.where(mask_BxT > 0, jnp.flip(jnp.cumsum(jnp.flip(x, -1), -1), -1), 0.0)


def nash_md_pg(policy_token_logps: Array, ref_token_logps: Array, mask: Array, pref_prob: Array, *,
               kl_coef: float = 0.1, kl_estimator: str = "token") -> Array:
  """Per-sample Nash-MD-PG surrogate `[B]` (minimise), y ~ π_θ scored against y' ~ π_mix (§4.4–4.5).

  Its gradient is `Σ_t ∇ℓ_θ[t]·(kl_coef·k_t − (P − ½))`; the value itself is not a meaningful
  objective. `kl_estimator`: "token" (TRL, NASH-2) or "sequence" (reward-to-go; unbiased).
  """
  m = mask > 0
  lp = jnp.where(m, policy_token_logps, 0.0)
  ratio = jax.lax.stop_gradient(jnp.where(m, policy_token_logps - ref_token_logps, 0.0))
  if kl_estimator == "token":
    k = ratio
  elif kl_estimator == "sequence":
    k = reward_to_go(ratio, mask)
  else:
    raise ValueError(f"nash_md_pg: kl_estimator must be 'token' or 'sequence', got {kl_estimator!r}")
  score = jax.lax.stop_gradient(pref_prob - 0.5) * jnp.sum(lp, -1)
  return kl_coef * jnp.sum(k * lp, -1) - score


def sequence_kl(policy_token_logps: Array, ref_token_logps: Array, mask: Array) -> Array:
  """`Σ_t (ℓ_θ[t] − ℓ_ref[t])` `[B]`: on samples of π_θ, an unbiased estimate of KL(π_θ‖π_ref)."""
  return jnp.sum(jnp.where(mask > 0, policy_token_logps - ref_token_logps, 0.0), -1)
