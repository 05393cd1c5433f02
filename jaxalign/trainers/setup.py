"""What every trainer builds before its loop: validation, precision, mesh, tokenizer, model config.

`begin` is the first call of every `train()`; `jaxalign.trainers.prologue` adds the reference
and policy parameters for the trainers that start from one.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxalign import sharding as shd
from jaxalign import trainers
from jaxalign.config import validate
from jaxalign.data.pipeline import load_tokenizer
from jaxalign.errors import UserError
from jaxalign.models.loading import model_cfg_from


def prepare(config, workdir: str):
  """Validates config (shared keys and the trainer's own section); returns (mesh, tokenizer, model config)."""
  validate(config)
  trainers.check(config)
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


def batch_sizes_ok(config, mesh) -> None:
  micro = int(config.train.batch_size) // int(config.train.grad_accum)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if micro % shards:
    raise UserError(f"config train.batch_size: microbatch {micro} (batch_size/grad_accum) is not "
                    f"divisible by data*fsdp={shards} devices")


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, os.path.join(workdir, "config.json"))


def begin(config, workdir: str, check_model=None):
  """Validate, build, check batch sizes against the mesh (and `check_model(cfg)`, checks that need the
  model config), then write `config.json`: `(mesh, tok, cfg)`."""
  mesh, tok, cfg = prepare(config, workdir)
  batch_sizes_ok(config, mesh)
  if check_model is not None:
    check_model(cfg)
  write_config(config, workdir)
  return mesh, tok, cfg


def dtype(config):
  """The numpy dtype of host-side floats fed to the step (`precision`)."""
  return np.float32 if config.precision == "float32" else np.float64


def split(s) -> list[str]:
  """A comma-separated config string (or a list) as its non-empty items."""
  if isinstance(s, (list, tuple)):
    return [str(x).strip() for x in s if str(x).strip()]
  return [x.strip() for x in str(s or "").split(",") if x.strip()]
