"""Batched inference over whole data sets, and the cache keys of what it derives.

`map_rows` runs a jittable function over every row of a host data set in sharded batches
(reference log-probs, UDM embeddings, held-out scores), gathering the outputs on every
host, with an optional disk cache keyed by (data fingerprint, params checksum).
"""

from __future__ import annotations

import hashlib
import os
import sys

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxalign import faults
from jaxalign import sharding as shd
from jaxalign.data import pipeline


def params_checksum(params) -> str:
  """A short hash of every parameter's sum and sum of squares (cache keys for derived data)."""
  sums = jax.device_get(jax.tree.map(lambda x: jnp.stack([jnp.sum(x.astype(jnp.float32)),
                                                          jnp.sum(jnp.square(x.astype(jnp.float32)))]), params))
  flat = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(sums)])
  return hashlib.sha256(flat.astype(np.float64).tobytes()).hexdigest()[:16]


def map_rows(fn, params, arrays: dict, mesh, *, batch_size: int, desc: str,
             cache: tuple[str, str] | None = None, rows: np.ndarray | None = None):
  """`fn(params, batch) -> tuple of [b, ...] arrays` over the rows of `arrays`, in sharded batches.

  Returns `(tuple of numpy arrays [N, ...], key)`, gathered on every host. `rows`: compute only these
  row indices (e.g. the rows a run will visit, `pipeline.rows_visited`); the others are NaN (floats) or 0.
  With `cache=(dir, name)` the result is kept in `dir/name-KEY.npz`, KEY = (data fingerprint, params
  checksum), with a mask of the rows it holds: a later call computes only the rows it lacks (a longer
  rerun of a short run) and adds them to the file.
  """
  key = f"{pipeline.fingerprint(arrays)}-{params_checksum(params)}"
  n = next(iter(arrays.values())).shape[0]
  want = np.arange(n) if rows is None else np.unique(np.asarray(rows, np.int64))
  path = os.path.join(cache[0], f"{cache[1]}-{key}.npz") if cache else None
  cached = load_arrays(path) if path else None
  outs, done = None, np.zeros(n, bool)
  if cached is not None and "__rows__" in cached and cached["__rows__"].shape == (n,):
    done = cached.pop("__rows__").astype(bool)
    outs = [cached[f"out{i}"] for i in range(len(cached))]
  todo = want[~done[want]]
  if len(todo):
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    bs = max(shards, (batch_size // shards) * shards)
    jfn = jax.jit(fn)
    got_all = None
    for lo in tqdm(range(0, len(todo), bs), desc=desc, disable=jax.process_index() != 0):
      idx = todo[np.arange(lo, lo + bs) % len(todo)]  # the last batch wraps around; extra rows are dropped
      b = shd.shard_batch(pipeline.process_slice(pipeline.get_batch(arrays, idx)), mesh)
      # Outputs are sharded over the batch across hosts: gather them everywhere.
      got = multihost_utils.process_allgather(jfn(params, b), tiled=True)
      got = got if isinstance(got, (tuple, list)) else (got,)
      got_all = got_all or [[] for _ in got]
      for o, g in zip(got_all, got):
        o.append(np.asarray(g))
    new = [np.concatenate(o)[:len(todo)] for o in got_all]
    if outs is None:
      outs = [np.full((n,) + x.shape[1:], np.nan if np.issubdtype(x.dtype, np.floating) else 0, x.dtype)
              for x in new]
    for o, x in zip(outs, new):
      o[todo] = x
    done[todo] = True
    if path and jax.process_index() == 0:
      save_arrays(path, {**{f"out{i}": r for i, r in enumerate(outs)}, "__rows__": done})
  return tuple(outs), key


def _digest(arrays: dict[str, np.ndarray]) -> str:
  h = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes a cache file atomically: a temporary file (with a SHA-256 of the arrays), flushed to disk,
  then renamed into place. A killed write leaves at most the temporary file, never a partial `path`."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  with open(tmp, "wb") as f:
    np.savez(f, __sha256__=np.frombuffer(_digest(arrays).encode(), np.uint8), **arrays)
    f.flush()
    faults.point("ref_cache", f=f)
    os.fsync(f.fileno())
  os.replace(tmp, path)


def load_arrays(path: str) -> dict[str, np.ndarray] | None:
  """A cache file written by `save_arrays`, verified against its SHA-256; None when absent, and None
  with a warning (the caller recomputes it) when it is truncated, damaged or not one of ours."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
    want = arrays.pop("__sha256__").tobytes().decode()
    if _digest(arrays) != want:
      raise ValueError("contents do not match their checksum")
  except Exception as e:  # noqa: BLE001 (any unreadable cache is recomputed)
    if jax.process_index() == 0:
      print(f"warning: {path}: damaged cache ({type(e).__name__}: {str(e)[:120]}); recomputing it",
            file=sys.stderr, flush=True)
    return None
  return arrays
