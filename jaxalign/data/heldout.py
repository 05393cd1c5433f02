"""The held-out split of a user data source, by prompt hash (see `jaxalign.data_eval`)."""

from __future__ import annotations

import hashlib

import numpy as np


def _prompt_hash(prompt: str) -> float:
  return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_heldout(rows: list[dict], data_cfg, load_eval=None) -> tuple[list[dict], list[dict]]:
  """`(train rows, held-out rows)` of a non-built-in source: the rows of `data.eval_path` / `data.eval_split`
  when one is set; else the rows whose prompt hashes below `data.eval_fraction` (independent of row order and
  seed; every row of a held-out prompt leaves training), at most `data.eval_examples` of them.

  load_eval() -> the rows of `data.eval_path` / `data.eval_split` (called only when one is set).
  """
  cap = int(data_cfg.get("eval_examples", 256))
  if data_cfg.get("eval_path") or data_cfg.get("eval_split"):
    held = load_eval() if load_eval is not None else []
    return rows, held[:cap] if cap > 0 else held
  frac = float(data_cfg.get("eval_fraction", 0.0))
  if frac <= 0 or cap == 0:
    return rows, []
  key = lambda r: r["prompt"] if "prompt" in r else r.get("chosen_prompt", "")  # JPO rows: the chosen side's
  h = np.array([_prompt_hash(key(r)) for r in rows])
  held_idx = np.flatnonzero(h < frac)
  held_idx = held_idx[np.argsort(h[held_idx], kind="stable")][:cap] if cap > 0 else held_idx
  held_set = set(held_idx.tolist())
  held_prompts = {key(rows[i]) for i in held_set}
  # every row of a held-out prompt leaves training, also those beyond the cap
  train = [r for i, r in enumerate(rows) if i not in held_set and key(r) not in held_prompts]
  return train, [rows[i] for i in sorted(held_set)]
