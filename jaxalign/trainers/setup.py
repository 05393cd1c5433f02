"""What every trainer builds before its loop: precision, mesh, tokenizer, model config, params."""

from __future__ import annotations

import dataclasses
import os

import jax

from jaxalign import sharding as shd
from jaxalign.checkpoint import restore_params
from jaxalign.config import validate
from jaxalign.data.pipeline import load_tokenizer
from jaxalign.errors import UserError
from jaxalign.models.transformer import ModelConfig, model_config
from jaxalign.trainers import state as st


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
  cfg = dataclasses.replace(cfg, attention_chunk=int(c.get("attention_chunk", 0)))
  need = int(config.data.prompt_len) + int(config.data.completion_len)
  if need > cfg.max_len:
    raise UserError(f"config data.prompt_len + data.completion_len = {need} exceeds the model's "
                    f"max_len={cfg.max_len} ({source}; set model.max_len)")
  return cfg


def prepare(config, workdir: str):
  """Validates config; returns (mesh, tokenizer, model config)."""
  validate(config)
  if config.precision == "float64":
    jax.config.update("jax_enable_x64", True)
  mesh = shd.mesh_from_config(config.mesh)
  if config.model.hf_path and not config.data.tokenizer:  # the checkpoint's own tokenizer
    from jaxalign.data.hf_tokenizer import HFTokenizer
    tok = HFTokenizer(config.model.hf_path, config.data.chat_template)
  else:
    tok = load_tokenizer(config.data, workdir)
  cfg = model_cfg_from(config, tok.vocab_size)
  if config.model.hf_path and jax.process_index() == 0:  # so `jaxalign.export` finds them later
    from jaxalign.models import hf
    hf.copy_metadata(config.model.hf_path, os.path.join(workdir, hf.SOURCE_DIR))
  return mesh, tok, cfg


def initial_params(config, cfg: ModelConfig, mesh, init_from: str):
  """Random init (seeded), the Hugging Face checkpoint (`model.hf_path`), or the latest params of
  another run (`init_from`, which wins)."""
  if not init_from and config.model.hf_path:
    from jaxalign.models import hf
    return hf.load_params(config.model.hf_path, cfg, mesh)
  if not init_from:
    return st.init_params(cfg, jax.random.fold_in(jax.random.key(int(config.seed)), 0), mesh)
  if not os.path.isdir(init_from):
    raise UserError(f"config init_from: {init_from}: no such run directory")
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.tree.map(lambda p: p.value, st.abstract_params(cfg), is_leaf=lambda p: hasattr(p, "names")),
      shd.param_shardings(st.abstract_params(cfg), mesh))
  params = restore_params(init_from, abstract)
  if params is None:
    raise UserError(f"config init_from: {init_from}: no checkpoint found")
  return params


def batch_sizes_ok(config, mesh) -> None:
  micro = int(config.train.batch_size) // int(config.train.grad_accum)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if micro % shards:
    raise UserError(f"config train.batch_size: microbatch {micro} (batch_size/grad_accum) is not "
                    f"divisible by data*fsdp={shards} devices")
