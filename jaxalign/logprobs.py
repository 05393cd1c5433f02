"""Per-token log-probs of given tokens, from hidden states, chunked over the vocabulary.

`token_logps(hidden_BxTxD, w_DxV, targets_BxT)` is exactly
`take_along_axis(log_softmax(hidden @ w), targets)` in float32, but it scans over
vocabulary chunks with a running logsumexp and rematerialises each chunk in the
backward pass, so neither pass ever holds the `[B, T, V]` logits.
Callers pass only the positions they score (completion positions), not the whole row.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("chunk_size", "with_entropy"))
def token_logps(hidden_BxTxD: Array, w_DxV: Array, targets_BxT: Array, *,
                chunk_size: int = 2048, with_entropy: bool = False):
  """Log-probs `[B, T]` (float32) of `targets` under `softmax(hidden @ w)`.

  With `with_entropy`, also returns the per-position entropy `[B, T]`.
  """
  b, t, d = hidden_BxTxD.shape
  v = w_DxV.shape[1]
  chunk = min(chunk_size, v)
  n_chunks = -(-v // chunk)
  h = hidden_BxTxD

  @jax.checkpoint  # recompute each chunk's logits in the backward pass
  def body(carry, c):
    m_BxT, s_BxT, tgt_BxT, zs_BxT = carry
    # Slice W in place (no padded or transposed copy of the [D, V] matrix). The last
    # chunk is clamped to end at V; its columns already seen by the previous chunk
    # are masked out.
    start = jnp.minimum(c * chunk, v - chunk)
    w_Dxc = jax.lax.dynamic_slice_in_dim(w_DxV, start, chunk, axis=1)
    logits_BxTxc = jnp.einsum("BTD,Dc->BTc", h, w_Dxc.astype(h.dtype),
                              preferred_element_type=jnp.float32)
    col = start + jnp.arange(chunk)
    fresh = col >= c * chunk
    logits_BxTxc = jnp.where(fresh, logits_BxTxc, -jnp.inf)
    m_new = jnp.maximum(m_BxT, jnp.max(logits_BxTxc, axis=-1))
    e_BxTxc = jnp.exp(logits_BxTxc - m_new[..., None])
    scale = jnp.exp(m_BxT - m_new)
    s_new = s_BxT * scale + jnp.sum(e_BxTxc, axis=-1)
    # Running sum of p_unnormalised * logit, for the entropy; masked columns add 0.
    zs_new = zs_BxT * scale + jnp.sum(jnp.where(fresh, e_BxTxc * logits_BxTxc, 0.0), axis=-1)
    local = targets_BxT - start
    in_chunk = (targets_BxT >= c * chunk) & (local < chunk)
    picked = jnp.take_along_axis(logits_BxTxc, jnp.clip(local, 0, chunk - 1)[..., None], axis=-1)[..., 0]
    tgt_new = jnp.where(in_chunk, picked, tgt_BxT)
    return (m_new, s_new, tgt_new, zs_new), None

  init = (jnp.full((b, t), -jnp.inf, jnp.float32), jnp.zeros((b, t), jnp.float32),
          jnp.zeros((b, t), jnp.float32), jnp.zeros((b, t), jnp.float32))
  (m, s, tgt, zs), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
  lse_BxT = m + jnp.log(s)
  logps_BxT = tgt - lse_BxT
  if with_entropy:
    return logps_BxT, lse_BxT - zs / s
  return logps_BxT


def token_logps_reference(hidden_BxTxD: Array, w_DxV: Array, targets_BxT: Array) -> Array:
  """Plain `log_softmax` + gather: materialises `[B, T, V]`. For tests and benchmarks only."""
  logits = jnp.einsum("BTD,DV->BTV", hidden_BxTxD, w_DxV, preferred_element_type=jnp.float32)
  return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets_BxT[..., None], axis=-1)[..., 0]


def sequence_logps(token_logps_BxT: Array, mask_BxT: Array, average: bool = False) -> Array:
  """Summed (or length-averaged) log-probs over the masked positions, `[B]`."""
  mask = mask_BxT.astype(jnp.float32)
  total = jnp.sum(jnp.where(mask > 0, token_logps_BxT, 0.0), axis=-1)
  return total / jnp.maximum(mask.sum(-1), 1.0) if average else total
