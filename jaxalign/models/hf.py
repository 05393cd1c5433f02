"""Hugging Face checkpoints in and out: Llama, Mistral, Qwen2, Qwen3 and GPT-2.

    from jaxalign.models import load_hf, save_hf, logits
    cfg, params = load_hf("path/to/hf_folder")             # config.json + safetensors
    out_BxLxV = logits(cfg, params, input_ids, attention_mask)  # float32 [B, L, V]
    save_hf(cfg, params, "path/to/out", tokenizer="path/to/hf_folder")

`load_hf` reads `config.json` into a `ModelConfig` and the weights (`model.safetensors`,
or the shards of `model.safetensors.index.json`; float32, bfloat16 or float16) straight
into the sharded layout of a mesh: one tensor at a time is read from the memory-mapped
file, converted to the jaxalign layout and placed with `jax.make_array_from_callback`,
so the whole model never sits in host memory. `save_hf` writes a folder that
`transformers` loads with `from_pretrained`: config.json (the original one, when the
tokenizer folder is the source checkpoint, updated from the model), safetensors
(streamed tensor by tensor, sharded above `max_shard_size`), generation_config.json
and the tokenizer files.

`logits(cfg, params, input_ids, attention_mask)` gives `[B, L, V]` float32 logits for a
notebook comparison (positions start at 0 on the first real token, so left and right
padding both work; logits at padded positions are meaningless).

This module is the public entry point; the work is split in two:
`jaxalign.models.hf_config` (config.json <-> `ModelConfig`, supported architectures and
RoPE scalings, tokenizer and metadata files) and `jaxalign.models.hf_weights` (the tensor
name and layout map, sharded loading, safetensors writing). The names callers use
(`read_config`, `config_from_hf`, `config_to_hf`, `load_params`, `copy_metadata`,
`SOURCE_DIR`, ...) are re-exported here.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.models.hf_config import (ARCHITECTURES, SOURCE_DIR, config_from_hf, config_to_hf, copy_metadata,
                                       read_config, write_metadata)
from jaxalign.models.hf_weights import load_params, write_params
from jaxalign.models.transformer import ModelConfig, Transformer, output_matrix_DxV, positions_from_mask

__all__ = ["ARCHITECTURES", "SOURCE_DIR", "config_from_hf", "config_to_hf", "copy_metadata", "load_hf",
           "load_params", "logits", "read_config", "save_hf", "write_metadata", "write_params"]

Array = jax.Array


def load_hf(path: str, dtype: str = "float32", mesh=None, param_dtype: str = "float32", max_len: int = 0):
  """`(ModelConfig, params)` of a Hugging Face folder.

  dtype: compute dtype of the model (float32 | bfloat16); param_dtype: dtype the weights are
  stored in on device (float32 masters for training; bfloat16 halves memory for inference).
  mesh: a `jaxalign.sharding` mesh to shard onto (default: the first device).
  """
  cfg = config_from_hf(read_config(path), os.path.join(path, "config.json"), dtype=dtype, max_len=max_len)
  return cfg, load_params(path, cfg, mesh, param_dtype)


def save_hf(model, params, path: str, tokenizer=None, dtype: str = "float32",
            max_shard_size: int = 5 * 2**30) -> list[str]:
  """Writes a Hugging Face folder for `model` (a `ModelConfig` or `Transformer`) and `params`.

  tokenizer: None; a Hugging Face folder (path) or `HFTokenizer`, whose tokenizer files and
  generation config are copied and whose config.json is the base of the written one (so
  fields jaxalign does not model survive; bos/eos/pad ids it leaves unset come from the
  tokenizer); or a SentencePiece `Tokenizer`, written as tokenizer.model (+ tokenizer.json
  for word models) with a tokenizer_config.json. dtype: float32 | bfloat16 weights on disk.
  Returns the files written.
  """
  cfg = model.cfg if isinstance(model, Transformer) else model
  os.makedirs(path, exist_ok=True)
  written = write_metadata(cfg, path, tokenizer, dtype)
  return written + write_params(cfg, params, path, dtype, max_shard_size)


# ---------------------------------------------------------------- logits


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logits(cfg: ModelConfig, params, input_ids, attention_mask):
  mask = attention_mask.astype(jnp.int32)
  hidden, _ = Transformer(cfg).apply({"params": params}, input_ids, positions_from_mask(mask), mask)
  w_DxV = output_matrix_DxV(cfg, params)
  return jnp.einsum("BLD,DV->BLV", hidden, w_DxV.astype(hidden.dtype), preferred_element_type=jnp.float32)


def logits(cfg: ModelConfig, params, input_ids, attention_mask=None) -> Array:
  """`[B, L, V]` float32 logits of `input_ids` `[B, L]` (mask 1 on real tokens, 0 on padding).

  Positions count real tokens from 0 (as `transformers` does in `generate`), so rows may be
  left- or right-padded; logits at padded positions are meaningless. Compiled once per shape.
  """
  input_ids = jnp.asarray(input_ids, jnp.int32)
  mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
  p = nn.meta.unbox(params)
  return _logits(cfg, p["params"] if "params" in p else p, input_ids, mask)
