"""PPO math against algorithms.md §7.5 (PPO-1) and float64 NumPy references: KL, rewards, GAE, whitening, losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import f64  # noqa: F401  (x64 is a conftest fixture)
from jaxalign import advantages as adv
from jaxalign.losses import ppo

LOGP = [-1.0, -0.5, -2.0]
REF = [-1.2, -0.4, -2.5]
V = [0.5, 0.6, 0.8]
A_PPO1 = [0.4426875, 0.37125, 0.175]


def _gae_np(r, v, gamma, lam):
  """The spec's loop (Appendix A) on one unpadded sequence."""
  a, last = np.zeros(len(r)), 0.0
  for t in reversed(range(len(r))):
    nv = v[t + 1] if t + 1 < len(r) else 0.0
    last = r[t] + gamma * nv - v[t] + gamma * lam * last
    a[t] = last
  return a, a + np.asarray(v)


def test_ppo_1_kl_rewards_gae(x64):
  logp, ref, v = f64([LOGP], [REF], [V])
  mask = jnp.ones((1, 3), jnp.int32)
  np.testing.assert_allclose(adv.kl_per_token(logp, ref, mask, estimator="k1")[0], [0.2, -0.1, 0.5], rtol=1e-6)
  np.testing.assert_allclose(adv.kl_per_token(logp, ref, mask, estimator="k3")[0],
                             [0.01873075, 0.00517092, 0.10653066], rtol=1e-6)
  rewards, kl = adv.ppo_rewards(jnp.array([1.0]), logp, ref, mask, kl_coef=0.05)
  np.testing.assert_allclose(rewards[0], [-0.01, 0.005, 0.975], rtol=1e-6)
  np.testing.assert_allclose(kl[0], [0.2, -0.1, 0.5], rtol=1e-6)
  a, g = adv.gae(rewards, v, mask, gamma=1.0, lam=0.95)
  assert a.dtype == jnp.float64
  np.testing.assert_allclose(a[0], A_PPO1, rtol=1e-6)
  np.testing.assert_allclose(g[0], [0.9426875, 0.97125, 0.975], rtol=1e-6)


def test_ppo_1_whitening(x64):
  a = jnp.asarray([A_PPO1], jnp.float64)
  mask = jnp.ones((1, 3))
  np.testing.assert_allclose(adv.masked_whiten(a, mask)[0], [0.81554593, 0.30015577, -1.11570171], rtol=1e-6)
  np.testing.assert_allclose(adv.masked_whiten(a, mask, unbiased=False)[0],
                             [0.99883557, 0.3676142, -1.36644977], rtol=1e-6)
  # shift_mean=False (reward whitening) keeps the mean, rescales the spread
  kept = adv.masked_whiten(a, mask, shift_mean=False)
  np.testing.assert_allclose(kept.mean(), np.mean(A_PPO1), rtol=1e-9)
  np.testing.assert_allclose(kept[0] - kept[0].mean(), [0.81554593, 0.30015577, -1.11570171], rtol=1e-6)


def test_ppo_1_clipped_losses(x64):
  one = lambda x: jnp.asarray([[x]], jnp.float64)
  m = jnp.ones((1, 1))
  pg, clipped = ppo.policy_loss_tokens(one(-0.8), one(-1.0), one(0.5), m, clip_eps=0.2)
  np.testing.assert_allclose(pg, [[-0.6]], rtol=1e-6)
  assert bool(clipped[0, 0])
  pg, clipped = ppo.policy_loss_tokens(one(-0.8), one(-1.0), one(-0.5), m, clip_eps=0.2)
  np.testing.assert_allclose(pg, [[0.6107013790800849]], rtol=1e-6)
  assert not bool(clipped[0, 0])
  vf, vclipped = ppo.value_loss_tokens(one(0.9), one(0.5), one(1.2), m, clip_eps_v=0.2)
  np.testing.assert_allclose(vf, [[0.125]], rtol=1e-6)
  assert bool(vclipped[0, 0])
  # combined: L_pg + c_v·L_v, with its diagnostics
  loss, met = ppo.ppo_loss(one(-0.8), one(-1.0), one(0.5), one(0.9), one(0.5), one(1.2), m, vf_coef=0.1,
                           entropy_BxT=one(2.0))
  np.testing.assert_allclose(loss, -0.6 + 0.1 * 0.125, rtol=1e-6)
  np.testing.assert_allclose(met["approxkl"], 0.5 * 0.2 ** 2, rtol=1e-6)
  np.testing.assert_allclose([met["policy_clipfrac"], met["value_clipfrac"], met["entropy"]], [1.0, 1.0, 2.0])
  np.testing.assert_allclose(met["ratio"], np.exp(0.2), rtol=1e-6)


def test_ppo_1_adaptive_kl(x64):
  np.testing.assert_allclose(adv.adaptive_kl_coef(0.15, 8.0, 512, target=6.0, horizon=10000.0), 0.151536, rtol=1e-6)
  # the proportional error is clipped to ±0.2
  np.testing.assert_allclose(adv.adaptive_kl_coef(0.15, 600.0, 512, target=6.0, horizon=10000.0), 0.151536, rtol=1e-6)
  np.testing.assert_allclose(adv.adaptive_kl_coef(0.15, 0.0, 512, target=6.0, horizon=10000.0),
                             0.15 * (1 - 0.2 * 512 / 10000), rtol=1e-6)
  np.testing.assert_allclose(adv.adaptive_kl_coef(0.15, 6.0, 512, target=6.0, horizon=10000.0), 0.15, rtol=1e-9)
  assert float(adv.update_kl_coef(0.05, 100.0, 512, adaptive=False)) == 0.05


def test_gae_padded_batch_matches_loop(x64):
  rng = np.random.default_rng(0)
  lengths = [5, 2, 7, 1]
  r, v = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
  mask = (np.arange(7)[None] < np.array(lengths)[:, None]).astype(np.int32)
  a, g = adv.gae(*f64(r, v), jnp.asarray(mask), gamma=0.9, lam=0.8)
  for i, n in enumerate(lengths):
    ea, eg = _gae_np(r[i, :n], v[i, :n], 0.9, 0.8)
    np.testing.assert_allclose(a[i, :n], ea, rtol=1e-10)
    np.testing.assert_allclose(g[i, :n], eg, rtol=1e-10)
    assert np.all(np.asarray(a[i, n:]) == 0) and np.all(np.asarray(g[i, n:]) == 0)
  # padding values (even inf/nan) never leak into real positions
  r2, v2 = r.copy(), v.copy()
  r2[mask == 0], v2[mask == 0] = np.nan, np.inf
  a2, g2 = adv.gae(*f64(r2, v2), jnp.asarray(mask), gamma=0.9, lam=0.8)
  np.testing.assert_array_equal(a2, a)
  np.testing.assert_array_equal(g2, g)


def test_gae_skips_masked_holes(x64):
  """A masked position inside a row is skipped: same as the row with it removed."""
  r, v = np.array([[0.3, 9.0, -0.2, 0.5]]), np.array([[0.1, 9.0, 0.4, -0.3]])
  mask = jnp.array([[1, 0, 1, 1]])
  a, _ = adv.gae(*f64(r, v), mask, gamma=1.0, lam=0.95)
  ea, _ = _gae_np(np.array([0.3, -0.2, 0.5]), np.array([0.1, 0.4, -0.3]), 1.0, 0.95)
  np.testing.assert_allclose(np.asarray(a)[0, [0, 2, 3]], ea, rtol=1e-10)
  assert float(a[0, 1]) == 0.0


def test_score_on_last_real_token_and_missing_eos(x64):
  logp = jnp.zeros((3, 5), jnp.float64)
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
  score = jnp.array([2.0, 3.0, 4.0], jnp.float64)
  rewards, _ = adv.ppo_rewards(score, logp, logp, mask, kl_coef=0.1)
  np.testing.assert_array_equal(rewards, [[0, 0, 2, 0, 0], [0, 0, 0, 0, 3], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(adv.last_token_index(mask), [2, 4, 0])
  finished = jnp.array([True, False, False])
  np.testing.assert_allclose(adv.penalize_missing_eos(score, finished, mode="subtract", penalty=1.5), [2, 1.5, 2.5])
  np.testing.assert_allclose(adv.penalize_missing_eos(score, finished, mode="replace", value=-1.0), [2, -1, -1])
  np.testing.assert_allclose(adv.penalize_missing_eos(score, finished, mode="none"), [2, 3, 4])
  with pytest.raises(ValueError):
    adv.penalize_missing_eos(score, finished, mode="bogus")


def test_padding_invalid_logprob_gives_zero_kl_and_ratio_one():
  logp = jnp.array([[-1.0, adv.INVALID_LOGPROB]])
  ref = jnp.array([[-1.5, adv.INVALID_LOGPROB]])
  mask = jnp.array([[1, 0]])
  for est in ("k1", "k3"):
    assert float(adv.kl_per_token(logp, ref, mask, estimator=est)[0, 1]) == 0.0
  huge = jnp.array([[-1.0, 500.0]])  # a garbage log-prob on padding must not overflow the ratio
  pg, _ = ppo.policy_loss_tokens(huge, logp, jnp.ones((1, 2)), mask)
  assert np.isfinite(np.asarray(pg)).all() and float(pg[0, 1]) == 0.0


def test_masked_statistics_ignore_padding(x64):
  x = jnp.array([[1.0, 2.0, 3.0, 1e6], [4.0, -1e6, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]])
  real = np.array([1.0, 2.0, 3.0, 4.0])
  np.testing.assert_allclose(adv.masked_mean(x, mask), real.mean(), rtol=1e-12)
  np.testing.assert_allclose(adv.masked_var(x, mask), real.var(ddof=1), rtol=1e-12)
  np.testing.assert_allclose(adv.masked_var(x, mask, unbiased=False), real.var(), rtol=1e-12)
  w = adv.masked_whiten(x, mask)
  assert float(w[0, 3]) == 0.0 and float(w[1, 1]) == 0.0
  np.testing.assert_allclose(adv.masked_mean(w, mask), 0.0, atol=1e-12)


def test_ppo_loss_masked_mean_gradient_and_jit():
  rng = np.random.default_rng(1)
  b, t = 3, 6
  mask = jnp.asarray((np.arange(t)[None] < np.array([[6], [3], [1]])).astype(np.int32))
  old, a, vo, ret = (jnp.asarray(rng.normal(size=(b, t)), jnp.float32) for _ in range(4))
  new = old + 0.3 * jnp.asarray(rng.normal(size=(b, t)), jnp.float32)
  vn = vo + 0.3 * jnp.asarray(rng.normal(size=(b, t)), jnp.float32)
  f = lambda n, v: ppo.ppo_loss(n, old, a, v, vo, ret, mask, clip_eps=0.2, clip_eps_v=0.2, vf_coef=0.1)[0]
  # == masked means of the per-token losses
  pg, _ = ppo.policy_loss_tokens(new, old, a, mask)
  vf, _ = ppo.value_loss_tokens(vn, vo, ret, mask)
  n = float(mask.sum())
  np.testing.assert_allclose(f(new, vn), float(pg.sum()) / n + 0.1 * float(vf.sum()) / n, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(f)(new, vn), f(new, vn), rtol=1e-6)
  gn, gv = jax.grad(f, argnums=(0, 1))(new, vn)
  assert np.all(np.asarray(gn)[np.asarray(mask) == 0] == 0) and np.all(np.asarray(gv)[np.asarray(mask) == 0] == 0)
  assert np.abs(np.asarray(gn)).sum() > 0
