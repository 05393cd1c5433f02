"""DPO (Rafailov et al. 2023): `-log σ(β h)`, h the difference of policy/reference log-ratios.

Pairwise losses share one signature: `[B]` summed completion log-probs in, per-pair
losses `[B]` out, keyword-only hyper-parameters, float32 math. Reference log-probs
arrive already stop-gradiented (or precomputed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def log_ratio_margin(policy_chosen_logps: Array, policy_rejected_logps: Array,
                     reference_chosen_logps: Array, reference_rejected_logps: Array) -> Array:
  """h = [S_θ(y_w) − S_ref(y_w)] − [S_θ(y_l) − S_ref(y_l)]."""
  return (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)


def dpo(policy_chosen_logps: Array, policy_rejected_logps: Array, reference_chosen_logps: Array,
        reference_rejected_logps: Array, *, beta: float = 0.1) -> Array:
  """Per-pair DPO loss `softplus(−β h)` = `−log σ(β h)`."""
  h = log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                       reference_rejected_logps)
  return jax.nn.softplus(-beta * h)


def preference_metrics(policy_chosen_logps: Array, policy_rejected_logps: Array,
                       reference_chosen_logps: Array, reference_rejected_logps: Array, *,
                       beta: float) -> dict[str, Array]:
  """Implicit-reward metrics of algorithms.md §1.2 (means over the global batch of pairs)."""
  sg = jax.lax.stop_gradient
  r_w = beta * sg(policy_chosen_logps - reference_chosen_logps)
  r_l = beta * sg(policy_rejected_logps - reference_rejected_logps)
  return {
      "rewards/chosen": jnp.mean(r_w),
      "rewards/rejected": jnp.mean(r_l),
      "rewards/accuracies": jnp.mean((r_w > r_l).astype(jnp.float32)),  # strict: ties are wrong
      "rewards/margins": jnp.mean(r_w - r_l),
      "logps/chosen": jnp.mean(sg(policy_chosen_logps)),
      "logps/rejected": jnp.mean(sg(policy_rejected_logps)),
  }
