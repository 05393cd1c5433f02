"""Model scoring: completion log-probs of fixed-layout and packed batches.

The bottom of the stack for every method: trainers, the reference cache, evaluation and
the rewards all score completions with these (sequence rewards and token values of scalar
heads are `jaxalign.models.heads.sequence_score` / `token_values`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.logprobs import token_logps
from jaxalign.models.transformer import ModelConfig, Transformer, output_matrix_DxV, positions_from_mask

Array = jax.Array


def completion_token_logps(cfg: ModelConfig, params, prompt_BxP: Array, prompt_mask_BxP: Array,
                           completion_BxC: Array, completion_mask_BxC: Array, *,
                           chunk_size: int = 2048, with_entropy: bool = False):
  """Log-probs `[B, C]` of completion tokens given prompts (fixed P | C row layout)."""
  p = prompt_BxP.shape[1]
  c = completion_BxC.shape[1]
  tokens = jnp.concatenate([prompt_BxP, completion_BxC], axis=1)
  mask = jnp.concatenate([prompt_mask_BxP, completion_mask_BxC], axis=1).astype(jnp.int32)
  hidden, _ = Transformer(cfg).apply({"params": params}, tokens, positions_from_mask(mask), mask)
  # Only the C positions that predict completion tokens are scored.
  h_BxCxD = jax.lax.dynamic_slice_in_dim(hidden, p - 1, c, axis=1)
  return token_logps(h_BxCxD, output_matrix_DxV(cfg, params), completion_BxC,
                     chunk_size=chunk_size, with_entropy=with_entropy)


def packed_sequence_logps(cfg: ModelConfig, params, b: dict, n_seqs: int, *, chunk_size: int = 2048) -> Array:
  """Summed completion log-probs `[n_seqs]` of a packed batch (`jaxalign.data.packing`).

  Only the `[G, N]` scored slots go through the vocabulary projection; slot sums are
  scattered to their sequence by `seq_idx` (unused slots point past the end and are dropped).
  """
  hidden_RxLxD, _ = Transformer(cfg).apply({"params": params}, b["tokens"], b["positions"], b["segment_ids"],
                                           branch_ids_BxL=b.get("branch_ids"))
  r, l, d = hidden_RxLxD.shape
  g = b["score_pos"].shape[0]
  hidden_GxMxD = hidden_RxLxD.reshape(g, (r // g) * l, d)  # each block's rows, flattened
  # Picking the scored positions as a one-hot matmul (exact) keeps the block axis sharded in both
  # passes, where a gather's transpose (a scatter) makes the partitioner replicate.
  pick_GxNxM = (b["score_pos"][..., None] == jnp.arange(hidden_GxMxD.shape[1])).astype(hidden_GxMxD.dtype)
  h_GxNxD = jnp.einsum("GNM,GMD->GND", pick_GxNxM, hidden_GxMxD)
  lp_GxN = token_logps(h_GxNxD, output_matrix_DxV(cfg, params), b["targets"], chunk_size=chunk_size)
  idx = b["seq_idx"].reshape(-1)
  lp = jnp.where(idx < n_seqs, lp_GxN.reshape(-1), 0.0)
  return jax.ops.segment_sum(lp, idx, num_segments=n_seqs + 1)[:n_seqs]
