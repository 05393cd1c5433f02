"""Model configs and parameters from every source a run can name, born sharded on the mesh.

  model_cfg_from     the architecture: a preset (`model.preset`) or a Hugging Face config.json
  init_params        random initialisation (`jit(init, out_shardings=...)`: never whole on one device)
  initial_params     random, a Hugging Face checkpoint (`model.hf_path`) or another run (`init_from`)
  load_reward_model  the latest reward or preference model (`{"trunk", "head"}`) of a run directory
  load_discriminator the latest TLCR token discriminator (`{"trunk", "head"}`, a 2-class head) of a run directory
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxalign import sharding as shd
from jaxalign.checkpoint import restore_params
from jaxalign.data.pipeline import load_tokenizer
from jaxalign.errors import UserError
from jaxalign.models import heads
from jaxalign.models.transformer import ModelConfig, Transformer, model_config

Array = jax.Array
SCALAR_KINDS = ("reward_model", "preference_model")


def abstract_params(cfg: ModelConfig):
  """Boxed (`nn.Partitioned`) abstract params: shapes plus logical axis names, no memory."""
  tok = jnp.zeros((1, 4), jnp.int32)
  return jax.eval_shape(lambda r: Transformer(cfg).init(r, tok, tok, tok + 1), jax.random.key(0))["params"]


def init_params(cfg: ModelConfig, rng: Array, mesh) -> Any:
  """Params born sharded: `jit(init, out_shardings=...)`, never whole on one device."""
  shardings = shd.param_shardings(abstract_params(cfg), mesh)
  tok = jnp.zeros((1, 4), jnp.int32)
  init = lambda r: nn.meta.unbox(Transformer(cfg).init(r, tok, tok, tok + 1)["params"])
  return jax.jit(init, out_shardings=shardings)(rng)


def _restore_target(boxed, mesh):
  """ShapeDtypeStructs with shardings of a boxed abstract tree (restore targets)."""
  unboxed = jax.tree.map(lambda p: p.value, boxed, is_leaf=lambda p: hasattr(p, "names"))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unboxed,
                      shd.param_shardings(boxed, mesh))


def model_cfg_from(config, vocab_size: int) -> ModelConfig:
  c = config.model
  if c.hf_path:  # the architecture of a Hugging Face checkpoint (config.json)
    from jaxalign.models import hf
    cfg = hf.config_from_hf(hf.read_config(c.hf_path), os.path.join(c.hf_path, "config.json"), dtype=c.dtype,
                            remat=c.remat, max_len=int(c.max_len))
    if vocab_size > cfg.vocab_size:
      raise UserError(f"{os.path.join(c.hf_path, 'config.json')}: vocab_size={cfg.vocab_size} is smaller than "
                      f"the tokenizer's {vocab_size} tokens")
    source = f"model.hf_path={c.hf_path!r}"
  else:
    cfg = model_config(c.preset, vocab_size=vocab_size, dtype=c.dtype, remat=c.remat,
                       max_len=c.max_len or None)
    source = f"model.preset={c.preset!r}"
  cfg = dataclasses.replace(cfg, attention_chunk=int(c.get("attention_chunk", 0)),
                            kv_cache_dtype=str(c.get("kv_cache_dtype", "")))
  need = int(config.data.prompt_len) + int(config.data.completion_len)
  if need > cfg.max_len:
    raise UserError(f"config data.prompt_len + data.completion_len = {need} exceeds the model's "
                    f"max_len={cfg.max_len} ({source}; set model.max_len)")
  return cfg


def initial_params(config, cfg: ModelConfig, mesh, init_from: str):
  """Random init (seeded), the Hugging Face checkpoint (`model.hf_path`), or the latest params of
  another run (`init_from`, which wins)."""
  if not init_from and config.model.hf_path:
    from jaxalign.models import hf
    return hf.load_params(config.model.hf_path, cfg, mesh)
  if not init_from:
    return init_params(cfg, jax.random.fold_in(jax.random.key(int(config.seed)), 0), mesh)
  if not os.path.isdir(init_from):
    raise UserError(f"config init_from: {init_from}: no such run directory")
  params = restore_params(init_from, _restore_target(abstract_params(cfg), mesh))
  if params is None:
    raise UserError(f"config init_from: {init_from}: no checkpoint found")
  return params


class ScalarModel(NamedTuple):
  kind: str  # reward_model | preference_model
  cfg: ModelConfig
  params: Any  # {"trunk": ..., "head": ...}
  sep_id: int  # preference models: the token between the two completions
  readout: str  # preference models: `heads.pair_logit`'s readout


def separator_id(tok) -> int:
  return tok.bos_id if tok.bos_id >= 0 else tok.eos_id


def abstract_scalar_model(cfg: ModelConfig, mesh):
  """ShapeDtypeStructs (with shardings) of `{"trunk", "head"}` params, for restoring."""
  return _restore_target({"trunk": abstract_params(cfg), "head": heads.abstract_head(cfg)}, mesh)


def _run_config(run_dir: str) -> ml_collections.ConfigDict:
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{run_dir}: not a run directory (no config.json)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def run_tokenizer(config, run_dir: str):
  """The tokenizer a run trained with: `data.tokenizer`, its Hugging Face model's (the copy kept in the run
  directory first), or the built-in task's."""
  if config.model.get("hf_path") and not config.data.get("tokenizer"):
    from jaxalign.data.hf_tokenizer import HFTokenizer, has_tokenizer
    from jaxalign.models import hf
    copy = os.path.join(run_dir, hf.SOURCE_DIR)
    folder = copy if has_tokenizer(copy) else config.model.hf_path
    return HFTokenizer(folder, config.data.get("chat_template", "auto"))
  return load_tokenizer(config.data, run_dir)


def _with_model_source(config, run_dir: str):
  """`config` with `model.hf_path` pointing at the run's own copy of the model's config when it has one."""
  from jaxalign.models import hf
  copy = os.path.join(run_dir, hf.SOURCE_DIR)
  if config.model.get("hf_path") and os.path.isfile(os.path.join(copy, "config.json")):
    config.model.hf_path = copy
  return config


class Discriminator(NamedTuple):
  cfg: ModelConfig
  params: Any  # {"trunk": ..., "head": {"kernel": [D, 2]}}


def load_discriminator(run_dir: str, mesh=None, *, key: str = "tlcr.discriminator_path") -> Discriminator:
  """The latest token discriminator of a run directory; an error naming the config `key` if it holds another kind."""
  if not os.path.isfile(os.path.join(run_dir, "config.json")):
    raise UserError(f"config {key}: {run_dir}: not a run directory (no config.json)")
  config = _run_config(run_dir)
  if config.trainer != "token_discriminator":
    raise UserError(f"config {key}: {run_dir} holds a {config.trainer} run, not a token_discriminator")
  config = _with_model_source(config, run_dir)
  cfg = model_cfg_from(config, run_tokenizer(config, run_dir).vocab_size)
  mesh = shd.make_mesh() if mesh is None else mesh
  target = _restore_target({"trunk": abstract_params(cfg), "head": heads.abstract_token_head(cfg)}, mesh)
  params = restore_params(run_dir, target)
  if params is None:
    raise UserError(f"config {key}: {run_dir}: no checkpoint found")
  return Discriminator(cfg, params)


def load_reward_model(run_dir: str, mesh=None) -> ScalarModel:
  """The latest reward or preference model of a run directory, sharded on `mesh` (default: all devices).

  Score inside jit with `heads.sequence_score(m.cfg, m.params, ...)` (reward models) or
  `heads.preference_prob(m.cfg, m.params, ..., sep_id=m.sep_id, readout=m.readout)` (preference models),
  or through `jaxalign.judges`.
  """
  config = _run_config(run_dir)
  if config.trainer not in SCALAR_KINDS:
    raise UserError(f"{run_dir}: trainer {config.trainer!r} is not a reward or preference model")
  config = _with_model_source(config, run_dir)
  tok = run_tokenizer(config, run_dir)
  cfg = model_cfg_from(config, tok.vocab_size)
  mesh = shd.make_mesh() if mesh is None else mesh
  params = restore_params(run_dir, abstract_scalar_model(cfg, mesh))
  if params is None:
    raise UserError(f"{run_dir}: no checkpoint found")
  return ScalarModel(config.trainer, cfg, params, separator_id(tok), config.reward.pm_readout)
