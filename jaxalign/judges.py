"""Decoding and every judge of sampled completions: ground truth, reward models, preference models.

Used by the online methods (annotation), PPO (scores), the LSC reference rewards and evaluation.

  on the host   `decode` (tokens -> text), `local_rows` (this process's rows of a global batch),
                the built-in task's ground truth (`ground_truth_rewards`, `ground_truth_metrics`):
                the only judge that is a Python function of text
  inside jit    `reward_scores` (K reward models -> `[B, K]`), `pair_rewards` (both completions of a
                pair in one forward pass), `preference` (P(a ≻ b) from a reward or preference model);
                their parameters are arguments of the compiled step, never constants
  loading       `reward_models` (run directories -> `ScalarModel`s of the expected kind)

Multi-host: the rollouts are global arrays sharded over the batch; a host judge reads and
scores only its own process's rows (`local_rows`), and its per-row outputs go back into the
global batch with `jaxalign.sharding.shard_batch`, so no process ever holds a whole rollout.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.data import builtin
from jaxalign.errors import UserError
from jaxalign.models import heads
from jaxalign.models.loading import ScalarModel, load_reward_model

Array = jax.Array


# ---- on the host ----

def decode(tok, tokens, mask, finished) -> list[str]:
  """Completion texts of sampled rows (the EOS itself dropped)."""
  out = []
  for t, m, f in zip(np.asarray(tokens), np.asarray(mask), np.asarray(finished)):
    ids = t[m.astype(bool)]
    out.append(tok.decode(ids[:-1] if f else ids))
  return out


def local_rows(x: Array) -> np.ndarray:
  """This process's rows of a global array sharded over its leading (batch) axis, in order.

  Single-process: the whole array. Devices that hold the same rows (a replicated axis) count once.
  """
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  pieces = {}
  for s in x.addressable_shards:
    pieces.setdefault(s.index[0].start or 0, s.data)
  return np.concatenate([np.asarray(pieces[k]) for k in sorted(pieces)])


def ground_truth_rewards(prompts, texts, finished, props: Sequence[str]) -> np.ndarray:
  """`[b, K]` ground-truth property scores (`builtin.property_score`) of decoded completions."""
  return np.array([[builtin.property_score(q, t, bool(f), k) for k in props]
                   for q, t, f in zip(prompts, texts, finished)], np.float64).reshape(len(texts), len(props))


def ground_truth_metrics(prompts, texts, finished) -> dict[str, np.ndarray]:
  """Per-row ground truth of rollouts on the built-in task (averaged by the compiled step)."""
  fin = [bool(f) for f in finished]
  prop = lambda k: np.array([builtin.property_score(q, t, f, k) for q, t, f in zip(prompts, texts, fin)])
  return {"gt_reward": builtin.rewards(prompts, texts, fin), "gt_sentiment": prop("sentiment"),
          "gt_politeness": prop("politeness"),
          "both_good": np.array([f and builtin.both_good(q, t) for q, t, f in zip(prompts, texts, fin)], float)}


# ---- inside jit ----

def reward_scores(cfgs: Sequence, params: Sequence, prompt_BxP: Array, prompt_mask_BxP: Array,
                  completion_BxC: Array, completion_mask_BxC: Array) -> Array:
  """`[B, K]` float32 rewards of K reward models (`cfgs[k]`, `params[k]` = `{"trunk", "head"}`)."""
  return jnp.stack([heads.sequence_score(c, p, prompt_BxP, prompt_mask_BxP, completion_BxC, completion_mask_BxC)
                    for c, p in zip(cfgs, params)], axis=-1)


def pair_rewards(cfg, params, prompt_BxP: Array, prompt_mask_BxP: Array, a_BxC: Array, a_mask_BxC: Array,
                 b_BxC: Array, b_mask_BxC: Array) -> tuple[Array, Array]:
  """Rewards `([B], [B])` of completions a and b, one forward pass (the two concatenated on the batch axis)."""
  cat = lambda u, v: jnp.concatenate([u, v], axis=0)
  r = heads.sequence_score(cfg, params, cat(prompt_BxP, prompt_BxP), cat(prompt_mask_BxP, prompt_mask_BxP),
                           cat(a_BxC, b_BxC), cat(a_mask_BxC, b_mask_BxC))
  return tuple(jnp.split(r, 2))


def preference(model: ScalarModel, params, prompt_BxP: Array, prompt_mask_BxP: Array, a_BxC: Array,
               a_mask_BxC: Array, b_BxC: Array, b_mask_BxC: Array) -> tuple[Array, dict]:
  """`(P(a ≻ b) [B], per-row diagnostics)` from a reward model (σ(r_a − r_b)) or a preference model.

  `model` gives the kind and the static settings; `params` are its (traced) parameters.
  """
  args = (prompt_BxP, prompt_mask_BxP, a_BxC, a_mask_BxC, b_BxC, b_mask_BxC)
  if model.kind == "reward_model":
    ra, rb = pair_rewards(model.cfg, params, *args)
    return heads.bt_preference_prob(ra, rb), {"rm_reward_a": ra, "rm_reward_b": rb}
  return heads.preference_prob(model.cfg, params, *args, sep_id=model.sep_id, readout=model.readout), {}


# ---- loading ----

def reward_models(paths: Sequence[str], mesh, *, kind: str = "reward_model", key: str = "ppo.reward_paths"
                  ) -> list[ScalarModel]:
  """The scalar models of `paths`, each checked to be a `kind`; errors name the config `key`."""
  models = [load_reward_model(d, mesh) for d in paths]
  for d, m in zip(paths, models):
    if m.kind != kind:
      raise UserError(f"config {key}: {d} holds a {m.kind}, not a {kind}")
  return models
