"""Batched inference over whole data sets, and the cache keys of what it derives.

`map_rows` runs a jittable function over every row of a host data set in sharded batches
(reference log-probs, UDM embeddings, held-out scores), gathering the outputs on every
host, with an optional disk cache keyed by (data fingerprint, params checksum).
"""

from __future__ import annotations

import hashlib
import os

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxalign import sharding as shd
from jaxalign.data import pipeline


def params_checksum(params) -> str:
  """A short hash of every parameter's sum and sum of squares (cache keys for derived data)."""
  sums = jax.device_get(jax.tree.map(lambda x: jnp.stack([jnp.sum(x.astype(jnp.float32)),
                                                          jnp.sum(jnp.square(x.astype(jnp.float32)))]), params))
  flat = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(sums)])
  return hashlib.sha256(flat.astype(np.float64).tobytes()).hexdigest()[:16]


def map_rows(fn, params, arrays: dict, mesh, *, batch_size: int, desc: str,
             cache: tuple[str, str] | None = None):
  """`fn(params, batch) -> tuple of [b, ...] arrays` over every row of `arrays`, in sharded batches.

  Returns `(tuple of numpy arrays [N, ...], key)`. Outputs are gathered on every host. With
  `cache=(dir, name)` the result is stored in `dir/name-KEY.npz`, KEY = (data fingerprint, params
  checksum), and read back instead of recomputed when present (e.g. reference log-probs).
  """
  key = f"{pipeline.fingerprint(arrays)}-{params_checksum(params)}"
  path = os.path.join(cache[0], f"{cache[1]}-{key}.npz") if cache else None
  if path and os.path.exists(path):
    with np.load(path) as z:
      return tuple(z[f"out{i}"] for i in range(len(z.files))), key
  n = next(iter(arrays.values())).shape[0]
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  bs = max(shards, (batch_size // shards) * shards)
  jfn = jax.jit(fn)
  outs = None
  for lo in tqdm(range(0, n, bs), desc=desc, disable=jax.process_index() != 0):
    idx = np.arange(lo, lo + bs) % n  # the last batch wraps around; extra rows are dropped
    b = shd.shard_batch(pipeline.process_slice(pipeline.get_batch(arrays, idx)), mesh)
    # Outputs are sharded over the batch across hosts: gather them everywhere.
    got = multihost_utils.process_allgather(jfn(params, b), tiled=True)
    got = got if isinstance(got, (tuple, list)) else (got,)
    outs = outs or [[] for _ in got]
    for o, g in zip(outs, got):
      o.append(np.asarray(g))
  result = tuple(np.concatenate(o)[:n] for o in outs)
  if path and jax.process_index() == 0:
    os.makedirs(cache[0], exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{f"out{i}": r for i, r in enumerate(result)})
    os.replace(tmp, path)
  return result, key
