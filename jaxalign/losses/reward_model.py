"""Reward-model and preference-model losses (algorithms.md §9), per pair `[B]`.

  bradley_terry:  −log σ(r_w − r_l − m) + η·(r_w + r_l)²     (m = 0: plain BT; η = 0: no centring)
  preference_bce: −[I·log σ(f) + (1 − I)·log σ(−f)]           (f = logit of P(first ≻ second))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def bradley_terry(rewards_chosen: Array, rewards_rejected: Array, *, margin: Array | None = None,
                  center_coef: float = 0.0) -> Array:
  """Bradley–Terry loss per pair, with Llama 2's margin and Eisenstein et al.'s centring term."""
  z = rewards_chosen - rewards_rejected
  if margin is not None:
    z = z - margin
  loss = jax.nn.softplus(-z)
  if center_coef:
    loss = loss + center_coef * jnp.square(rewards_chosen + rewards_rejected)
  return loss


def preference_bce(logits: Array, first_preferred: Array) -> Array:
  """Binary cross-entropy of `P(first ≻ second) = σ(logit)` against a 0/1 (or soft) label."""
  label = jnp.asarray(first_preferred, logits.dtype)
  return label * jax.nn.softplus(-logits) + (1.0 - label) * jax.nn.softplus(logits)


def reward_metrics(rewards_chosen: Array, rewards_rejected: Array) -> dict[str, Array]:
  """Accuracy (strict `>`: ties are wrong), mean margin, mean and std of all rewards."""
  both = jnp.concatenate([rewards_chosen, rewards_rejected])
  return {"accuracy": jnp.mean((rewards_chosen > rewards_rejected).astype(both.dtype)),
          "margin": jnp.mean(rewards_chosen - rewards_rejected),
          "reward_mean": jnp.mean(both), "reward_std": jnp.std(both)}
