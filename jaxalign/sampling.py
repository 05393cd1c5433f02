"""KV-cache sampling as one jitted loop.

Prompts are left-padded to a fixed length `P` (mask 0 on padding); the loop prefills
the cache with the prompt, then draws one token per iteration with temperature,
top-k and top-p, stops a row at EOS, and stops the loop when every row is done or
`max_new_tokens` is reached. Shapes are bucketed so a run does not compile once per
length: prompts are left-padded further to a bucket of `P` and the loop runs in a
buffer of a bucket of `max_new_tokens` (`jaxalign.data.packing.bucket`: exact up to
8, then four sizes per octave), with the real count as a loop bound. One compilation
per (B, bucket(P), bucket(T)); the extra padding is masked, so outputs do not change.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxalign.data.packing import bucket
from jaxalign.models.transformer import ModelConfig, Transformer, init_cache, output_matrix_DxV, positions_from_mask

Array = jax.Array


def filter_logits(logits_BxV: Array, *, temperature: float, top_k: int, top_p: float) -> Array:
  """Temperature, then top-k, then top-p (nucleus) filtering; returns float32 logits."""
  logits = logits_BxV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  v = logits.shape[-1]
  if 0 < top_k < v:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_desc = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # keep the smallest prefix whose mass reaches top_p (the first token always stays)
    cum_before = jnp.cumsum(probs, axis=-1) - probs
    cutoff_idx = jnp.sum(cum_before < top_p, axis=-1, keepdims=True) - 1
    cutoff = jnp.take_along_axis(sorted_desc, cutoff_idx, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def categorical(rng: Array, logits_BxV: Array) -> Array:
  """One draw per row from `softmax(logits)`, exactly, with about `2 sqrt(V)` random numbers per row.

  The vocabulary is cut into blocks of `K ~ sqrt(V)` tokens: a block is drawn with probability
  equal to its mass (Gumbel-max over the blocks' log-sum-exps), then a token within the block with
  its conditional probability. `P(block) P(token | block) = P(token)`, and `-inf` tokens (filtered
  out) are never drawn. Gumbel-max over the whole vocabulary needs `V` threefry draws per row,
  which cost 3x the decode step's output projection on CPU.
  """
  b, v = logits_BxV.shape
  if v <= 256:
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)
  k = 1 << math.ceil(math.log2(math.sqrt(v)))
  nb = -(-v // k)
  lg_BxNxK = jnp.pad(logits_BxV, ((0, 0), (0, nb * k - v)), constant_values=-jnp.inf).reshape(b, nb, k)
  rng_block, rng_token = jax.random.split(rng)
  block_B = jax.random.categorical(rng_block, jax.nn.logsumexp(lg_BxNxK, axis=-1), axis=-1)
  inner_BxK = jnp.take_along_axis(lg_BxNxK, block_B[:, None, None], axis=1)[:, 0]
  token_B = jax.random.categorical(rng_token, inner_BxK, axis=-1)
  return (block_B * k + token_B).astype(jnp.int32)


def _draw(rng: Array, logits_BxV: Array, temperature: float, top_k: int, top_p: float) -> Array:
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits_BxV, temperature=temperature, top_k=top_k, top_p=top_p)
  return categorical(rng, filtered)


def sample(params, prompt_BxP: Array, prompt_mask_BxP: Array, rng: Array, *, cfg: ModelConfig,
           max_new_tokens: int, eos_id: int, pad_id: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0):
  """Returns `(tokens_BxT, mask_BxT, finished_B)`, `T = max_new_tokens`.

  `mask` is 1 on generated tokens up to and including EOS; tokens after EOS are
  `pad_id`. `finished` says whether the row emitted EOS.
  """
  p = prompt_BxP.shape[1]
  extra = bucket(p) - p
  if extra:  # more left padding: masked keys, positions from the mask, so nothing changes
    prompt_BxP = jnp.pad(prompt_BxP, ((0, 0), (extra, 0)), constant_values=pad_id)
    prompt_mask_BxP = jnp.pad(prompt_mask_BxP, ((0, 0), (extra, 0)))
  tokens, mask, done = _sample(params, prompt_BxP, prompt_mask_BxP, rng, jnp.int32(max_new_tokens), cfg=cfg,
                               t_buffer=bucket(max_new_tokens), eos_id=eos_id, pad_id=pad_id,
                               temperature=temperature, top_k=top_k, top_p=top_p)
  return tokens[:, :max_new_tokens], mask[:, :max_new_tokens], done


@functools.partial(jax.jit, static_argnames=("cfg", "t_buffer", "temperature", "top_k", "top_p", "eos_id", "pad_id"))
def _sample(params, prompt_BxP: Array, prompt_mask_BxP: Array, rng: Array, max_new_tokens: Array, *,
            cfg: ModelConfig, t_buffer: int, eos_id: int, pad_id: int, temperature: float, top_k: int,
            top_p: float):
  """The loop: at most `max_new_tokens` (traced) steps in a `[B, t_buffer]` buffer."""
  model = Transformer(cfg)
  b, p = prompt_BxP.shape
  t_max = t_buffer
  w_DxV = output_matrix_DxV(cfg, params)
  cache = init_cache(cfg, b, p + t_max)
  seg_BxP = prompt_mask_BxP.astype(jnp.int32)
  pos_BxP = positions_from_mask(prompt_mask_BxP)
  hidden, cache = model.apply({"params": params}, prompt_BxP, pos_BxP, seg_BxP, cache, prefill=True)
  logits_BxV = jnp.einsum("BD,DV->BV", hidden[:, -1], w_DxV.astype(hidden.dtype),
                          preferred_element_type=jnp.float32)
  next_pos_B = pos_BxP[:, -1] + 1

  tokens = jnp.full((b, t_max), pad_id, jnp.int32)
  mask = jnp.zeros((b, t_max), jnp.int32)
  done = jnp.zeros((b,), bool)

  def cond(state):
    i, _, _, _, done, _, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, cache, logits_BxV, pos_B, done, tokens, mask = state
    tok_B = _draw(jax.random.fold_in(rng, i), logits_BxV, temperature, top_k, top_p)
    tok_B = jnp.where(done, pad_id, tok_B)
    tokens = tokens.at[:, i].set(tok_B)
    mask = mask.at[:, i].set((~done).astype(jnp.int32))
    done = done | (tok_B == eos_id)
    hidden, cache = model.apply({"params": params}, tok_B[:, None], pos_B[:, None],
                                jnp.ones((b, 1), jnp.int32), cache)
    logits_BxV = jnp.einsum("BD,DV->BV", hidden[:, 0], w_DxV.astype(hidden.dtype),
                            preferred_element_type=jnp.float32)
    return i + 1, cache, logits_BxV, pos_B + 1, done, tokens, mask

  state = (jnp.int32(0), cache, logits_BxV, next_pos_B, done, tokens, mask)
  _, _, _, _, done, tokens, mask = jax.lax.while_loop(cond, body, state)
  return tokens, mask, done


# Geometric-mixture sampling of two models (online IPO-MD / Nash-MD) lives in jaxalign.mixture, which
# reuses this module's draw; re-exported here so both samplers are `jaxalign.sampling.*`.
from jaxalign.mixture import mixture_sample  # noqa: E402  (after `_draw`, which mixture imports)
