"""Per-token log-probs of given tokens, from hidden states, chunked over the vocabulary.

`token_logps(hidden_BxTxD, w_DxV, targets_BxT)` is exactly
`take_along_axis(log_softmax(hidden @ w), targets)` in float32, but it scans over
vocabulary chunks with a running logsumexp and rematerialises each chunk in the
backward pass, so neither pass ever holds the `[B, T, V]` logits.
Callers pass only the positions they score (completion positions), not the whole row.

The log-probs alone have a hand-written backward (`custom_vjp`): per chunk,
d logits = g * (onehot(target) - softmax), one elementwise pass from the saved
logsumexp, instead of differentiating the forward scan (whose gather and masking
transpose into a scatter and extra passes over every `[B, T, chunk]` block).
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
  if not with_entropy:
    return _logps(hidden_BxTxD, w_DxV, targets_BxT, min(chunk_size, w_DxV.shape[1]))
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


def _chunk_logits(h_BxTxD: Array, w_DxV: Array, c: Array, chunk: int):
  """Logits of vocabulary chunk `c` (`[B, T, chunk]` float32), its first column, and which of its
  columns are new: the last chunk is clamped to end at V, so it may repeat columns."""
  v = w_DxV.shape[1]
  start = jnp.minimum(c * chunk, v - chunk)
  w_Dxc = jax.lax.dynamic_slice_in_dim(w_DxV, start, chunk, axis=1)
  logits_BxTxc = jnp.einsum("BTD,Dc->BTc", h_BxTxD, w_Dxc.astype(h_BxTxD.dtype), preferred_element_type=jnp.float32)
  return logits_BxTxc, start, w_Dxc, start + jnp.arange(chunk) >= c * chunk


def _logps_fwd(h_BxTxD, w_DxV, targets_BxT, chunk):
  b, t, _ = h_BxTxD.shape
  n_chunks = -(-w_DxV.shape[1] // chunk)

  def body(carry, c):
    m_BxT, s_BxT, tgt_BxT = carry
    logits_BxTxc, start, _, fresh = _chunk_logits(h_BxTxD, w_DxV, c, chunk)
    logits_BxTxc = jnp.where(fresh, logits_BxTxc, -jnp.inf)
    m_new = jnp.maximum(m_BxT, jnp.max(logits_BxTxc, axis=-1))
    s_new = s_BxT * jnp.exp(m_BxT - m_new) + jnp.sum(jnp.exp(logits_BxTxc - m_new[..., None]), axis=-1)
    local = targets_BxT - start
    in_chunk = (targets_BxT >= c * chunk) & (local < chunk)
    picked = jnp.take_along_axis(logits_BxTxc, jnp.clip(local, 0, chunk - 1)[..., None], axis=-1)[..., 0]
    return (m_new, s_new, jnp.where(in_chunk, picked, tgt_BxT)), None

  init = (jnp.full((b, t), -jnp.inf, jnp.float32), jnp.zeros((b, t), jnp.float32), jnp.zeros((b, t), jnp.float32))
  (m, s, tgt), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
  lse_BxT = m + jnp.log(s)
  return tgt - lse_BxT, (h_BxTxD, w_DxV, targets_BxT, lse_BxT)


def _logps_bwd(chunk, res, g_BxT):
  h_BxTxD, w_DxV, targets_BxT, lse_BxT = res
  n_chunks = -(-w_DxV.shape[1] // chunk)
  g_BxT = g_BxT.astype(jnp.float32)

  def body(carry, c):
    dh_BxTxD, dw_DxV = carry
    logits_BxTxc, start, w_Dxc, fresh = _chunk_logits(h_BxTxD, w_DxV, c, chunk)
    onehot = (start + jnp.arange(chunk)) == targets_BxT[..., None]
    # d log p(target) / d logit_j = [j == target] - p_j; repeated columns of the last chunk get 0.
    dlogits_BxTxc = jnp.where(fresh, g_BxT[..., None] * (onehot - jnp.exp(logits_BxTxc - lse_BxT[..., None])), 0.0)
    dh_BxTxD = dh_BxTxD + jnp.einsum("BTc,Dc->BTD", dlogits_BxTxc.astype(h_BxTxD.dtype), w_Dxc.astype(h_BxTxD.dtype),
                                     preferred_element_type=jnp.float32)
    dw_Dxc = jnp.einsum("BTD,BTc->Dc", h_BxTxD, dlogits_BxTxc.astype(h_BxTxD.dtype),
                        preferred_element_type=jnp.float32)
    old = jax.lax.dynamic_slice_in_dim(dw_DxV, start, chunk, axis=1)
    return (dh_BxTxD, jax.lax.dynamic_update_slice_in_dim(dw_DxV, old + dw_Dxc, start, axis=1)), None

  init = (jnp.zeros(h_BxTxD.shape, jnp.float32), jnp.zeros(w_DxV.shape, jnp.float32))
  (dh, dw), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
  return dh.astype(h_BxTxD.dtype), dw.astype(w_DxV.dtype), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _logps(h_BxTxD: Array, w_DxV: Array, targets_BxT: Array, chunk: int) -> Array:
  return _logps_fwd(h_BxTxD, w_DxV, targets_BxT, chunk)[0]


_logps.defvjp(_logps_fwd, _logps_bwd)


def full_kl(h_BxTxD: Array, w_DxV: Array, h_ref_BxTxD: Array, w_ref_DxV: Array, *,
            chunk_size: int = 2048) -> Array:
  """Exact per-position KL `[B, T]` (float32), `Σ_v π(v)(log π(v) − log π_ref(v))`, over the whole vocabulary.

  π = softmax(h @ w), π_ref = softmax(h_ref @ w_ref) (divide the hidden states by a temperature first).
  One scan over vocabulary chunks keeps running maxima and sums of both softmaxes and the running
  `Σ e^{z−m}(z − z_ref)`: `KL = Σ e^{z−m}(z − z_ref) / s − lse + lse_ref`. Never holds `[B, T, V]`.
  """
  b, t, _ = h_BxTxD.shape
  v = w_DxV.shape[1]
  if w_ref_DxV.shape[1] != v:
    raise ValueError(f"full_kl: vocabularies differ ({v} vs {w_ref_DxV.shape[1]})")
  chunk = min(chunk_size, v)

  def body(carry, c):
    m, s, m_r, s_r, acc = carry
    z, _, _, fresh = _chunk_logits(h_BxTxD, w_DxV, c, chunk)
    z_r, _, _, _ = _chunk_logits(h_ref_BxTxD, w_ref_DxV, c, chunk)
    z = jnp.where(fresh, z, -jnp.inf)
    z_r = jnp.where(fresh, z_r, -jnp.inf)
    m_new, m_r_new = jnp.maximum(m, jnp.max(z, axis=-1)), jnp.maximum(m_r, jnp.max(z_r, axis=-1))
    scale = jnp.exp(m - m_new)
    e = jnp.exp(z - m_new[..., None])
    s_new = s * scale + jnp.sum(e, axis=-1)
    s_r_new = s_r * jnp.exp(m_r - m_r_new) + jnp.sum(jnp.exp(z_r - m_r_new[..., None]), axis=-1)
    acc_new = acc * scale + jnp.sum(jnp.where(fresh, e * (z - z_r), 0.0), axis=-1)
    return (m_new, s_new, m_r_new, s_r_new, acc_new), None

  ninf, zero = jnp.full((b, t), -jnp.inf, jnp.float32), jnp.zeros((b, t), jnp.float32)
  (m, s, m_r, s_r, acc), _ = jax.lax.scan(body, (ninf, zero, ninf, zero, zero), jnp.arange(-(-v // chunk)))
  return acc / s - (m + jnp.log(s)) + (m_r + jnp.log(s_r))


def full_kl_reference(h_BxTxD: Array, w_DxV: Array, h_ref_BxTxD: Array, w_ref_DxV: Array) -> Array:
  """Dense `[B, T, V]` KL, for tests only."""
  lp = jax.nn.log_softmax(jnp.einsum("BTD,DV->BTV", h_BxTxD, w_DxV, preferred_element_type=jnp.float32), -1)
  lr = jax.nn.log_softmax(jnp.einsum("BTD,DV->BTV", h_ref_BxTxD, w_ref_DxV, preferred_element_type=jnp.float32), -1)
  return jnp.sum(jnp.exp(lp) * (lp - lr), axis=-1)


def token_logps_reference(hidden_BxTxD: Array, w_DxV: Array, targets_BxT: Array) -> Array:
  """Plain `log_softmax` + gather: materialises `[B, T, V]`. For tests and benchmarks only."""
  logits = jnp.einsum("BTD,DV->BTV", hidden_BxTxD, w_DxV, preferred_element_type=jnp.float32)
  return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets_BxT[..., None], axis=-1)[..., 0]


def sequence_logps(token_logps_BxT: Array, mask_BxT: Array, average: bool = False) -> Array:
  """Summed (or length-averaged) log-probs over the masked positions, `[B]`."""
  mask = mask_BxT.astype(jnp.float32)
  total = jnp.sum(jnp.where(mask > 0, token_logps_BxT, 0.0), axis=-1)
  return total / jnp.maximum(mask.sum(-1), 1.0) if average else total
