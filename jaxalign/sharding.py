"""One mesh, one table of logical-axis rules, and helpers that apply them.

Parameters carry logical axis names from creation (`nn.with_logical_partitioning`);
`RULES` maps each name to mesh axes. A mesh axis that does not divide a dimension
is dropped for that tensor (replicated instead), so odd vocabulary sizes work on
any mesh; everything else is declared, not improvised.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxalign.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (tuple) or None (replicated)
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """Mesh with axes (data, fsdp, tensor); one size may be -1 to take the rest."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(data), int(fsdp), int(tensor)]
  if sizes.count(-1) > 1:
    raise UserError(f"mesh: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
    raise UserError(f"mesh: sizes data={data} fsdp={fsdp} tensor={tensor} do not fit {len(devices)} devices")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise UserError(f"mesh: data*fsdp*tensor={math.prod(sizes)} but there are {len(devices)} devices")
  auto = (jax.sharding.AxisType.Auto,) * 3
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=auto)


def mesh_from_config(mesh_cfg) -> Mesh:
  return make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor)


def logical_to_spec(axes: tuple, shape: tuple[int, ...], mesh: Mesh) -> P:
  """PartitionSpec for a tensor with logical `axes`, dropping non-dividing mesh axes."""
  rules = dict(RULES)
  used: set[str] = set()
  out = []
  for name, dim in zip(axes, shape):
    target = rules.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    keep = []
    for ax in targets:
      if ax in used or mesh.shape[ax] == 1:
        continue
      if dim % (math.prod(mesh.shape[a] for a in keep) * mesh.shape[ax]) == 0:
        keep.append(ax)
    used.update(keep)
    out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
  return P(*out)


def param_shardings(abstract_params, mesh: Mesh):
  """NamedShardings for a (boxed, `nn.Partitioned`) params tree, unboxed structure."""
  def one(x):
    if isinstance(x, nn.Partitioned):
      return NamedSharding(mesh, logical_to_spec(x.names, x.value.shape, mesh))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, abstract_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh, ndim: int, leading: int | None = None) -> NamedSharding:
  """Shard the leading (batch) axis over data x fsdp; the rest replicated."""
  axes = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1)
  if leading is not None and axes and leading % math.prod(mesh.shape[a] for a in axes):
    raise UserError(f"batch size {leading} is not divisible by data*fsdp="
                    f"{math.prod(mesh.shape[a] for a in axes)} mesh devices")
  first = None if not axes else axes[0] if len(axes) == 1 else axes
  return NamedSharding(mesh, P(first, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax arrays sharded on the batch axis.

  Each process passes its own slice of the global batch (multi-host) or the whole
  batch (single host); `make_array_from_process_local_data` assembles it.
  """
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
    sh = batch_sharding(mesh, v.ndim, global_shape[0])
    out[k] = jax.make_array_from_process_local_data(sh, v, global_shape)
  return out


def to_batch_sharding(batch: dict[str, jax.Array], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays (e.g. a sampler's outputs) laid out like `shard_batch`'s: rows over data x fsdp.

  One compiled copy; every process keeps only its own rows.
  """
  sh = {k: batch_sharding(mesh, v.ndim, v.shape[0]) for k, v in batch.items()}
  return jax.jit(lambda b: b, out_shardings=sh)(batch)
