"""The start every trainer after SFT shares: its reference model, and a policy that starts as it.

`init_from="auto"` trains (or resumes, or reuses) the SFT reference in WORKDIR/sft first;
otherwise the reference is `init_from`'s latest params, the Hugging Face checkpoint, or a
seeded random init (`jaxalign.models.loading.initial_params`).
"""

from __future__ import annotations

import copy
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.models.loading import initial_params
from jaxalign.trainers import setup, sft


class Start(NamedTuple):
  mesh: Any
  tok: Any
  cfg: Any  # the policy's ModelConfig
  init_from: str  # the resolved run directory ("" = random init or model.hf_path)
  reference: Any  # frozen reference params
  policy: Any  # a copy of the reference (separate buffers: the train state is donated)


def auto_sft(config, workdir: str) -> str:
  """Trains (or resumes, or reuses) the SFT reference in WORKDIR/sft; returns that directory."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.trainer, c.init_from = "sft", ""
    c.train.steps, c.train.batch_size = config.sft.steps, config.sft.batch_size
    c.train.learning_rate, c.data.num_examples = config.sft.learning_rate, config.sft.num_examples
    c.train.checkpoint_every = config.sft.steps
    c.train.packing = False  # a preference-run option; the SFT stage trains on whole sequences
    c.eval.every = 0
  sft_dir = os.path.join(workdir, "sft")
  sft.train(c, sft_dir)
  return sft_dir


def begin(config, workdir: str, *, policy: bool = True, check_model=None) -> Start:
  """`setup.begin`, then the reference (auto-SFT first when asked) and, with `policy`, its copy."""
  mesh, tok, cfg = setup.begin(config, workdir, check_model)
  init_from = auto_sft(config, workdir) if config.init_from == "auto" else config.init_from
  reference = initial_params(config, cfg, mesh, init_from)
  pol = jax.tree.map(jnp.copy, reference) if policy else None
  return Start(mesh, tok, cfg, init_from, frozen_dtype(reference, config.model.get("reference_dtype", "")), pol)


def frozen_dtype(params, dtype: str):
  """`model.reference_dtype`: the frozen reference's float params stored in `dtype` (bfloat16 halves their memory;
  the layers compute in `model.dtype` as before, on the rounded weights); "" leaves them float32."""
  if not dtype or dtype == "float32":
    return params
  dt = jnp.dtype(dtype)
  return jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, p),
                 donate_argnums=0)(params)
