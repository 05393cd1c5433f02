"""Geometric-mixture sampling of a policy and a reference (algorithms.md §4.2), one jitted loop.

At every step both models run on the same mixture-generated prefix, each with its own
KV cache, and the next token is drawn from

  π_mix(· | x, y_<t) = softmax((1 − β)·log π_θ(· | x, y_<t) + β·log π_ref(· | x, y_<t)).

The two models' raw logits are mixed (per-row log-normalisers cancel under softmax, so this
is the same distribution as mixing log-probs) and temperature, top-k and top-p are applied
AFTER mixing, with `sampling.filter_logits` (TRL samples `softmax(mix / T)` the same way).
Keys, padding buckets and the draw are exactly those of `sampling.sample`, and the mixed
logits are `1·ℓ_θ + 0·ℓ_ref` at β = 0 and `0·ℓ_θ + 1·ℓ_ref` at β = 1 (exact in floating
point), so β = 0 / β = 1 reproduce `sample(policy)` / `sample(reference)` token for token
under the same key. β is traced: one compilation serves every β.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxalign.data.packing import bucket
from jaxalign.models.transformer import ModelConfig, Transformer, init_cache, output_matrix_DxV, positions_from_mask
from jaxalign.sampling import _draw

Array = jax.Array


def mix_logits(policy_logits_BxV: Array, ref_logits_BxV: Array, beta) -> Array:
  """`(1 − β)·policy + β·reference` in float32 (unnormalised mixture logits)."""
  beta = jnp.asarray(beta, jnp.float32)
  return (1.0 - beta) * policy_logits_BxV.astype(jnp.float32) + beta * ref_logits_BxV.astype(jnp.float32)


def mixture_sample(policy_params, ref_params, prompt_BxP: Array, prompt_mask_BxP: Array, rng: Array, *,
                   cfg: ModelConfig, beta: float, max_new_tokens: int, eos_id: int, pad_id: int,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   ref_cfg: ModelConfig | None = None, return_logprobs: bool = False):
  """Returns `(tokens_BxT, mask_BxT, finished_B)` like `sampling.sample`, `T = max_new_tokens`.

  `ref_cfg` (default `cfg`) lets the reference differ in architecture (same vocabulary).
  `return_logprobs=True` also returns the unfiltered mixture log-probs `[B, T, V]` of every step
  (`log_softmax` of the mixed logits at temperature 1; for tests and diagnostics).
  """
  p = prompt_BxP.shape[1]
  extra = bucket(p) - p
  if extra:  # the same extra left padding as `sampling.sample` (masked: nothing changes)
    prompt_BxP = jnp.pad(prompt_BxP, ((0, 0), (extra, 0)), constant_values=pad_id)
    prompt_mask_BxP = jnp.pad(prompt_mask_BxP, ((0, 0), (extra, 0)))
  out = _mixture_sample(policy_params, ref_params, prompt_BxP, prompt_mask_BxP, rng, jnp.float32(beta),
                        jnp.int32(max_new_tokens), cfg=cfg, ref_cfg=ref_cfg or cfg,
                        t_buffer=bucket(max_new_tokens), eos_id=eos_id, pad_id=pad_id, temperature=temperature,
                        top_k=top_k, top_p=top_p, return_logprobs=return_logprobs)
  tokens, mask, done = out[:3]
  res = (tokens[:, :max_new_tokens], mask[:, :max_new_tokens], done)
  return res + (out[3][:, :max_new_tokens],) if return_logprobs else res


@functools.partial(jax.jit, static_argnames=("cfg", "ref_cfg", "t_buffer", "temperature", "top_k", "top_p",
                                             "eos_id", "pad_id", "return_logprobs"))
def _mixture_sample(policy_params, ref_params, prompt_BxP: Array, prompt_mask_BxP: Array, rng: Array,
                    beta: Array, max_new_tokens: Array, *, cfg: ModelConfig, ref_cfg: ModelConfig, t_buffer: int,
                    eos_id: int, pad_id: int, temperature: float, top_k: int, top_p: float,
                    return_logprobs: bool):
  b, p = prompt_BxP.shape
  models = ((Transformer(cfg), policy_params, output_matrix_DxV(cfg, policy_params), cfg),
            (Transformer(ref_cfg), ref_params, output_matrix_DxV(ref_cfg, ref_params), ref_cfg))

  def forward(tokens_BxL, pos_BxL, seg_BxL, caches, prefill=False):
    """Both models on the same tokens: `(logits of the last position [2][B, V], new caches)`."""
    logits, new = [], []
    for (model, params, w_DxV, _), cache in zip(models, caches):
      hidden, cache = model.apply({"params": params}, tokens_BxL, pos_BxL, seg_BxL, cache, prefill=prefill)
      logits.append(jnp.einsum("BD,DV->BV", hidden[:, -1], w_DxV.astype(hidden.dtype),
                               preferred_element_type=jnp.float32))
      new.append(cache)
    return tuple(logits), tuple(new)

  caches = tuple(init_cache(c, b, p + t_buffer) for *_, c in models)
  pos_BxP = positions_from_mask(prompt_mask_BxP)
  logits, caches = forward(prompt_BxP, pos_BxP, prompt_mask_BxP.astype(jnp.int32), caches, prefill=True)
  v = logits[0].shape[-1]

  tokens = jnp.full((b, t_buffer), pad_id, jnp.int32)
  mask = jnp.zeros((b, t_buffer), jnp.int32)
  done = jnp.zeros((b,), bool)
  lps = jnp.zeros((b, t_buffer, v) if return_logprobs else (0,), jnp.float32)

  def cond(state):
    i, done = state[0], state[4]
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, caches, logits, pos_B, done, tokens, mask, lps = state
    mixed_BxV = mix_logits(logits[0], logits[1], beta)
    if return_logprobs:
      lps = lps.at[:, i].set(jax.nn.log_softmax(mixed_BxV, axis=-1))
    tok_B = _draw(jax.random.fold_in(rng, i), mixed_BxV, temperature, top_k, top_p)
    tok_B = jnp.where(done, pad_id, tok_B)
    tokens = tokens.at[:, i].set(tok_B)
    mask = mask.at[:, i].set((~done).astype(jnp.int32))
    done = done | (tok_B == eos_id)
    logits, caches = forward(tok_B[:, None], pos_B[:, None], jnp.ones((b, 1), jnp.int32), caches)
    return i + 1, caches, logits, pos_B + 1, done, tokens, mask, lps

  state = (jnp.int32(0), caches, logits, pos_BxP[:, -1] + 1, done, tokens, mask, lps)
  _, _, _, _, done, tokens, mask, lps = jax.lax.while_loop(cond, body, state)
  return (tokens, mask, done, lps) if return_logprobs else (tokens, mask, done)
