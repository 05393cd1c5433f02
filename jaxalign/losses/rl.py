"""Losses of the seeds' RL methods (algorithms.md §8.5, §8.6, §8.11, §8.12). Pure functions on arrays.

  online_dpo         DPO on an online pair (BPO's DAP loss, §8.12): soft target P or hard label I
  disco_scores       DisCO's token-averaged scores s_logL = mean_t ℓ_θ, s_Lratio = mean_t π_θ/π_old (§8.6)
  disco_objective    J(q) per prompt from its G scores and binary rewards: DisCO (DRO over negatives,
                     `τ·log Σ exp(s/τ)`) or DisCO-b (difference of means); 0 for all-same groups
  disco_penalty      the squared-hinge trust region `(β_c/2)·[KL̂ − δ]₊²` against the rollout policy
  f_prime            f'(t) of the f-DPG generators from log t (reverse KL, forward KL, Jensen–Shannon, TV)
  f_dpg_weights      f-DPG's per-sample policy-gradient weights `f'(t_i) − b` and the batch's log Ẑ
  running_log_z      the checkpointed running importance-sampling estimate of log Z
  reset_probs        DR-PO's reset distribution over prefix lengths h (0 = no reset), for tests and docs
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DIVERGENCES = ("rkl", "fkl", "js", "tv")
DISCO_SCORES = ("logL", "Lratio")
DISCO_VARIANTS = ("disco", "disco_b")


# ---- BPO / online DPO ----

def online_dpo(policy_logps_a: Array, policy_logps_b: Array, ref_logps_a: Array, ref_logps_b: Array,
               pref_prob: Array, *, beta: float = 0.1, label: Array | None = None) -> Array:
  """Per-pair DPO loss `[B]` on an online pair with `P(a ≻ b) = pref_prob`.

  Soft (`label=None`): the expected DPO loss under the annotator, `−P·log σ(βh) − (1 − P)·log σ(−βh)`;
  hard: `−log σ(±βh)` for the sampled winner (I = 1: a wins). h = ρ(a) − ρ(b). With BPO the
  reference log-probs are the behaviour model's.
  """
  h = beta * ((policy_logps_a - ref_logps_a) - (policy_logps_b - ref_logps_b))
  p = pref_prob if label is None else jnp.asarray(label).astype(jnp.result_type(pref_prob))
  return -(p * jax.nn.log_sigmoid(h) + (1.0 - p) * jax.nn.log_sigmoid(-h))


# ---- DisCO ----

def disco_scores(logps_BxT: Array, logps_old_BxT: Array, mask_BxT: Array, *, score: str = "logL") -> Array:
  """`[B]` token-averaged scores: `logL` = mean_t ℓ_θ, `Lratio` = mean_t exp(ℓ_θ − ℓ_old)."""
  m = mask_BxT > 0
  n = jnp.maximum(jnp.sum(m, -1), 1).astype(logps_BxT.dtype)
  if score == "logL":
    x = logps_BxT
  elif score == "Lratio":
    x = jnp.exp(jnp.where(m, logps_BxT - logps_old_BxT, 0.0))
  else:
    raise ValueError(f"disco_scores: score must be one of {DISCO_SCORES}, got {score!r}")
  return jnp.sum(jnp.where(m, x, 0.0), -1) / n


def disco_objective(s_QxG: Array, positive_QxG: Array, *, tau: float = 10.0, variant: str = "disco"
                    ) -> tuple[Array, Array]:
  """`(J [Q], valid [Q])`: per prompt, `mean_{O⁺} s − τ·log Σ_{O⁻} exp(s/τ)` (disco) or
  `mean_{O⁺} s − mean_{O⁻} s` (disco_b); prompts whose G rewards are all 1 or all 0 get J = 0, valid False.

  The value is J itself (the authors' code returns a surrogate of value 1 for the log-sum-exp term; the
  gradients are the same).
  """
  pos = positive_QxG > 0
  neg = ~pos
  n_pos, n_neg = jnp.sum(pos, -1), jnp.sum(neg, -1)
  valid = (n_pos > 0) & (n_neg > 0)
  dt = s_QxG.dtype
  mean_pos = jnp.sum(jnp.where(pos, s_QxG, 0.0), -1) / jnp.maximum(n_pos, 1).astype(dt)
  if variant == "disco":
    z = jnp.where(neg, s_QxG / tau, -jnp.inf)
    z = jnp.where(valid[:, None], z, 0.0)  # all-positive rows: no −inf−(−inf) in the gradient
    neg_term = tau * jax.nn.logsumexp(z, axis=-1)
  elif variant == "disco_b":
    neg_term = jnp.sum(jnp.where(neg, s_QxG, 0.0), -1) / jnp.maximum(n_neg, 1).astype(dt)
  else:
    raise ValueError(f"disco_objective: variant must be one of {DISCO_VARIANTS}, got {variant!r}")
  return jnp.where(valid, mean_pos - neg_term, 0.0), valid


def disco_penalty(kl: Array, *, delta: float = 1e-4, beta_c: float = 1e3) -> Array:
  """`(β_c/2)·[KL̂ − δ]₊²`; its gradient is `β_c·[KL̂ − δ]₊·∇KL̂` (the authors' implementation)."""
  return 0.5 * beta_c * jnp.square(jnp.maximum(kl - delta, 0.0))


def token_kl(logps_old_BxT: Array, logps_BxT: Array, mask_BxT: Array) -> Array:
  """KL̂ = masked mean over all tokens of `ℓ_old − ℓ_θ` (DisCO's `ppo_kl_type=kl`)."""
  m = mask_BxT > 0
  return jnp.sum(jnp.where(m, logps_old_BxT - logps_BxT, 0.0)) / jnp.maximum(jnp.sum(m), 1).astype(logps_BxT.dtype)


# ---- f-DPG ----

def f_prime(log_t: Array, divergence: str) -> Array:
  """f'(t) from log t, for D_f(π_θ‖p) with t = π_θ/p (numerically stable in log space)."""
  if divergence == "rkl":  # f = t log t
    return 1.0 + log_t
  if divergence == "fkl":  # f = −log t
    return -jnp.exp(-log_t)
  if divergence == "js":  # f = ½[t log t − (t+1) log((t+1)/2)];  f' = ½ log(2t/(1+t))
    return 0.5 * (jnp.log(2.0) + log_t - jax.nn.softplus(log_t))
  if divergence == "tv":  # f = ½|t − 1|
    return 0.5 * jnp.sign(log_t)
  raise ValueError(f"f_prime: divergence must be one of {DIVERGENCES}, got {divergence!r}")


def f_divergence_value(log_t: Array, divergence: str) -> Array:
  """f(t) from log t (for diagnostics: `mean_y~p f(π_θ/p)` estimates D_f)."""
  t = jnp.exp(log_t)
  if divergence == "rkl":
    return t * log_t
  if divergence == "fkl":
    return -log_t
  if divergence == "js":
    return 0.5 * (t * log_t - (t + 1.0) * (jax.nn.softplus(log_t) - jnp.log(2.0)))
  if divergence == "tv":
    return 0.5 * jnp.abs(t - 1.0)
  raise ValueError(f"f_divergence_value: divergence must be one of {DIVERGENCES}, got {divergence!r}")


def batch_log_z(log_p_unnorm: Array, logps: Array) -> Array:
  """log Ẑ_batch = log mean_i P(y_i)/π_θ(y_i), y_i ~ π_θ (an unbiased estimate of Z in its exponent's mean)."""
  w = log_p_unnorm - logps
  return jax.nn.logsumexp(w) - jnp.log(jnp.asarray(w.shape[0], w.dtype))


def running_log_z(log_z: Array, count: Array, batch_lz: Array, n: int) -> tuple[Array, Array]:
  """`(log Z, count)` after averaging `n` more importance weights (whose mean is exp(batch_lz)) into the
  running mean of `count` earlier ones. Z is a constant of the target, so every batch's estimate is unbiased
  for it whatever the policy that sampled it; the mean over all of them only gains precision."""
  c = count.astype(batch_lz.dtype)
  n_ = jnp.asarray(n, batch_lz.dtype)
  prev = jnp.where(c > 0, jnp.log(jnp.maximum(c, 1.0)) + log_z, -jnp.inf)
  new = jnp.logaddexp(prev, jnp.log(n_) + batch_lz) - jnp.log(c + n_)
  return new, count + n


def f_dpg_weights(logps: Array, ref_logps: Array, rewards: Array, log_z: Array, *, beta: float,
                  divergence: str = "js", baseline: str = "mean") -> tuple[Array, Array]:
  """`(weights [B], log_t [B])` of the f-DPG surrogate `mean_i sg(w_i)·S_θ(y_i)` (minimise), y_i ~ π_θ.

  Target `p(y) = π₀(y)·exp(r(y)/β) / Z`: `log t_i = S_θ(y_i) − S_0(y_i) − r_i/β + log Z`,
  `w_i = f'(t_i) − b` with `b` the batch mean of f'(t) (`baseline="mean"`) or 0 (`"none"`).
  """
  log_t = logps - ref_logps - rewards / beta + log_z
  fp = f_prime(log_t, divergence)
  if baseline == "mean":
    fp = fp - jnp.mean(fp)
  elif baseline != "none":
    raise ValueError(f"f_dpg_weights: baseline must be 'mean' or 'none', got {baseline!r}")
  return jax.lax.stop_gradient(fp), jax.lax.stop_gradient(log_t)


# ---- DR-PO ----

def reset_probs(ref_length: int, reset_prob: float) -> np.ndarray:
  """`P(h = k)`, k = 0 … L_ref − 1: h = 0 (no reset) with probability 1 − β_mix, else h uniform on
  1 … L_ref − 1; a reference shorter than 2 tokens never resets."""
  out = np.zeros(max(int(ref_length), 1), np.float64)
  if ref_length < 2:
    out[0] = 1.0
    return out
  out[0] = 1.0 - reset_prob
  out[1:] = reset_prob / (ref_length - 1)
  return out


def draw_resets(rng: np.random.Generator, ref_lengths: np.ndarray, reset_prob: float) -> np.ndarray:
  """Per row, the reset prefix length h (0 = start from the prompt) drawn from `reset_probs`."""
  ref_lengths = np.asarray(ref_lengths, np.int64)
  u, v = rng.random(ref_lengths.shape), rng.random(ref_lengths.shape)
  h = 1 + np.floor(v * np.maximum(ref_lengths - 1, 1)).astype(np.int64)
  return np.where((u < reset_prob) & (ref_lengths >= 2), np.minimum(h, ref_lengths - 1), 0)
