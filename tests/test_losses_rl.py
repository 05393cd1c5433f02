"""The seeds' RL methods (algorithms.md §8.5 f-DPG, §8.6 DisCO, §8.11 DR-PO, §8.12 BPO): the spec's float64
vectors DISCO-1 and DRPO-1 at rtol 1e-6 under x64, new float64 vectors computed here with NumPy from the
formulas, and the invariants (gradients, unbiasedness of the normaliser, the reset distribution, the sampler's
teacher-forced prefix)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses
from jaxalign.trainers import ppo
from conftest import f64  # noqa: F401  (x64 is a conftest fixture)

RTOL = 1e-6


# ---- DisCO (DISCO-1) ----

def test_disco_1_objective_weights_and_penalty(x64):
  s = jnp.asarray([[-0.30, -0.50, -0.40, -0.90]], jnp.float64)
  pos = jnp.asarray([[1, 1, 0, 0]])
  j, valid = losses.disco_objective(s, pos, tau=10.0, variant="disco")
  assert bool(valid[0]) and float(j[0]) == pytest.approx(-6.684596480132864, rel=RTOL)
  # −∂J/∂s⁻ = the softmax weights of the negatives; ∂J/∂s⁺ = 1/|O⁺|
  g = jax.grad(lambda x: losses.disco_objective(x, pos, tau=10.0)[0][0])(s)
  np.testing.assert_allclose(np.asarray(-g[0, 2:]), [0.5124974, 0.4875026], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g[0, :2]), [0.5, 0.5], rtol=1e-12)
  jb, _ = losses.disco_objective(s, pos, variant="disco_b")
  assert float(jb[0]) == pytest.approx(0.25, rel=RTOL)
  kl = jnp.float64(3e-4)
  assert float(losses.disco_penalty(kl, delta=1e-4, beta_c=1e3)) == pytest.approx(2e-5, rel=RTOL)
  assert float(jax.grad(lambda k: losses.disco_penalty(k, delta=1e-4, beta_c=1e3))(kl)) == pytest.approx(0.2, rel=RTOL)
  assert float(jax.grad(lambda k: losses.disco_penalty(k, delta=1e-4, beta_c=1e3))(jnp.float64(5e-5))) == 0.0


def test_disco_groups_without_both_outcomes_contribute_nothing(x64):
  s = jnp.asarray([[-0.3, -0.5, -0.4], [-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]], jnp.float64)
  pos = jnp.asarray([[1, 0, 0], [1, 1, 1], [0, 0, 0]])
  for variant in ("disco", "disco_b"):
    j, valid = losses.disco_objective(s, pos, tau=1.0, variant=variant)
    assert valid.tolist() == [True, False, False] and j[1] == 0 and j[2] == 0
    g = jax.grad(lambda x: jnp.sum(losses.disco_objective(x, pos, tau=1.0, variant=variant)[0]))(s)
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g[1:]) == 0)
  # a new float64 vector: τ = 1, one positive, two negatives
  expect = -0.3 - np.log(np.exp(-0.5) + np.exp(-0.4))
  assert float(losses.disco_objective(s, pos, tau=1.0)[0][0]) == pytest.approx(expect, rel=RTOL)


def test_disco_scores_and_token_kl(x64):
  lp = jnp.asarray([[-1.0, -2.0, -3.0], [-0.5, -0.25, 9.0]], jnp.float64)
  old = jnp.asarray([[-1.5, -2.0, -2.0], [-0.5, -0.5, 0.0]], jnp.float64)
  m = jnp.asarray([[1, 1, 1], [1, 1, 0]])
  np.testing.assert_allclose(np.asarray(losses.disco_scores(lp, old, m, score="logL")), [-2.0, -0.375], rtol=1e-12)
  expect = [np.mean(np.exp([0.5, 0.0, -1.0])), np.mean(np.exp([0.0, 0.25]))]
  np.testing.assert_allclose(np.asarray(losses.disco_scores(lp, old, m, score="Lratio")), expect, rtol=1e-12)
  assert float(losses.token_kl(old, lp, m)) == pytest.approx((-0.5 + 0 + 1 + 0 - 0.25) / 5, rel=1e-12)
  # Lratio at π_θ = π_old is exactly 1 and its gradient is the logL gradient
  g1 = jax.grad(lambda x: jnp.sum(losses.disco_scores(x, old, m, score="Lratio")))(old)
  g2 = jax.grad(lambda x: jnp.sum(losses.disco_scores(x, old, m, score="logL")))(old)
  np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-12)


# ---- f-DPG ----

def _f(t, d):  # the generators, NumPy float64
  return {"rkl": t * np.log(t), "fkl": -np.log(t),
          "js": 0.5 * (t * np.log(t) - (t + 1) * np.log((t + 1) / 2)), "tv": 0.5 * np.abs(t - 1)}[d]


@pytest.mark.parametrize("d", ["rkl", "fkl", "js", "tv"])
def test_f_prime_is_the_derivative_of_the_generator(x64, d):
  t = np.array([0.05, 0.3, 0.9, 1.7, 6.0, 40.0])
  h = 1e-6 * t
  numeric = (_f(t + h, d) - _f(t - h, d)) / (2 * h)
  np.testing.assert_allclose(np.asarray(losses.f_prime(jnp.log(t), d)), numeric, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(losses.f_divergence_value(jnp.log(t), d)), _f(t, d), rtol=1e-9, atol=1e-15)
  assert abs(float(losses.f_divergence_value(jnp.float64(0.0), d))) < 1e-15  # f(1) = 0


def test_f_dpg_1_weights(x64):
  """F-DPG-1 (new, NumPy float64): S_θ = [−3, −5, −4], S_0 = [−3.5, −4, −6], r = [1, −1, 0.5], β = 0.5,
  log Z = 0.7: log t = S_θ − S_0 − r/β + log Z; JS weights f'(t) − mean f'(t)."""
  s, s0, r = np.array([-3.0, -5.0, -4.0]), np.array([-3.5, -4.0, -6.0]), np.array([1.0, -1.0, 0.5])
  log_t = s - s0 - r / 0.5 + 0.7
  fp = 0.5 * np.log(2 * np.exp(log_t) / (1 + np.exp(log_t)))
  w, lt = losses.f_dpg_weights(*f64(s, s0, r), jnp.float64(0.7), beta=0.5, divergence="js")
  np.testing.assert_allclose(np.asarray(lt), log_t, rtol=RTOL)
  np.testing.assert_allclose(np.asarray(w), fp - fp.mean(), rtol=RTOL)
  # reverse KL is REINFORCE with reward r/β − (log π_θ − log π₀), sign flipped: weights = log t − mean(log t)
  w_rkl, _ = losses.f_dpg_weights(*f64(s, s0, r), jnp.float64(0.7), beta=0.5, divergence="rkl")
  np.testing.assert_allclose(np.asarray(w_rkl), log_t - log_t.mean(), rtol=RTOL)
  # the surrogate's gradient flows through S_θ only, weighted by w
  g = jax.grad(lambda x: jnp.mean(losses.f_dpg_weights(x, *f64(s0, r), jnp.float64(0.7), beta=0.5)[0] * x))(
      jnp.asarray(s))
  np.testing.assert_allclose(np.asarray(g), (fp - fp.mean()) / 3, rtol=RTOL)


def test_importance_sampled_normaliser_is_exact_in_expectation_and_running_mean_is_pooled(x64):
  """On a 5-outcome toy: E_{y~π}[P(y)/π(y)] = Z exactly (enumerated), and the running estimate over batches
  equals the one-batch estimate over all their samples."""
  pi = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
  log_p = np.log(np.array([0.3, 0.1, 0.2, 0.2, 0.2])) + np.array([2.0, -1.0, 0.5, 0.0, 1.0])  # π₀·exp(r/β)
  assert float(jnp.sum(jnp.asarray(pi) * jnp.exp(jnp.asarray(log_p) - jnp.log(jnp.asarray(pi))))) == \
      pytest.approx(np.exp(log_p).sum(), rel=1e-12)
  rng = np.random.default_rng(0)
  ys = [rng.choice(5, size=n, p=pi) for n in (7, 3, 12)]
  lz, count = jnp.float64(0.0), jnp.float64(0.0)
  for y in ys:
    lz, count = losses.running_log_z(lz, count, losses.batch_log_z(*f64(log_p[y], np.log(pi[y]))), len(y))
  y = np.concatenate(ys)
  assert float(count) == len(y)
  assert float(lz) == pytest.approx(float(losses.batch_log_z(*f64(log_p[y], np.log(pi[y])))), rel=1e-12)
  # many batches: the running estimate converges to log Z
  for k in range(200):
    y = rng.choice(5, size=64, p=pi)
    lz, count = losses.running_log_z(lz, count, losses.batch_log_z(*f64(log_p[y], np.log(pi[y]))), 64)
  assert float(lz) == pytest.approx(np.log(np.exp(log_p).sum()), abs=0.02)


# ---- BPO: online DPO against the behaviour model ----

def test_bpo_online_dpo_vector_and_hard_label_equals_dpo(x64):
  """BPO-1 (new, NumPy float64): π_θ = [−10, −12], π_β = [−11, −11.5], β = 0.1, P = 0.8:
  h = 0.1·((−10 + 11) − (−12 + 11.5)) = 0.15; loss = −0.8·log σ(0.15) − 0.2·log σ(−0.15)."""
  pa, pb, ra, rb = f64([-10.0], [-12.0], [-11.0], [-11.5])
  expect = -(0.8 * np.log(1 / (1 + np.exp(-0.15))) + 0.2 * np.log(1 / (1 + np.exp(0.15))))
  assert float(losses.online_dpo(pa, pb, ra, rb, jnp.asarray([0.8]), beta=0.1)[0]) == pytest.approx(expect, rel=RTOL)
  for label, (w, l) in ((1, (pa, pb)), (0, (pb, pa))):  # the winner is a when I = 1
    got = losses.online_dpo(pa, pb, ra, rb, jnp.asarray([0.8]), beta=0.1, label=jnp.asarray([label]))
    ref = losses.dpo(w, l, ra if label else rb, rb if label else ra, beta=0.1)
    assert float(got[0]) == pytest.approx(float(ref[0]), rel=1e-12)


# ---- DR-PO ----

def test_drpo_1_reset_distribution_and_draws():
  np.testing.assert_allclose(losses.reset_probs(5, 0.5), [0.5, 0.125, 0.125, 0.125, 0.125], rtol=1e-15)
  assert losses.reset_probs(1, 0.9).tolist() == [1.0] and losses.reset_probs(5, 0.0).tolist() == [1, 0, 0, 0, 0]
  n = 200_000
  h = losses.draw_resets(np.random.default_rng(0), np.full(n, 5), 0.5)
  freq = np.bincount(h, minlength=5) / n
  sd = np.sqrt(0.125 * 0.875 / n)
  np.testing.assert_allclose(freq, losses.reset_probs(5, 0.5), atol=5 * sd)
  assert losses.draw_resets(np.random.default_rng(1), np.array([0, 1, 1]), 1.0).tolist() == [0, 0, 0]
  h = losses.draw_resets(np.random.default_rng(2), np.array([2] * 50 + [9] * 50), 1.0)
  assert set(h[:50]) == {1} and 1 <= h[50:].min() and h[50:].max() <= 8
  # the policy-gradient mask drops the first h tokens (the KL and the value keep them)
  mask = jnp.asarray([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
  got = ppo.reset_pg_mask(mask, jnp.asarray([2, 0, 1]))
  assert got.tolist() == [[0, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]]


def test_sampler_teacher_forces_the_reset_prefix():
  from jaxalign import sampling
  from jaxalign.models.loading import init_params
  from jaxalign.models.transformer import model_config
  cfg = model_config("nano", vocab_size=64)
  from jaxalign import sharding as shd
  params = init_params(cfg, jax.random.key(0), shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  prompt = jnp.asarray(np.random.default_rng(0).integers(4, 64, (4, 6)), jnp.int32)
  pmask = jnp.ones((4, 6), jnp.int32)
  forced = jnp.asarray(np.random.default_rng(1).integers(4, 64, (4, 12)), jnp.int32)
  n = jnp.asarray([0, 3, 5, 11], jnp.int32)
  kw = dict(cfg=cfg, max_new_tokens=12, eos_id=2, pad_id=0)
  t, m, _ = sampling.sample(params, prompt, pmask, jax.random.key(3), **kw, forced_BxT=forced, forced_len_B=n)
  t0, m0, _ = sampling.sample(params, prompt, pmask, jax.random.key(3), **kw)
  for b, k in enumerate(n.tolist()):
    assert t[b, :k].tolist() == forced[b, :k].tolist() and m[b, :k].tolist() == [1] * k
  assert t[0].tolist() == t0[0].tolist() and m[0].tolist() == m0[0].tolist()  # no prefix: the plain sampler
  # after its prefix a row continues from the policy: greedy decoding continues exactly as greedy decoding of the
  # prompt with the prefix appended
  g, _, _ = sampling.sample(params, prompt, pmask, jax.random.key(3), **kw, temperature=0.0, forced_BxT=forced,
                            forced_len_B=n)
  for b, k in enumerate(n.tolist()):
    ext = jnp.concatenate([prompt[b:b + 1], forced[b:b + 1, :k]], axis=1)
    e, _, _ = sampling.sample(params, ext, jnp.ones_like(ext), jax.random.key(3), **{**kw, "max_new_tokens": 12 - k},
                              temperature=0.0)
    assert g[b, k:].tolist() == e[0].tolist(), b
