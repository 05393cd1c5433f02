"""Reward transformation and aggregation: the LSC transform and its logical-AND sum (algorithms.md §5).

  lsc(r, r_ref)          = log σ(r − r_ref(x))                    ≤ 0, diminishing returns above r_ref
  aggregate(method=...)  "lsc": Σ_k w_k·log σ(r_k − r_ref,k)  (log P(good on every property); paper: w = 1)
                         "centered_sum": Σ_k w_k·(r_k − r_ref,k)    (centred, untransformed)
                         "raw_sum": Σ_k r_k                         (the paper's main baseline)
                         "weighted_raw_sum": Σ_k w_k·r_k

`r_ref(x)` is a per-prompt statistic of the rewards of `n` samples of the reference
policy π₀ on that prompt: the `q`-quantile (default 0.85, UNVERIFIED: recalled from the
paper, not checked; NumPy "linear" interpolation), the mean, or the median. The sample
rewards `[N, n, K]` are computed once and cached on disk under a key of (prompt set,
π₀ checksum, reward-model checksums, sampling settings); the statistic is applied on
load, so changing `q` needs no new samples.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Callable, Sequence

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxalign import judges, sampling
from jaxalign import sharding as shd
from jaxalign.data import pipeline
from jaxalign.inference import load_arrays, params_checksum, save_arrays

Array = jax.Array

STATISTICS = ("quantile", "mean", "median")
AGGREGATIONS = ("lsc", "centered_sum", "raw_sum", "weighted_raw_sum")


def lsc(rewards: Array, reference: Array) -> Array:
  """The LSC transform `log σ(r − r_ref)`, elementwise."""
  return jax.nn.log_sigmoid(rewards - reference)


def reference_statistic(sample_rewards, *, statistic: str = "quantile", q: float = 0.85, axis: int = 1):
  """`r_ref` from reference-policy sample rewards (samples on `axis`, default `[N, n, K] -> [N, K]`)."""
  x = jnp.asarray(sample_rewards)
  if statistic == "quantile":
    if not 0.0 <= q <= 1.0:
      raise ValueError(f"quantile q={q} is not in [0, 1]")
    return jnp.quantile(x, q, axis=axis, method="linear")
  if statistic == "mean":
    return jnp.mean(x, axis=axis)
  if statistic == "median":
    return jnp.median(x, axis=axis)
  raise ValueError(f"unknown reference statistic {statistic!r} ({' | '.join(STATISTICS)})")


def aggregate(rewards_xK: Array, reference_xK: Array | None = None, *, method: str = "lsc",
              weights: Sequence[float] | Array | None = None) -> Array:
  """Combines K rewards (last axis) into one score `[...]`; see the module docstring."""
  r = jnp.asarray(rewards_xK)
  w = jnp.ones(r.shape[-1], r.dtype) if weights is None else jnp.asarray(weights, r.dtype)
  if w.shape != r.shape[-1:]:
    raise ValueError(f"{w.shape[0]} weights for {r.shape[-1]} rewards")
  if method in ("lsc", "centered_sum"):
    if reference_xK is None:
      raise ValueError(f"aggregation {method!r} needs per-prompt reference rewards")
    u = lsc(r, reference_xK) if method == "lsc" else r - reference_xK
    return jnp.sum(w * u, axis=-1)
  if method == "raw_sum":
    return jnp.sum(r, axis=-1)
  if method == "weighted_raw_sum":
    if weights is None:
      raise ValueError("aggregation 'weighted_raw_sum' needs weights")
    return jnp.sum(w * r, axis=-1)
  raise ValueError(f"unknown aggregation {method!r} ({' | '.join(AGGREGATIONS)})")


# ---- r_ref(x): reference-policy samples, scored once and cached ----

ScoreFn = Callable[[Array, Array, Array], Array]  # (rng, prompt_BxP, prompt_mask_BxP) -> rewards [B, K]


def reference_scorer(policy_cfg, policy_params, reward_models: Sequence[tuple], *, eos_id: int, pad_id: int,
                     max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> ScoreFn:
  """`fn(rng, prompt, prompt_mask) -> [B, K]`: sample π₀ once per prompt, score with K reward models.

  `reward_models` is a list of `(model_cfg, params)`; params are jit arguments, not constants.
  The raw reward-model outputs are returned (no missing-EOS penalty).
  """
  cfgs = tuple(c for c, _ in reward_models)

  @jax.jit
  def fn(pol, rms, rng, prompt, prompt_mask):
    tokens, mask, _ = sampling.sample(pol, prompt, prompt_mask, rng, cfg=policy_cfg, max_new_tokens=max_new_tokens,
                                      eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_k=top_k,
                                      top_p=top_p)
    return judges.reward_scores(cfgs, rms, prompt, prompt_mask, tokens, mask)

  return functools.partial(fn, policy_params, tuple(p for _, p in reward_models))


def sample_rewards(score_fn: ScoreFn, prompt_ids: np.ndarray, prompt_mask: np.ndarray, *, n_samples: int,
                   seed: int, mesh, batch_size: int = 64) -> np.ndarray:
  """Rewards `[N, n_samples, K]` of `n_samples` scored samples per prompt (keys from `seed`)."""
  n = prompt_ids.shape[0]
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  bs = max(shards, (batch_size // shards) * shards)
  arrays = dict(prompt=prompt_ids, prompt_mask=prompt_mask)
  out = []
  bar = tqdm(total=n_samples * -(-n // bs), desc="reference rewards", disable=jax.process_index() != 0)
  for s in range(n_samples):
    rows = []
    for j, lo in enumerate(range(0, n, bs)):
      idx = np.arange(lo, lo + bs) % n  # the last batch wraps around; extra rows are dropped
      b = shd.shard_batch(pipeline.process_slice(pipeline.get_batch(arrays, idx)), mesh)
      rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), s), j)
      rows.append(np.asarray(multihost_utils.process_allgather(score_fn(rng, b["prompt"], b["prompt_mask"]),
                                                               tiled=True)))
      bar.update(1)
    out.append(np.concatenate(rows)[:n])
  bar.close()
  return np.stack(out, axis=1)


def cached_sample_rewards(score_fn: ScoreFn, prompt_ids: np.ndarray, prompt_mask: np.ndarray, *, n_samples: int,
                          seed: int, mesh, cache_dir: str, key_parts: Sequence[str], batch_size: int = 64
                          ) -> tuple[np.ndarray, str]:
  """`sample_rewards` through a disk cache `cache_dir/ref_rewards-KEY.npz`; returns `(rewards, KEY)`.

  `key_parts` must identify everything `score_fn` depends on (π₀ and reward-model
  checksums, sampling settings); the prompt set, `n_samples`, `seed` and the batch size
  (which fixes the sampling keys) are added here.
  """
  spec = json.dumps([pipeline.fingerprint(dict(prompt=prompt_ids, prompt_mask=prompt_mask)), list(key_parts),
                     int(n_samples), int(seed), int(batch_size)])
  key = hashlib.sha256(spec.encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, f"ref_rewards-{key}.npz")
  cached = load_arrays(path)
  if cached is not None and "rewards" in cached:
    return cached["rewards"], key
  rewards = sample_rewards(score_fn, prompt_ids, prompt_mask, n_samples=n_samples, seed=seed, mesh=mesh,
                           batch_size=batch_size)
  if jax.process_index() == 0:
    save_arrays(path, {"rewards": rewards})
  return rewards, key


def lsc_reference(policy_cfg, policy_params, reward_models: Sequence[tuple], prompt_ids: np.ndarray,
                  prompt_mask: np.ndarray, *, mesh, cache_dir: str, eos_id: int, pad_id: int, max_new_tokens: int,
                  n_samples: int = 16, seed: int = 0, statistic: str = "quantile", q: float = 0.85,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, batch_size: int = 64
                  ) -> tuple[np.ndarray, str]:
  """Per-prompt `r_ref` `[N, K]` for K reward models from π₀ samples (cached); returns `(r_ref, cache key)`."""
  score_fn = reference_scorer(policy_cfg, policy_params, reward_models, eos_id=eos_id, pad_id=pad_id,
                              max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
  parts = [params_checksum(policy_params), *(params_checksum(p) for _, p in reward_models),
           repr((policy_cfg, [c for c, _ in reward_models])), repr((eos_id, pad_id, max_new_tokens, temperature,
                                                                    top_k, top_p))]
  rewards, key = cached_sample_rewards(score_fn, prompt_ids, prompt_mask, n_samples=n_samples, seed=seed, mesh=mesh,
                                       cache_dir=cache_dir, key_parts=parts, batch_size=batch_size)
  return np.asarray(reference_statistic(rewards, statistic=statistic, q=q, axis=1)), key


# ---- token-level rewards from a discriminator (TLCR, algorithms.md §6.3, §6.5) ----

TOKEN_REWARD_MODES = ("continuous", "official", "discrete")


def tlcr_token_rewards(p_BxT: Array, *, mode: str = "continuous", low: float = 0.4, high: float = 0.6,
                       positive: float = 1.0, negative: float = -1.0) -> Array:
  """Token rewards from the discriminator's `p = D(a_t | x, a_<t)` (probability of "positive").

  continuous  r = 2p − 1 ∈ [−1, 1] (the paper)
  official    r = 2σ(2p − 1) − 1 (the authors' code applies a second softmax: tanh((2p−1)/2), |r| ≤ 0.462)
  discrete    r = `positive` if p ≥ high, `negative` if p ≤ low, else 0 (the discrete-token baseline)
  """
  p = jnp.asarray(p_BxT, jnp.result_type(p_BxT, jnp.float32))
  if mode == "continuous":
    return 2.0 * p - 1.0
  if mode == "official":
    return 2.0 * jax.nn.sigmoid(2.0 * p - 1.0) - 1.0
  if mode == "discrete":
    return jnp.where(p >= high, jnp.asarray(positive, p.dtype),
                     jnp.where(p <= low, jnp.asarray(negative, p.dtype), jnp.zeros((), p.dtype)))
  raise ValueError(f"unknown token reward mode {mode!r} ({' | '.join(TOKEN_REWARD_MODES)})")


def token_rewards(p_BxT: Array, mask_BxT: Array, t) -> Array:
  """The token rewards PPO adds to each action from the discriminator's `p` `[B, T]` and the `config.tlcr`
  section `t`: `tlcr_token_rewards` by `t.token_reward`, one sign only with `t.sign`, clipped to
  ±`t.reward_clip`, 0 on padding."""
  r = tlcr_token_rewards(p_BxT, mode=t.token_reward, low=float(t.low), high=float(t.high),
                         positive=float(t.positive), negative=float(t.negative))
  if t.sign == "positive":
    r = jnp.maximum(r, 0.0)
  elif t.sign == "negative":
    r = jnp.minimum(r, 0.0)
  clip = float(t.reward_clip)
  return jnp.where(mask_BxT > 0, jnp.clip(r, -clip, clip), 0.0)
