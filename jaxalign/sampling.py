"""KV-cache sampling of one model, or of a geometric mixture of two, as one jitted loop.

Prompts are left-padded to a fixed length `P` (mask 0 on padding); the loop prefills
the cache with the prompt, then draws one token per iteration with temperature,
top-k and top-p, stops a row at EOS, and stops the loop when every row is done or
`max_new_tokens` is reached. Step `i` draws with `fold_in(rng, i)`. Shapes are bucketed
so a run does not compile once per length: prompts are left-padded further to a bucket
of `P` and the loop runs in a buffer of a bucket of `max_new_tokens`
(`jaxalign.data.packing.bucket`: exact up to 8, then four sizes per octave), with the
real count as a loop bound. One compilation per (models, B, bucket(P), bucket(T)); the
extra padding is masked, so outputs do not change.

`sample` runs one model. `mixture_sample` runs a policy and a reference (algorithms.md
§4.2, online IPO-MD / Nash-MD) in the same loop: both models see the same
mixture-generated prefix, each with its own KV cache, and the next token is drawn from

  π_mix(· | x, y_<t) = softmax((1 − β)·log π_θ(· | x, y_<t) + β·log π_ref(· | x, y_<t)).

The raw logits are mixed (`mix_logits`; per-row log-normalisers cancel under softmax, so
this is the same distribution as mixing log-probs) and temperature, top-k and top-p are
applied AFTER mixing (TRL samples `softmax(mix / T)` the same way). At β = 0 / 1 the mixed
logits are `1·ℓ_θ + 0·ℓ_ref` / `0·ℓ_θ + 1·ℓ_ref`, exact in floating point, so they
reproduce `sample(policy)` / `sample(reference)` token for token under the same key. β is
traced: one compilation serves every β. `mixture_logprobs` gives the same mixture by
teacher forcing (full forward passes, no cache), to check the sampler against.
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


def mix_logits(policy_logits_BxV: Array, ref_logits_BxV: Array, beta) -> Array:
  """`(1 − β)·policy + β·reference` in float32 (unnormalised mixture logits)."""
  beta = jnp.asarray(beta, jnp.float32)
  return (1.0 - beta) * policy_logits_BxV.astype(jnp.float32) + beta * ref_logits_BxV.astype(jnp.float32)


def sample(params, prompt_BxP: Array, prompt_mask_BxP: Array, rng: Array, *, cfg: ModelConfig,
           max_new_tokens: int, eos_id: int, pad_id: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, forced_BxT: Array | None = None, forced_len_B: Array | None = None):
  """Returns `(tokens_BxT, mask_BxT, finished_B)`, `T = max_new_tokens`.

  `mask` is 1 on generated tokens up to and including EOS; tokens after EOS are
  `pad_id`. `finished` says whether the row emitted EOS. `forced_BxT` / `forced_len_B`: the first
  `forced_len[b]` tokens of row b are teacher-forced from `forced[b]` (DR-PO's reset to a prefix of a
  reference response, algorithms.md §8.11); the row then continues from the policy within the same budget.
  """
  return _bucketed((params,), (cfg,), None, prompt_BxP, prompt_mask_BxP, rng, max_new_tokens=max_new_tokens,
                   eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_k=top_k, top_p=top_p,
                   forced=None if forced_BxT is None else (forced_BxT, forced_len_B))


def mixture_sample(policy_params, ref_params, prompt_BxP: Array, prompt_mask_BxP: Array, rng: Array, *,
                   cfg: ModelConfig, beta: float, max_new_tokens: int, eos_id: int, pad_id: int,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   ref_cfg: ModelConfig | None = None):
  """Returns `(tokens_BxT, mask_BxT, finished_B)` like `sample`, drawn from the β-mixture.

  `ref_cfg` (default `cfg`) lets the reference differ in architecture (same vocabulary).
  """
  return _bucketed((policy_params, ref_params), (cfg, ref_cfg or cfg), jnp.float32(beta), prompt_BxP,
                   prompt_mask_BxP, rng, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                   temperature=temperature, top_k=top_k, top_p=top_p)


def _bucketed(params, cfgs, beta, prompt_BxP, prompt_mask_BxP, rng, *, max_new_tokens, eos_id, pad_id, temperature,
              top_k, top_p, forced=None):
  """Pads the prompt and the token buffer to their buckets, runs `_sample`, cuts the buffer back."""
  p = prompt_BxP.shape[1]
  extra = bucket(p) - p
  if extra:  # more left padding: masked keys, positions from the mask, so nothing changes
    prompt_BxP = jnp.pad(prompt_BxP, ((0, 0), (extra, 0)), constant_values=pad_id)
    prompt_mask_BxP = jnp.pad(prompt_mask_BxP, ((0, 0), (extra, 0)))
  t_buffer = bucket(max_new_tokens)
  if forced is not None:  # to the buffer's width; positions past max_new_tokens are never read
    f, n = forced
    f = jnp.asarray(f, jnp.int32)[:, :t_buffer]
    forced = (jnp.pad(f, ((0, 0), (0, t_buffer - f.shape[1])), constant_values=pad_id),
              jnp.asarray(n, jnp.int32))
  tokens, mask, done = _sample(params, prompt_BxP, prompt_mask_BxP, rng, jnp.int32(max_new_tokens), beta, forced,
                               cfgs=cfgs,
                               t_buffer=bucket(max_new_tokens), eos_id=eos_id, pad_id=pad_id,
                               temperature=temperature, top_k=top_k, top_p=top_p)
  return tokens[:, :max_new_tokens], mask[:, :max_new_tokens], done


@functools.partial(jax.jit, static_argnames=("cfgs", "t_buffer", "temperature", "top_k", "top_p", "eos_id", "pad_id"))
def _sample(params, prompt_BxP: Array, prompt_mask_BxP: Array, rng: Array, max_new_tokens: Array, beta, forced=None, *,
            cfgs: tuple[ModelConfig, ...], t_buffer: int, eos_id: int, pad_id: int, temperature: float, top_k: int,
            top_p: float):
  """The loop: at most `max_new_tokens` (traced) steps in a `[B, t_buffer]` buffer.

  `params` / `cfgs` hold one model (`beta` None: its own logits) or a policy and a reference
  (`beta` a traced scalar: their `mix_logits`); each model keeps its own KV cache. `forced`: None, or
  `(tokens [B, t_buffer], lengths [B])` teacher-forced at the start of each row (DR-PO's resets).
  """
  b, p = prompt_BxP.shape
  models = [(Transformer(c), prm, output_matrix_DxV(c, prm)) for c, prm in zip(cfgs, params)]

  def forward(tokens_BxL, pos_BxL, seg_BxL, caches, prefill=False):
    """Every model on the same tokens: `(next-token logits [B, V] of the last position, new caches)`."""
    logits, new = [], []
    for (model, prm, w_DxV), cache in zip(models, caches):
      hidden, cache = model.apply({"params": prm}, tokens_BxL, pos_BxL, seg_BxL, cache, prefill=prefill)
      logits.append(jnp.einsum("BD,DV->BV", hidden[:, -1], w_DxV.astype(hidden.dtype),
                               preferred_element_type=jnp.float32))
      new.append(cache)
    # one model draws from its own logits as they are: no mixing arithmetic on the plain path
    return (logits[0] if len(logits) == 1 else mix_logits(*logits, beta)), tuple(new)

  caches = tuple(init_cache(c, b, p + t_buffer) for c in cfgs)
  pos_BxP = positions_from_mask(prompt_mask_BxP)
  logits_BxV, caches = forward(prompt_BxP, pos_BxP, prompt_mask_BxP.astype(jnp.int32), caches, prefill=True)

  tokens = jnp.full((b, t_buffer), pad_id, jnp.int32)
  mask = jnp.zeros((b, t_buffer), jnp.int32)
  done = jnp.zeros((b,), bool)

  def cond(state):
    i, done = state[0], state[4]
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, caches, logits_BxV, pos_B, done, tokens, mask = state
    if temperature == 0.0:  # greedy: no key, no filtering
      tok_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    else:
      filtered = filter_logits(logits_BxV, temperature=temperature, top_k=top_k, top_p=top_p)
      tok_B = categorical(jax.random.fold_in(rng, i), filtered)
    if forced is not None:  # teacher-forced prefix (never past a row's EOS: the prefix has none)
      tok_B = jnp.where(i < forced[1], forced[0][:, i], tok_B)
    tok_B = jnp.where(done, pad_id, tok_B)  # finished rows emit padding, masked out
    tokens = tokens.at[:, i].set(tok_B)
    mask = mask.at[:, i].set((~done).astype(jnp.int32))
    done = done | (tok_B == eos_id)
    logits_BxV, caches = forward(tok_B[:, None], pos_B[:, None], jnp.ones((b, 1), jnp.int32), caches)
    return i + 1, caches, logits_BxV, pos_B + 1, done, tokens, mask

  state = (jnp.int32(0), caches, logits_BxV, pos_BxP[:, -1] + 1, done, tokens, mask)
  _, _, _, _, done, tokens, mask = jax.lax.while_loop(cond, body, state)
  return tokens, mask, done


@functools.partial(jax.jit, static_argnames=("cfg", "ref_cfg"))
def mixture_logprobs(policy_params, ref_params, prompt_BxP: Array, prompt_mask_BxP: Array, tokens_BxT: Array, *,
                     cfg: ModelConfig, beta, ref_cfg: ModelConfig | None = None) -> Array:
  """`log_softmax((1 − β)·ℓ_θ + β·ℓ_ref)` `[B, T, V]`: the mixture's next-token distribution at every step of
  `tokens_BxT` (what `mixture_sample` draws step t from, before temperature and filtering), by teacher forcing
  with full forward passes and no cache. Step t is meaningful up to the row's EOS (later tokens are padding).
  """
  p, t = prompt_BxP.shape[1], tokens_BxT.shape[1]
  seq_BxL = jnp.concatenate([prompt_BxP, tokens_BxT], axis=1)
  # completion tokens all count as real: attention is causal, so nothing after a row's EOS
  # reaches the steps up to it
  mask_BxL = jnp.concatenate([prompt_mask_BxP.astype(jnp.int32), jnp.ones_like(tokens_BxT, jnp.int32)], axis=1)

  def step_logits(c, prm):  # the T positions that predict tokens_BxT
    hidden, _ = Transformer(c).apply({"params": prm}, seq_BxL, positions_from_mask(mask_BxL), mask_BxL)
    return jnp.einsum("BTD,DV->BTV", hidden[:, p - 1:p - 1 + t], output_matrix_DxV(c, prm).astype(hidden.dtype),
                      preferred_element_type=jnp.float32)

  mixed = mix_logits(step_logits(cfg, policy_params), step_logits(ref_cfg or cfg, ref_params), beta)
  return jax.nn.log_softmax(mixed, axis=-1)
