"""LSC transform and aggregation against algorithms.md §5.5 (LSC-1); r_ref statistics; the cached precompute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import f64  # noqa: F401  (x64 is a conftest fixture)
from jaxalign import rewards
from jaxalign import sharding as shd
from jaxalign.models.transformer import model_config
from jaxalign.models import heads
from jaxalign.models.loading import init_params


def test_lsc_1(x64):
  r, = f64([1.0, 3.0, -1.0])
  np.testing.assert_allclose(rewards.lsc(r, 0.5), [-0.4740769841801067, -0.07888973429254963, -1.7014132779827524],
                             rtol=1e-6)
  # two properties: helpful r=2, r_ref=1; harmless r=-0.5, r_ref=0
  r2, ref2 = f64([2.0, -0.5], [1.0, 0.0])
  np.testing.assert_allclose(rewards.aggregate(r2, ref2, method="lsc"), -1.2873386716983295, rtol=1e-6)
  np.testing.assert_allclose(rewards.aggregate(r2, ref2, method="lsc"),
                             np.log(1 / (1 + np.exp(-1.0)) * 1 / (1 + np.exp(0.5))), rtol=1e-12)
  np.testing.assert_allclose(rewards.aggregate(r2, method="raw_sum"), 1.5, rtol=1e-12)
  # marginal utility du/dr = σ(−(r − r_ref)) at r − r_ref = −2, 0, 2
  du = jax.vmap(jax.grad(lambda x: rewards.lsc(x, 0.0)))(jnp.array([-2.0, 0.0, 2.0], jnp.float64))
  np.testing.assert_allclose(du, [0.880797078, 0.5, 0.119202922], rtol=1e-6)


def test_lsc_is_nonpositive_monotone_and_stable():
  d = jnp.linspace(-200.0, 200.0, 101)
  u = rewards.lsc(d, 0.0)
  assert np.all(np.isfinite(np.asarray(u))) and np.all(np.asarray(u) <= 0)
  assert np.all(np.diff(np.asarray(u)) >= 0)


def test_aggregations_and_logical_and(x64):
  r, ref = f64([[2.0, -0.5], [0.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]])
  w = [2.0, 0.5]
  lsc_w = rewards.aggregate(r, ref, method="lsc", weights=w)
  np.testing.assert_allclose(lsc_w, [2 * np.log(1 / (1 + np.exp(-1))) + 0.5 * np.log(1 / (1 + np.exp(0.5))),
                                     2 * np.log(1 / (1 + np.exp(1))) + 0.5 * np.log(0.5)], rtol=1e-12)
  np.testing.assert_allclose(rewards.aggregate(r, ref, method="centered_sum"), [0.5, -1.0])
  np.testing.assert_allclose(rewards.aggregate(r, method="raw_sum"), [1.5, 0.0])
  np.testing.assert_allclose(rewards.aggregate(r, method="weighted_raw_sum", weights=w), [3.75, 0.0])
  # AND: excellent on one property cannot buy back a bad other one; the raw sum prefers the lopsided one
  lopsided, balanced = f64([[10.0, -3.0]], [[1.0, 1.0]])
  zero = jnp.zeros((1, 2), jnp.float64)
  raw = lambda r: float(rewards.aggregate(r, method="raw_sum")[0])
  assert raw(lopsided) > raw(balanced)
  assert float(rewards.aggregate(lopsided, zero)[0]) < float(rewards.aggregate(balanced, zero)[0])
  with pytest.raises(ValueError, match="needs per-prompt reference"):
    rewards.aggregate(r, method="lsc")
  with pytest.raises(ValueError, match="needs weights"):
    rewards.aggregate(r, method="weighted_raw_sum")
  with pytest.raises(ValueError, match="3 weights for 2"):
    rewards.aggregate(r, ref, weights=[1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="unknown aggregation"):
    rewards.aggregate(r, ref, method="max")


def test_reference_statistics(x64):
  x = jnp.array([-1.0, 0.0, 0.5, 1.0, 2.0], jnp.float64)
  # the spec's NumPy "linear" convention: position (n − 1)·q, interpolated
  np.testing.assert_allclose(rewards.reference_statistic(x, q=0.5, axis=0), 0.5, rtol=1e-12)
  np.testing.assert_allclose(rewards.reference_statistic(x, q=0.85, axis=0), 1.4, rtol=1e-12)
  np.testing.assert_allclose(rewards.reference_statistic(x, statistic="mean", axis=0), 0.5, rtol=1e-12)
  np.testing.assert_allclose(rewards.reference_statistic(x, statistic="median", axis=0), 0.5, rtol=1e-12)
  # [N prompts, n samples, K reward models] -> [N, K], matching NumPy
  s = np.random.default_rng(0).normal(size=(3, 7, 2))
  for q in (0.0, 0.3, 0.85, 1.0):
    np.testing.assert_allclose(rewards.reference_statistic(jnp.asarray(s), q=q), np.quantile(s, q, axis=1),
                               rtol=1e-12)
  np.testing.assert_allclose(rewards.reference_statistic(jnp.asarray(s), statistic="median"),
                             np.median(s, axis=1), rtol=1e-12)
  with pytest.raises(ValueError):
    rewards.reference_statistic(x, q=1.5, axis=0)
  with pytest.raises(ValueError):
    rewards.reference_statistic(x, statistic="mode", axis=0)


def test_cached_sample_rewards_hits_the_cache(tmp_path):
  mesh = shd.make_mesh()
  calls = []

  def score_fn(rng, prompt, mask):  # deterministic in (rng, prompt): a fake "sample and score"
    calls.append(1)
    u = jax.random.uniform(rng, (prompt.shape[0], 2))
    return u + prompt.sum(-1, keepdims=True).astype(u.dtype)

  ids = np.arange(10 * 3, dtype=np.int32).reshape(10, 3)
  mask = np.ones_like(ids)
  kw = dict(n_samples=3, seed=0, mesh=mesh, cache_dir=str(tmp_path), batch_size=8)
  r1, k1 = rewards.cached_sample_rewards(score_fn, ids, mask, key_parts=["a"], **kw)
  assert r1.shape == (10, 3, 2)
  n_calls = len(calls)
  assert n_calls == 3 * 2  # 3 samples x 2 batches of 8 (the last wraps around)
  np.testing.assert_allclose(r1.min(axis=(1, 2)), ids.sum(1), atol=1.0)
  assert len({tuple(r1[0, s]) for s in range(3)}) == 3  # every sample draws fresh keys
  r2, k2 = rewards.cached_sample_rewards(score_fn, ids, mask, key_parts=["a"], **kw)
  assert k2 == k1 and len(calls) == n_calls  # read from disk, nothing recomputed
  np.testing.assert_array_equal(r2, r1)
  _, k3 = rewards.cached_sample_rewards(score_fn, ids, mask, key_parts=["b"], **kw)
  assert k3 != k1 and len(calls) == 2 * n_calls  # another model -> another key


def test_lsc_reference_samples_policy_and_scores_each_reward_model(tmp_path):
  cfg = model_config("nano", vocab_size=32, d_model=32, n_layers=1, d_ff=64)
  mesh = shd.make_mesh()
  pol = init_params(cfg, jax.random.key(0), mesh)
  rms = [(cfg, {"trunk": init_params(cfg, jax.random.key(i), mesh),
                "head": heads.init_head(cfg, jax.random.key(10 + i), mesh)}) for i in (1, 2)]
  ids = np.random.default_rng(0).integers(4, 32, (8, 4)).astype(np.int32)
  mask = np.ones_like(ids)
  kw = dict(mesh=mesh, cache_dir=str(tmp_path), eos_id=2, pad_id=0, max_new_tokens=3, n_samples=4, batch_size=8)
  ref, key = rewards.lsc_reference(cfg, pol, rms, ids, mask, **kw)
  assert ref.shape == (8, 2) and np.isfinite(ref).all()
  with np.load(tmp_path / f"ref_rewards-{key}.npz") as z:
    samples = z["rewards"]
  assert samples.shape == (8, 4, 2)
  np.testing.assert_allclose(ref, np.quantile(samples, 0.85, axis=1), rtol=1e-5)
  assert np.ptp(samples[:, :, 0], axis=1).max() > 0  # different samples, different rewards
  # another statistic reuses the cached samples
  mean, key2 = rewards.lsc_reference(cfg, pol, rms, ids, mask, statistic="mean", **kw)
  assert key2 == key
  np.testing.assert_allclose(mean, samples.mean(axis=1), rtol=1e-5)
