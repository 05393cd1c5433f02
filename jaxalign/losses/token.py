"""The token discriminator's loss (TLCR, algorithms.md §6.2).

Two classes per token, class 0 negative and class 1 positive. Labels in {−1, 0, +1} become soft
targets: +1 → [0, 1], −1 → [1, 0], 0 (unchanged) → [½, ½], so unchanged tokens are pulled towards
D = ½, a reward of 0. The loss of a sequence is the mean soft-target cross-entropy over its labelled
tokens; `hard_label=True` leaves the unchanged tokens out (plain cross-entropy on the edited ones).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def soft_targets(labels_BxT: Array, dtype=jnp.float32) -> Array:
  """`[B, T, 2]` targets `[P(negative), P(positive)]` of labels in {−1, 0, +1}."""
  pos = (labels_BxT.astype(dtype) + 1.0) / 2.0
  return jnp.stack([1.0 - pos, pos], axis=-1)


def token_discriminator_loss(logits_BxTx2: Array, labels_BxT: Array, mask_BxT: Array, *,
                             hard_label: bool = False) -> Array:
  """Per-sequence loss `[B]`: mean over the sequence's labelled tokens of `−Σ_c t_c log softmax(z)_c`.

  `mask` marks the tokens that carry a label (the response, not the prompt or padding); with
  `hard_label` the unchanged (0) tokens are dropped too. A sequence with no such token has loss 0.
  """
  dtype = jnp.promote_types(logits_BxTx2.dtype, jnp.float32)  # float32, or float64 in parity tests
  logp = jax.nn.log_softmax(logits_BxTx2.astype(dtype), axis=-1)
  ce = -jnp.sum(soft_targets(labels_BxT, dtype) * logp, axis=-1)
  m = mask_BxT > 0
  if hard_label:
    m = m & (labels_BxT != 0)
  m = m.astype(dtype)
  return jnp.sum(ce * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)


def token_metrics(logits_BxTx2: Array, labels_BxT: Array, mask_BxT: Array) -> dict:
  """Sums over the batch for the loop's weighted means: accuracy on edited tokens (sign of the label) and
  the mean P(positive) on positive, negative and unchanged tokens (as `(sum, count)` pairs)."""
  p = jax.nn.softmax(logits_BxTx2.astype(jnp.float32), axis=-1)[..., 1]
  m = mask_BxT > 0
  out = {}
  for name, sel in (("positive", labels_BxT > 0), ("negative", labels_BxT < 0), ("unchanged", labels_BxT == 0)):
    s = (m & sel).astype(jnp.float32)
    out[f"p_{name}"] = (jnp.sum(p * s), jnp.sum(s))
  edited = (m & (labels_BxT != 0)).astype(jnp.float32)
  right = jnp.where(labels_BxT > 0, p > 0.5, p < 0.5).astype(jnp.float32)
  out["token_accuracy"] = (jnp.sum(right * edited), jnp.sum(edited))
  return out
