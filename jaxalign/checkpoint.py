"""The only module that talks to orbax.

A checkpoint at step `s` holds the train state (params, optimiser state, step and
any method state) and a small JSON `meta` dict (data position, cache keys, ...).
orbax writes each step to a temporary folder and renames it when complete, so a
run killed mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory: str, *, max_to_keep: int | None = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                        enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, options=opts, item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, meta: dict[str, Any] | None = None, *, force: bool = True) -> None:
    self._mngr.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})), force=force)

  def restore(self, abstract_state, step: int | None = None):
    """Restores onto `abstract_state`'s shardings (a tree of ShapeDtypeStruct with .sharding)."""
    step = self.latest_step() if step is None else step
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out.state, dict(out.meta or {})

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a live tree, for restore targets."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore_params(workdir_or_ckpt_dir: str, abstract_params, step: int | None = None):
  """Params from the latest checkpoint of a run (for `init_from`), or of `step`, onto given shardings.

  Only the `params` subtree is read (`partial_restore`): the source run's optimiser
  and method state may have any structure. None when there is no (such) checkpoint.
  """
  path = os.path.abspath(workdir_or_ckpt_dir)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  # Finished steps are plain integer folders; orbax's in-progress ones carry a tmp suffix.
  steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
  if not steps or (step is not None and int(step) not in steps):
    return None
  step = max(steps) if step is None else int(step)
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), abstract_params)
  out = ocp.PyTreeCheckpointer().restore(
      os.path.join(path, str(step), "state"),
      args=ocp.args.PyTreeRestore(item={"params": abstract_params}, restore_args={"params": restore_args},
                                  partial_restore=True))
  return out["params"]
