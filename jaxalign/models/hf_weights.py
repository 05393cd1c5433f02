"""Hugging Face checkpoint weights <-> jaxalign params: the tensor map, loading and writing.

`load_params` reads the weights (`model.safetensors`, or the shards of
`model.safetensors.index.json`; float32, bfloat16 or float16) straight into the sharded
layout of a mesh: one tensor at a time is read from the memory-mapped file, converted to
the jaxalign layout and placed with `jax.make_array_from_callback`, so the whole model
never sits in host memory. `write_params` streams params back out as safetensors, tensor
by tensor, sharded above `max_shard_size`. The config side is `jaxalign.models.hf_config`;
the public entry points `jaxalign.models.hf`.

Layout. Hugging Face `nn.Linear` weights are `[out, in]`; jaxalign kernels are
`[in..., out...]` with heads split out (`q: [D, N, H]`, `o: [N, H, D]`), so import is a
transpose and a reshape. GPT-2 stores `Conv1D` weights as `[in, out]` (no transpose) and
q, k, v fused in `c_attn` (split into thirds). RoPE is the half-split convention on
both sides, so no permutation is needed.
"""

from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxalign import sharding as shd
from jaxalign.errors import UserError
from jaxalign.models import safetensors_io
from jaxalign.models.transformer import ModelConfig, Transformer


# ---------------------------------------------------------------- tensor names and layouts


@dataclasses.dataclass(frozen=True)
class _T:
  """One jaxalign parameter and where it lives in a Hugging Face checkpoint.

  The HF tensor is our array reshaped to `[prod(shape[:n_in]), prod(shape[n_in:])]` (or flat,
  n_in=0), transposed when HF stores it `[out, in]` (nn.Linear). `part`/`parts`: our array is
  that slice of the HF tensor's output axis (GPT-2's fused c_attn).
  """
  ours: tuple[str, ...]
  hf: str
  n_in: int = 0
  transpose: bool = False
  part: int = 0
  parts: int = 1

  @property
  def out_axis(self) -> int:
    return 0 if self.transpose else -1


def _specs(cfg: ModelConfig) -> list[_T]:
  out: list[_T] = []
  if cfg.family == "gpt2":
    p = "transformer."
    out += [_T(("embed", "embedding"), p + "wte.weight", 1), _T(("pos_embed", "embedding"), p + "wpe.weight", 1)]
    for i in range(cfg.n_layers):
      h, o = f"{p}h.{i}.", f"layers_{i}"
      for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
        out += [_T((o, ours, "scale"), h + theirs + ".weight"), _T((o, ours, "bias"), h + theirs + ".bias")]
      for j, x in enumerate("qkv"):
        out += [_T((o, "attn", x, "kernel"), h + "attn.c_attn.weight", 1, part=j, parts=3),
                _T((o, "attn", x, "bias"), h + "attn.c_attn.bias", 0, part=j, parts=3)]
      out += [_T((o, "attn", "o", "kernel"), h + "attn.c_proj.weight", 2),
              _T((o, "attn", "o", "bias"), h + "attn.c_proj.bias"),
              _T((o, "mlp", "up", "kernel"), h + "mlp.c_fc.weight", 1),
              _T((o, "mlp", "up", "bias"), h + "mlp.c_fc.bias"),
              _T((o, "mlp", "down", "kernel"), h + "mlp.c_proj.weight", 1),
              _T((o, "mlp", "down", "bias"), h + "mlp.c_proj.bias")]
    out += [_T(("final_norm", "scale"), p + "ln_f.weight"), _T(("final_norm", "bias"), p + "ln_f.bias")]
  else:
    p = "model."
    out.append(_T(("embed", "embedding"), p + "embed_tokens.weight", 1))
    for i in range(cfg.n_layers):
      h, o = f"{p}layers.{i}.", f"layers_{i}"
      out.append(_T((o, "attn_norm", "scale"), h + "input_layernorm.weight"))
      for x in "qkv":
        out.append(_T((o, "attn", x, "kernel"), h + f"self_attn.{x}_proj.weight", 1, True))
        if cfg.qkv_bias:
          out.append(_T((o, "attn", x, "bias"), h + f"self_attn.{x}_proj.bias"))
      out.append(_T((o, "attn", "o", "kernel"), h + "self_attn.o_proj.weight", 2, True))
      if cfg.o_bias:
        out.append(_T((o, "attn", "o", "bias"), h + "self_attn.o_proj.bias"))
      if cfg.qk_norm:
        out += [_T((o, "attn", "q_norm", "scale"), h + "self_attn.q_norm.weight"),
                _T((o, "attn", "k_norm", "scale"), h + "self_attn.k_norm.weight")]
      out.append(_T((o, "mlp_norm", "scale"), h + "post_attention_layernorm.weight"))
      for x in ("gate", "up", "down"):
        out.append(_T((o, "mlp", x, "kernel"), h + f"mlp.{x}_proj.weight", 1, True))
        if cfg.mlp_bias:
          out.append(_T((o, "mlp", x, "bias"), h + f"mlp.{x}_proj.bias"))
    out.append(_T(("final_norm", "scale"), p + "norm.weight"))
  if not cfg.tie_embeddings:
    out.append(_T(("lm_head",), "lm_head.weight", 1, True))
  return out


def _hf_shape(t: _T, shape: tuple[int, ...]) -> tuple[int, ...]:
  s = [math.prod(shape)] if t.n_in == 0 else [math.prod(shape[:t.n_in]), math.prod(shape[t.n_in:])]
  if t.transpose:
    s = s[::-1]
  s[t.out_axis] *= t.parts
  return tuple(s)


def _to_ours(t: _T, src: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if t.parts > 1:
    n = src.shape[t.out_axis] // t.parts
    src = src[t.part * n:(t.part + 1) * n] if t.out_axis == 0 else src[..., t.part * n:(t.part + 1) * n]
  return (src.T if t.transpose else src).reshape(shape)


def _to_hf(t: _T, ours: np.ndarray) -> np.ndarray:
  a = ours.reshape(-1) if t.n_in == 0 else ours.reshape(math.prod(ours.shape[:t.n_in]), -1)
  return a.T if t.transpose else a


# Tensors a checkpoint may hold that are not parameters (buffers of older exports).
_IGNORED = re.compile(r"(^|\.)(attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")


def _abstract(cfg: ModelConfig):
  tok = jnp.zeros((1, 4), jnp.int32)
  return jax.eval_shape(lambda r: Transformer(cfg).init(r, tok, tok, tok + 1), jax.random.key(0))["params"]


def _default_mesh():
  return shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def load_params(folder: str, cfg: ModelConfig, mesh=None, param_dtype: str = "float32"):
  """The checkpoint's weights as jaxalign params, each born sharded on `mesh` (default: one device)."""
  st = safetensors_io.SafetensorsFolder(folder)
  mesh = mesh or _default_mesh()
  boxed = _abstract(cfg)
  shardings = traverse_util.flatten_dict(shd.param_shardings(boxed, mesh))
  shapes = {k: v.shape for k, v in traverse_util.flatten_dict(nn.meta.unbox(boxed)).items()}
  specs = _specs(cfg)  # in checkpoint order
  if {t.ours for t in specs} != set(shapes):  # a bug here, not a user error
    raise AssertionError(f"tensor map out of sync: {sorted({t.ours for t in specs} ^ set(shapes))}")
  used: set[str] = set()
  out = {}
  dt = np.dtype(jnp.dtype(param_dtype))
  for t in specs:
    path, shape = t.ours, shapes[t.ours]
    name = _resolve(st, t.hf)
    if name is None:
      raise UserError(f"{folder}: tensor {t.hf!r} not found in the safetensors files "
                      f"(config.json describes a {cfg.family} model with {cfg.n_layers} layers)")
    used.add(name)
    src = st.get(name)
    want = _hf_shape(t, shape)
    if tuple(src.shape) != want:
      raise UserError(f"{st.where(name)}: tensor {name}: shape {list(src.shape)} does not match config.json "
                      f"(expected {list(want)})")
    host = np.ascontiguousarray(_to_ours(t, src, shape), dtype=dt)  # the one host copy of this tensor
    out[path] = jax.make_array_from_callback(shape, shardings[path], lambda idx, a=host: a[idx])
    del host
  extra = [n for n in st.names() if n not in used and not _IGNORED.search(n)
           and not (cfg.tie_embeddings and n.endswith("lm_head.weight"))]
  if extra:
    raise UserError(f"{st.where(extra[0])}: unexpected tensor {extra[0]!r}: config.json ({cfg.family}) does not "
                    f"describe it" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
  return traverse_util.unflatten_dict(out)


def _resolve(st, name: str) -> str | None:
  if name in st:
    return name
  for prefix in ("model.", "transformer."):  # base-model checkpoints omit the prefix
    if name.startswith(prefix) and name[len(prefix):] in st:
      return name[len(prefix):]
  return None



def write_params(cfg: ModelConfig, params, path: str, dtype: str = "float32",
                 max_shard_size: int = 5 * 2**30) -> list[str]:
  """Writes `params` as the safetensors of `cfg` into `path` (dtype on disk); returns the files written."""
  p = nn.meta.unbox(params)
  p = p["params"] if "params" in p else p
  flat = traverse_util.flatten_dict(p)
  groups: dict[str, list[_T]] = {}
  for t in _specs(cfg):
    groups.setdefault(t.hf, []).append(t)
  out_dt = np.dtype(jnp.dtype(dtype))
  entries = []
  for name, ts in groups.items():
    shape = _hf_shape(ts[0], tuple(flat[ts[0].ours].shape))
    entries.append((name, shape, out_dt))

  def produce(name):
    ts = sorted(groups[name], key=lambda t: t.part)
    parts = [_to_hf(t, np.asarray(jax.device_get(flat[t.ours]))) for t in ts]
    arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=ts[0].out_axis)
    return arr.astype(out_dt)
  return safetensors_io.write_folder(path, entries, produce, max_shard_size)
