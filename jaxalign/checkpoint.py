"""The only module that talks to orbax.

A checkpoint at step `s` holds the train state (params, optimiser state, step and
any method state) and a small JSON `meta` dict (data position, cache keys, ...).
orbax writes each step to a temporary folder and renames it when complete, so a
run killed mid-save leaves the previous checkpoint as the latest.

Every save also records an exact checksum of the state in `meta` (`state_checksum`: per
array, the sum of its bits as unsigned integers mod 2^32, independent of sharding and
reduction order). At resume `restore_intact` takes the newest checkpoint that restores and
matches its checksum; a damaged one (truncated or flipped files, unreadable metadata) is
moved to `damaged_checkpoints/` beside the checkpoint folder, with a warning naming it, and
the next older one is tried. Checkpoints that hold another model's state are an error, never
"damaged": nothing is moved.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxalign.errors import UserError

DAMAGED = "damaged_checkpoints"


def _leaf_sum(x):
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size >= 4:  # 8-byte values become pairs of uint32 (a trailing axis)
    u = jax.lax.bitcast_convert_type(x, jnp.uint32)
  else:
    u = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
  return jnp.sum(u, dtype=jnp.uint32)


_leaf_sums = jax.jit(lambda tree: [_leaf_sum(x) for x in jax.tree.leaves(tree)])


def state_checksum(tree) -> str:
  """An exact checksum of every array in `tree` (any sharding gives the same value)."""
  sums = _leaf_sums(tree)
  flat = np.asarray([int(np.asarray(s.addressable_data(0))) for s in sums], np.uint64)
  return hashlib.sha256(flat.tobytes()).hexdigest()[:20]


def _shapes(tree) -> list[tuple]:
  return sorted((tuple(int(d) for d in x.shape), str(np.dtype(x.dtype))) for x in jax.tree.leaves(tree)
                if hasattr(x, "shape"))


def _short(e: BaseException) -> str:
  text = " ".join(str(e).split()).split(" See full TensorStore details")[0]
  return f"{type(e).__name__}: {text[:160]}"


def _attempt(fn):
  """`(fn(), None)`, or `(None, one-line reason)` when it raises, with stderr quiet meanwhile.

  When one array of a damaged checkpoint cannot be read, tensorstore's callbacks for the reads still in
  flight land on orbax's closed event loop, and the abandoned read coroutines are finalised later: both print
  tracebacks that are noise (the failure itself is reported in one warning line). So the exception is
  reduced to its message and dropped, the leftovers are let run and collected, and only then is stderr back.
  """
  sys.stderr.flush()
  saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  reason = None
  try:
    try:
      return fn(), None
    except Exception as e:  # noqa: BLE001 (any failure to read it back is damage)
      reason = _short(e)
    time.sleep(0.5)
    gc.collect()
    return None, reason
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


def warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Checkpointer:
  def __init__(self, directory: str, *, max_to_keep: int | None = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                        enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(
        self.directory, options=opts,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def _write_failed(self, e: Exception, step) -> UserError:
    text = str(e)
    os_error = re.search(r"os_error_code='?(\d+)", text)  # tensorstore's form of an OS error
    failed_step = re.search(r"/(\d+)\.orbax-checkpoint-tmp", text)  # (an earlier asynchronous save)
    step = failed_step.group(1) if failed_step else step
    why = os.strerror(int(os_error.group(1))) if os_error else _short(e)
    return UserError(f"{self.directory}: writing checkpoint {step} failed ({why}); the checkpoints before it "
                     "are intact: rerun the same command to resume")

  def save(self, step: int, state, meta: dict[str, Any] | None = None, *, force: bool = True) -> None:
    meta = {**(meta or {}), "checksum": state_checksum(state)}
    try:  # (an earlier asynchronous save that failed raises here too)
      self._mngr.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
    except Exception as e:  # noqa: BLE001 (a full disk, a removed folder: tensorstore raises ValueError)
      raise self._write_failed(e, step) from None

  def restore(self, abstract_state, step: int | None = None):
    """Restores onto `abstract_state`'s shardings (a tree of ShapeDtypeStruct with .sharding)."""
    step = self.latest_step() if step is None else step
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out.state, dict(out.meta or {})

  def _check_matches(self, step: int, abstract_state) -> None:
    """A UserError when checkpoint `step` holds arrays of other shapes (another model or trainer);
    an unreadable metadata file propagates as damage."""
    md = self._mngr.item_metadata(step)["state"]
    theirs = _shapes(getattr(md, "tree", md))
    ours = _shapes(abstract_state)
    if theirs != ours:
      missing = sorted(set(ours) - set(theirs)) or sorted(set(theirs) - set(ours))
      raise UserError(f"{self.directory}/{step}: this checkpoint holds another model or trainer's state "
                      f"({len(theirs)} arrays, this config has {len(ours)}; e.g. {missing[0][1]}{list(missing[0][0])} "
                      f"is not in both); use the config it was written with, or another --workdir")

  def restore_intact(self, abstract_state):
    """The newest checkpoint that restores and matches its checksum: `(state, meta, step)`, or None
    when there is none at all. Damaged ones are moved aside with a warning; a UserError when every
    checkpoint is damaged."""
    steps = sorted(self._mngr.all_steps(), reverse=True)
    damaged: list[int] = []
    found = None
    for step in steps:
      reason = None
      try:
        self._check_matches(step, abstract_state)
      except UserError:
        raise
      except Exception as e:  # noqa: BLE001 (unreadable metadata is damage)
        reason = _short(e)
      if reason is None:
        out, reason = _attempt(lambda: self.restore(abstract_state, step))
        if out is not None:
          want = out[1].get("checksum")
          if want is not None and state_checksum(out[0]) != want:
            reason = "the restored state does not match the checksum saved with it"
          else:
            found = (out[0], out[1], step)
            break
      damaged.append(step)
      self._set_aside(step, reason)
    if damaged:
      self._mngr.reload()
    if found is None and damaged:
      raise UserError(f"{self.directory}: no intact checkpoint (damaged: steps {', '.join(map(str, damaged))}, "
                      f"moved to {os.path.join(os.path.dirname(self.directory), DAMAGED)})")
    return found

  def _set_aside(self, step: int, why: str) -> None:
    dst_dir = os.path.join(os.path.dirname(self.directory), DAMAGED)
    dst = os.path.join(dst_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      os.makedirs(dst_dir, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"jaxalign-checkpoint-aside-{step}")
    warn(f"{self.directory}/{step}: damaged checkpoint ({why}); moved to {dst}; trying the one before")

  def wait(self) -> None:
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._write_failed(e, self._mngr.latest_step()) from None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._mngr.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a live tree, for restore targets."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _restore_params_at(path: str, step: int, abstract_params):
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), abstract_params)
  out = ocp.PyTreeCheckpointer().restore(
      os.path.join(path, str(step), "state"),
      args=ocp.args.PyTreeRestore(item={"params": abstract_params}, restore_args={"params": restore_args},
                                  partial_restore=True))
  return out["params"]


def _select(saved, wanted):
  """The part of the saved tree that `wanted` asks for (a partial restore reads only those keys)."""
  if isinstance(saved, dict) and isinstance(wanted, dict):
    return {k: _select(saved[k], v) for k, v in wanted.items() if k in saved}
  return saved


def _saved_params_tree(path: str, step: int):
  try:
    md = ocp.PyTreeCheckpointer().metadata(os.path.join(path, str(step), "state"))
  except Exception:  # noqa: BLE001 (unreadable: damaged, handled by the caller)
    return None
  tree = getattr(md, "item_metadata", md)  # (orbax >= 0.11 wraps the tree in StepMetadata)
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, dict) or "params" not in tree:
    return None
  return tree["params"]


def _saved_param_shapes(path: str, step: int, wanted=None) -> list[tuple] | None:
  tree = _saved_params_tree(path, step)
  if tree is None:
    return None
  return _shapes(_select(tree, wanted) if wanted is not None else tree)


def _policy_nested(path: str, step: int, abstract_params) -> bool:
  """Whether the run keeps the model under `params["policy"]` (PPO and DR-PO: policy and value networks)."""
  tree = _saved_params_tree(path, step)
  return (isinstance(tree, dict) and "policy" in tree and isinstance(abstract_params, dict)
          and "policy" not in abstract_params)


def restore_params(workdir_or_ckpt_dir: str, abstract_params, step: int | None = None):
  """Params from the latest intact checkpoint of a run (for `init_from`), or of `step`, onto given shardings.

  Only the `params` subtree is read (`partial_restore`): the source run's optimiser
  and method state may have any structure; a PPO / DR-PO run's policy is read from `params["policy"]`. None when there is no (such) checkpoint. A newest
  checkpoint that cannot be read falls back to the one before (a warning names it); params of
  other shapes than `abstract_params` are a one-line UserError.
  """
  path = os.path.abspath(workdir_or_ckpt_dir)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  # Finished steps are plain integer folders; orbax's in-progress ones carry a tmp suffix.
  steps = sorted((int(d) for d in os.listdir(path) if d.isdigit()), reverse=True) if os.path.isdir(path) else []
  if step is not None:
    steps = [int(step)] if int(step) in steps else []
  problems = []
  for s in steps:
    nested = _policy_nested(path, s, abstract_params)  # a PPO run: its policy
    want = {"policy": abstract_params} if nested else abstract_params
    shapes = _saved_param_shapes(path, s, want)
    if shapes is not None and shapes != _shapes(want):
      raise UserError(f"{path}/{s}: its params do not match this model ({len(shapes)} arrays, the model has "
                      f"{len(_shapes(abstract_params))} of other shapes); was it trained with another model config?")
    params, reason = _attempt(lambda: _restore_params_at(path, s, want))
    if reason is None:
      return params["policy"] if nested else params
    problems.append(s)
    warn(f"{path}/{s}: cannot read its params ({reason}); trying the checkpoint before")
  if problems:
    raise UserError(f"{path}: no readable checkpoint (damaged: steps {', '.join(map(str, problems))})")
  return None
