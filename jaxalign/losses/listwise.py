"""Listwise preference losses on K completions per prompt (algorithms.md §8.7): LiPO-λ and what it compares with.

Every loss takes `policy_logps, reference_logps` (`[B, K]` summed completion log-probs), `labels` (`[B, K]`,
ψ ∈ [0, 1], higher is better) and `mask` (`[B, K]` bool, False on padding of lists shorter than K), and
keyword-only hyper-parameters. The score of completion k is the DPO implicit reward `s = β(S_θ − S_ref)`.
A loss returns `(values [B], weights [B])`: the batch loss is `Σ values / Σ weights`. For a per-list
reduction every list has weight 1 (the mean over lists); for Rax's `pair_mean` the weight of a list is its
number of valid pairs, so the mean is over the pairs pooled over the whole (global) batch, as Rax computes it.

Pairs: `(i, j)` is valid when both are real and `ψ_i > ψ_j` (label ties excluded). Ranks τ come from the
current scores, sorted descending, ties to the earlier index, under `stop_gradient` (τ is piecewise constant).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array
DISCOUNTS = ("e", "2")
REDUCTIONS = ("list_sum", "pair_mean")


def _mask(labels: Array, mask: Array | None) -> Array:
  return jnp.ones(labels.shape, bool) if mask is None else jnp.asarray(mask, bool)


def valid_pairs(labels: Array, mask: Array | None = None) -> Array:
  """`[B, K, K]`: (i, j) with both real and ψ_i > ψ_j."""
  m = _mask(labels, mask)
  return (labels[..., :, None] > labels[..., None, :]) & m[..., :, None] & m[..., None, :]


def score_ranks(scores: Array, mask: Array | None = None) -> Array:
  """1-based rank of each score sorted descending (ties: the earlier index first; padding last)."""
  m = _mask(scores, mask)
  s = jnp.where(m, jax.lax.stop_gradient(scores), -jnp.inf)
  order = jnp.argsort(-s, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True) + 1


def lambda_weights(scores: Array, labels: Array, mask: Array | None = None, *, discount_base: str = "e",
                   scale_by_list_size: bool = False) -> Array:
  """LiPO-λ's `Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)|`, `G = 2^ψ − 1`, `D(τ) = log(1 + τ)` (natural log, Eq. 8;
  base 2 in Rax), times the list size K with `scale_by_list_size` (Rax; a padded list counts its real
  completions only). `[B, K, K]`, no gradient."""
  if discount_base not in DISCOUNTS:
    raise ValueError(f"lipo: discount_base must be one of {DISCOUNTS}, got {discount_base!r}")
  tau = score_ranks(scores, mask).astype(scores.dtype)
  inv = 1.0 / jnp.log1p(tau)
  if discount_base == "2":
    inv = inv * math.log(2.0)
  g = jnp.exp2(labels.astype(scores.dtype)) - 1
  w = jnp.abs(g[..., :, None] - g[..., None, :]) * jnp.abs(inv[..., :, None] - inv[..., None, :])
  if scale_by_list_size:  # the list's real size (padding excluded; without padding Rax's K)
    w = w * jnp.sum(_mask(labels, mask), axis=-1).astype(w.dtype)[..., None, None]
  return jax.lax.stop_gradient(w)


def _pairwise(pair_loss: Array, weights: Array, valid: Array, reduction: str) -> tuple[Array, Array]:
  if reduction not in REDUCTIONS:
    raise ValueError(f"listwise loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
  total = jnp.sum(jnp.where(valid, weights * pair_loss, 0), axis=(-2, -1))
  if reduction == "pair_mean":
    return total, jnp.sum(valid, axis=(-2, -1)).astype(total.dtype)
  return total, jnp.ones_like(total)


def _scores(policy_logps, reference_logps, beta):
  return beta * (policy_logps - reference_logps)


def lipo(policy_logps: Array, reference_logps: Array, labels: Array, mask: Array | None = None, *,
         beta: float = 0.05, discount_base: str = "e", scale_by_list_size: bool = False,
         reduction: str = "list_sum", lambda_weight: bool = True) -> tuple[Array, Array]:
  """LiPO-λ: `Σ_{ψ_i > ψ_j} Δ_ij log(1 + exp(−(s_i − s_j)))`.

  Defaults are the paper's Eq. 8 (natural-log discount, summed per list, mean over lists); the paper's
  numbers were computed with Rax: `discount_base="2", scale_by_list_size=True, reduction="pair_mean"`.
  `lambda_weight=False` gives every valid pair weight 1 (pair-logistic, DPO_BT over all pairs; K = 2 is DPO).
  """
  s = _scores(policy_logps, reference_logps, beta)
  valid = valid_pairs(labels, mask)
  pair = jax.nn.softplus(-(s[..., :, None] - s[..., None, :]))
  w = (lambda_weights(s, labels, mask, discount_base=discount_base, scale_by_list_size=scale_by_list_size)
       if lambda_weight else jnp.ones_like(pair))
  return _pairwise(pair, w, valid, reduction)


def pair_logistic(policy_logps: Array, reference_logps: Array, labels: Array, mask: Array | None = None, *,
                  beta: float = 0.05, reduction: str = "pair_mean") -> tuple[Array, Array]:
  """DPO_BT over every ordered valid pair (LiPO's Eq. 5; Rax `pairwise_logistic_loss`, pooled pair mean)."""
  return lipo(policy_logps, reference_logps, labels, mask, beta=beta, reduction=reduction, lambda_weight=False)


def list_mle(policy_logps: Array, reference_logps: Array, labels: Array, mask: Array | None = None, *,
             beta: float = 0.05) -> tuple[Array, Array]:
  """List-MLE / Plackett–Luce (DPO-PL, PRO): `−Σ_k [s_π(k) − log Σ_{j ≥ k} exp s_π(j)]`, π sorting the labels
  descending (ties: the earlier index first); padding is left out of every sum. Weight 1 per list."""
  m = _mask(labels, mask)
  s = _scores(policy_logps, reference_logps, beta)
  key = jnp.where(m, labels.astype(s.dtype), -jnp.inf)
  order = jnp.argsort(-key, axis=-1, stable=True)
  ss = jnp.take_along_axis(s, order, axis=-1)
  mm = jnp.take_along_axis(m, order, axis=-1)
  masked = jnp.where(mm, ss, -jnp.inf)
  # log Σ_{j ≥ k} exp s_π(j): a reversed cumulative logsumexp
  tail = jnp.flip(jax.lax.cumlogsumexp(jnp.flip(masked, -1), axis=masked.ndim - 1), -1)
  per = jnp.sum(jnp.where(mm, tail - ss, 0), axis=-1)
  return per, jnp.ones_like(per)


def softmax_listnet(policy_logps: Array, reference_logps: Array, labels: Array, mask: Array | None = None, *,
                    beta: float = 0.05, normalize_labels: bool = True) -> tuple[Array, Array]:
  """Softmax / ListNet (NCE): `−Σ_k (ψ_k / Σ_j ψ_j) log softmax(s)_k`; `normalize_labels=False` is Rax's default
  (labels not divided by their sum). Weight 1 per list."""
  m = _mask(labels, mask)
  s = jnp.where(m, _scores(policy_logps, reference_logps, beta), -jnp.inf)
  lsm = jax.nn.log_softmax(s, axis=-1)
  psi = jnp.where(m, labels.astype(lsm.dtype), 0)
  if normalize_labels:
    psi = psi / jnp.maximum(jnp.sum(psi, axis=-1, keepdims=True), 1e-30)
  per = -jnp.sum(jnp.where(m, psi * lsm, 0), axis=-1)
  return per, jnp.ones_like(per)


def listwise_metrics(policy_logps: Array, reference_logps: Array, labels: Array, mask: Array | None = None, *,
                     beta: float) -> dict[str, Array]:
  """Implicit-reward metrics over lists: the best- and worst-labelled completions' rewards and log-probs (the
  pairwise `rewards/chosen`/`rejected` for K = 2), their margin and how often the best outscores the worst,
  and the fraction of valid pairs the scores order correctly."""
  sg = jax.lax.stop_gradient
  m = _mask(labels, mask)
  s = beta * sg(policy_logps - reference_logps)
  lab = labels.astype(s.dtype)
  best = jnp.argmax(jnp.where(m, lab, -jnp.inf), axis=-1)[..., None]
  worst = jnp.argmin(jnp.where(m, lab, jnp.inf), axis=-1)[..., None]
  pick = lambda x, i: jnp.take_along_axis(x, i, axis=-1)[..., 0]
  valid = valid_pairs(labels, mask)
  right = jnp.sum(valid & (s[..., :, None] > s[..., None, :]))
  return {"rewards/chosen": jnp.mean(pick(s, best)), "rewards/rejected": jnp.mean(pick(s, worst)),
          "rewards/margins": jnp.mean(pick(s, best) - pick(s, worst)),
          "rewards/accuracies": jnp.mean((pick(s, best) > pick(s, worst)).astype(jnp.float32)),
          "rewards/pair_accuracy": right / jnp.maximum(jnp.sum(valid), 1),
          "logps/chosen": jnp.mean(pick(sg(policy_logps), best)),
          "logps/rejected": jnp.mean(pick(sg(policy_logps), worst))}


def d2o(policy_positive_logps: Array, reference_positive_logps: Array, policy_negative_logps: Array,
        reference_negative_logps: Array, mask: Array | None = None, *, beta: float = 0.1,
        alpha: float = 0.1) -> Array:
  """D²O (§8.10, Eq. 3), per negative: `−log σ((β/K) Σ_i ρ(y_i) − α ρ(y_l))` with `y_1..y_K` self-sampled
  "positives" (`[B, K]`; `mask` False on padding, K the real count) and the human negative `y_l` (`[B]`);
  ρ a summed log-ratio against the reference (π_{r−} = π_{r+} = the initial policy, as in the paper)."""
  m = _mask(policy_positive_logps, mask)
  rho = jnp.where(m, policy_positive_logps - reference_positive_logps, 0)
  k = jnp.maximum(jnp.sum(m, axis=-1), 1).astype(rho.dtype)
  z = beta * jnp.sum(rho, axis=-1) / k - alpha * (policy_negative_logps - reference_negative_logps)
  return jax.nn.softplus(-z)


def self_sampled_metrics(policy_logps: Array, reference_logps: Array, mask: Array | None = None, *,
                         beta: float) -> dict[str, Array]:
  """D²O's metrics on `[B, K + 1]` log-probs (K self-samples, the human negative last): mean implicit reward of
  the samples and of the negative, their margin, how often the samples' mean beats the negative."""
  sg = jax.lax.stop_gradient
  r = beta * sg(policy_logps - reference_logps)
  m = _mask(r[..., :-1], None if mask is None else mask[..., :-1])
  pos = jnp.sum(jnp.where(m, r[..., :-1], 0), -1) / jnp.maximum(jnp.sum(m, -1), 1)
  neg = r[..., -1]
  return {"rewards/samples": jnp.mean(pos), "rewards/rejected": jnp.mean(neg), "rewards/margins": jnp.mean(pos - neg),
          "rewards/accuracies": jnp.mean((pos > neg).astype(jnp.float32)),
          "logps/rejected": jnp.mean(sg(policy_logps[..., -1]))}


LISTWISE = {"lipo": lipo, "pair_logistic": pair_logistic, "list_mle": list_mle, "softmax": softmax_listnet}
# Losses on human negatives with self-sampled completions (the trainer samples them from the reference).
SELF_SAMPLED = {"d2o": d2o}
