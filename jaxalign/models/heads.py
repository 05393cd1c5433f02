"""Heads on the transformer trunk: reward models, value models, preference models, token discriminators.

A scalar model's params are `{"trunk": <Transformer params>, "head": {"kernel": [D], "bias": []}}`;
the head kernel carries the logical axis `embed`, so `jaxalign.sharding.param_shardings`
shards it like the trunk. Heads read float32 hidden states after the final norm:

  sequence_score   reward at the last real token of prompt | completion          [B]
  token_values     value of each completion token, read from the hidden state
                   that predicts it (positions P−1 … P+C−2)                        [B, C]
  pair_logit       f(x, A, B) on the row  prompt | A | sep | B: head(sep) − head(last
                   real token) ("difference", default) or head(last real token)    [B]
  preference_prob  ½·(σ(f(x,A,B)) + 1 − σ(f(x,B,A))), so P(A≻B) + P(B≻A) = 1     [B]
  token_logits     TLCR's discriminator: a 2-class head without bias (`{"kernel": [D, 2]}`)
                   read AT each completion token (positions P … P+C−1)             [B, C, 2]

Rows may have padding anywhere (left-padded prompts, right-padded completions in the
middle of a row): padding has segment id 0, so it is invisible to attention, and
position ids count real tokens only.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign import sharding as shd
from jaxalign.advantages import last_token_index
from jaxalign.models.transformer import ModelConfig, Transformer, positions_from_mask

Array = jax.Array


class ScalarHead(nn.Module):
  """`hidden_...xD -> [...]` in float32; N+ init: kernel ~ Normal(0, 1/sqrt(D+1)), bias 0."""
  std: float | None = None  # None: 1/sqrt(D+1); 0: zeros

  @nn.compact
  def __call__(self, hidden_xD: Array) -> Array:
    d = hidden_xD.shape[-1]
    std = (d + 1) ** -0.5 if self.std is None else self.std
    init = nn.initializers.normal(std) if std > 0 else nn.initializers.zeros
    kernel = self.param("kernel", nn.with_logical_partitioning(init, ("embed",)), (d,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ()), ())
    return jnp.einsum("...D,D->...", hidden_xD.astype(jnp.float32), kernel) + bias


def _abstract(head: nn.Module, cfg: ModelConfig):
  h = jnp.zeros((1, cfg.d_model), jnp.float32)
  return jax.eval_shape(lambda r: head.init(r, h), jax.random.key(0))["params"]


def _init(head: nn.Module, cfg: ModelConfig, rng: Array, mesh):
  h = jnp.zeros((1, cfg.d_model), jnp.float32)
  init = lambda r: nn.meta.unbox(head.init(r, h)["params"])
  return jax.jit(init, out_shardings=shd.param_shardings(_abstract(head, cfg), mesh))(rng)


def abstract_head(cfg: ModelConfig, std: float | None = None):
  """Boxed (`nn.Partitioned`) abstract head params."""
  return _abstract(ScalarHead(std), cfg)


def init_head(cfg: ModelConfig, rng: Array, mesh, std: float | None = None):
  """Head params born sharded on `mesh`."""
  return _init(ScalarHead(std), cfg, rng, mesh)


def apply_head(head_params, hidden_xD: Array) -> Array:
  return ScalarHead().apply({"params": head_params}, hidden_xD)


def hidden_states(cfg: ModelConfig, trunk_params, tokens_BxL: Array, mask_BxL: Array) -> Array:
  mask = mask_BxL.astype(jnp.int32)
  hidden, _ = Transformer(cfg).apply({"params": trunk_params}, tokens_BxL, positions_from_mask(mask), mask)
  return hidden


def _at(x_BxLxD: Array, idx_B: Array) -> Array:
  return jnp.take_along_axis(x_BxLxD, idx_B[:, None, None], axis=1)[:, 0]


def completion_hidden(cfg: ModelConfig, trunk_params, prompt_BxP: Array, prompt_mask_BxP: Array,
                      completion_BxC: Array, completion_mask_BxC: Array) -> Array:
  """Hidden states `[B, C, D]` at the positions that predict the completion tokens.

  One forward pass gives a policy's log-probs (`jaxalign.logprobs.token_logps` with its
  output matrix) and a value head's values on the same trunk.
  """
  p, c = prompt_BxP.shape[1], completion_BxC.shape[1]
  tokens = jnp.concatenate([prompt_BxP, completion_BxC], axis=1)
  mask = jnp.concatenate([prompt_mask_BxP, completion_mask_BxC], axis=1)
  return jax.lax.dynamic_slice_in_dim(hidden_states(cfg, trunk_params, tokens, mask), p - 1, c, axis=1)


def sequence_score(cfg: ModelConfig, params, prompt_BxP: Array, prompt_mask_BxP: Array,
                   completion_BxC: Array, completion_mask_BxC: Array) -> Array:
  """Reward `[B]` (float32) of each (prompt, completion): the head at the last real token.

  That token is the completion's last (its EOS when finished), or the prompt's last
  when the completion is empty.
  """
  tokens = jnp.concatenate([prompt_BxP, completion_BxC], axis=1)
  mask = jnp.concatenate([prompt_mask_BxP, completion_mask_BxC], axis=1)
  hidden = hidden_states(cfg, params["trunk"], tokens, mask)
  return apply_head(params["head"], _at(hidden, last_token_index(mask)))


def token_values(cfg: ModelConfig, params, prompt_BxP: Array, prompt_mask_BxP: Array,
                 completion_BxC: Array, completion_mask_BxC: Array) -> Array:
  """Values `[B, C]` (float32) of completion tokens; 0 on padding."""
  h = completion_hidden(cfg, params["trunk"], prompt_BxP, prompt_mask_BxP, completion_BxC, completion_mask_BxC)
  return jnp.where(completion_mask_BxC > 0, apply_head(params["head"], h), 0.0)


def pair_row(prompt_BxP: Array, prompt_mask_BxP: Array, a_BxC: Array, a_mask_BxC: Array, b_BxC: Array,
             b_mask_BxC: Array, *, sep_id: int) -> tuple[Array, Array]:
  """The preference model's input `prompt | A | sep | B` (length P + 2C + 1) and its mask."""
  b = prompt_BxP.shape[0]
  sep = jnp.full((b, 1), sep_id, prompt_BxP.dtype)
  tokens = jnp.concatenate([prompt_BxP, a_BxC, sep, b_BxC], axis=1)
  mask = jnp.concatenate([prompt_mask_BxP, a_mask_BxC, jnp.ones((b, 1), a_mask_BxC.dtype), b_mask_BxC], axis=1)
  return tokens, mask


def pair_logit(cfg: ModelConfig, params, prompt_BxP: Array, prompt_mask_BxP: Array, a_BxC: Array,
               a_mask_BxC: Array, b_BxC: Array, b_mask_BxC: Array, *, sep_id: int,
               readout: str = "difference") -> Array:
  """`f(x, A, B)` `[B]`: the logit of P(A ≻ B) for this order (not symmetrised).

  readout "last": the head at the last real token (sees x, A and B).
  readout "difference": head(sep) − head(last); the separator's state sees only (x, A), the
  last token's sees everything, so a model that ignores A there is exactly Bradley–Terry
  `r(x, A) − r(x, B)`; attention to A lets it go beyond.
  """
  tokens, mask = pair_row(prompt_BxP, prompt_mask_BxP, a_BxC, a_mask_BxC, b_BxC, b_mask_BxC, sep_id=sep_id)
  hidden = hidden_states(cfg, params["trunk"], tokens, mask)
  last = apply_head(params["head"], _at(hidden, last_token_index(mask)))
  if readout == "last":
    return last
  if readout == "difference":
    sep_pos = jnp.full(tokens.shape[:1], prompt_BxP.shape[1] + a_BxC.shape[1])
    return apply_head(params["head"], _at(hidden, sep_pos)) - last
  raise ValueError(f"unknown preference-model readout {readout!r} (difference | last)")


def both_order_logits(cfg: ModelConfig, params, prompt_BxP, prompt_mask_BxP, a_BxC, a_mask_BxC, b_BxC,
                      b_mask_BxC, *, sep_id: int, readout: str = "difference") -> tuple[Array, Array]:
  """`(f(x,A,B), f(x,B,A))`, both orders in one forward pass (concatenated on the batch axis)."""
  cat = lambda u, v: jnp.concatenate([u, v], axis=0)
  f = pair_logit(cfg, params, cat(prompt_BxP, prompt_BxP), cat(prompt_mask_BxP, prompt_mask_BxP),
                 cat(a_BxC, b_BxC), cat(a_mask_BxC, b_mask_BxC), cat(b_BxC, a_BxC), cat(b_mask_BxC, a_mask_BxC),
                 sep_id=sep_id, readout=readout)
  return jnp.split(f, 2)


def symmetrised_prob(f_ab: Array, f_ba: Array) -> Array:
  """`½·(σ(f_ab) + 1 − σ(f_ba))`, written as `½ + ½·(σ(f_ab) − σ(f_ba))`.

  The difference flips sign exactly when the orders are swapped, so in floating point
  P(A≻B) + P(B≻A) rounds to exactly 1 and P(A≻A) = ½.
  """
  return 0.5 + 0.5 * (jax.nn.sigmoid(f_ab) - jax.nn.sigmoid(f_ba))


def preference_prob(cfg: ModelConfig, params, prompt_BxP: Array, prompt_mask_BxP: Array, a_BxC: Array,
                    a_mask_BxC: Array, b_BxC: Array, b_mask_BxC: Array, *, sep_id: int,
                    readout: str = "difference") -> Array:
  """Symmetrised `P(A ≻ B | x)` `[B]` from a pairwise preference model."""
  f_ab, f_ba = both_order_logits(cfg, params, prompt_BxP, prompt_mask_BxP, a_BxC, a_mask_BxC, b_BxC,
                                 b_mask_BxC, sep_id=sep_id, readout=readout)
  return symmetrised_prob(f_ab, f_ba)


def bt_preference_prob(reward_a_B: Array, reward_b_B: Array) -> Array:
  """`P(A ≻ B) = σ(r(A) − r(B))` from a scalar (Bradley–Terry) reward model."""
  return jax.nn.sigmoid(reward_a_B - reward_b_B)


# ---- the token discriminator (TLCR, algorithms.md §6.2) ----

class TokenHead(nn.Module):
  """`hidden_...xD -> [..., 2]` float32 logits (negative, positive); a linear map without bias."""
  std: float | None = None  # None: 1/sqrt(D)

  @nn.compact
  def __call__(self, hidden_xD: Array) -> Array:
    d = hidden_xD.shape[-1]
    std = d ** -0.5 if self.std is None else self.std
    init = nn.initializers.normal(std) if std > 0 else nn.initializers.zeros
    kernel = self.param("kernel", nn.with_logical_partitioning(init, ("embed", None)), (d, 2))
    return jnp.einsum("...D,DK->...K", hidden_xD.astype(jnp.float32), kernel)


def abstract_token_head(cfg: ModelConfig, std: float | None = None):
  return _abstract(TokenHead(std), cfg)


def init_token_head(cfg: ModelConfig, rng: Array, mesh, std: float | None = None):
  return _init(TokenHead(std), cfg, rng, mesh)


def token_logits(cfg: ModelConfig, params, prompt_BxP: Array, prompt_mask_BxP: Array, completion_BxC: Array,
                 completion_mask_BxC: Array) -> Array:
  """Discriminator logits `[B, C, 2]` of each completion token, read from the hidden state AT the token
  (positions P … P+C−1: the state has seen the token it judges)."""
  p, c = prompt_BxP.shape[1], completion_BxC.shape[1]
  tokens = jnp.concatenate([prompt_BxP, completion_BxC], axis=1)
  mask = jnp.concatenate([prompt_mask_BxP, completion_mask_BxC], axis=1)
  h = jax.lax.dynamic_slice_in_dim(hidden_states(cfg, params["trunk"], tokens, mask), p, c, axis=1)
  return TokenHead().apply({"params": params["head"]}, h)


def token_positive_prob(cfg: ModelConfig, params, prompt_BxP: Array, prompt_mask_BxP: Array,
                        completion_BxC: Array, completion_mask_BxC: Array) -> Array:
  """`D(a_t | x, a_<t)` `[B, C]` (float32): the probability that each completion token is positive; ½ on padding."""
  z = token_logits(cfg, params, prompt_BxP, prompt_mask_BxP, completion_BxC, completion_mask_BxC)
  return jnp.where(completion_mask_BxC > 0, jax.nn.softmax(z, axis=-1)[..., 1], 0.5)
