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


def restore_params(workdir_or_ckpt_dir: str, abstract_params):
  """Params from the latest checkpoint of a run (for `init_from`), onto given shardings."""
  path = os.path.abspath(workdir_or_ckpt_dir)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
                               item_names=("state", "meta"))
  step = mngr.latest_step()
  if step is None:
    return None
  # Restore only the params subtree; the optimiser state of the source run is not needed.
  meta = mngr.item_metadata(step)
  target = jax.tree.map(lambda _: None, meta.state)
  target["params"] = abstract_params
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=jax.tree.map(
          lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding) if isinstance(x, jax.ShapeDtypeStruct) else None,
          target, is_leaf=lambda x: x is None or isinstance(x, jax.ShapeDtypeStruct)))))
  mngr.close()
  return restored.state["params"]
