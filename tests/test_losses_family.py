"""cDPO, rDPO, hinge, IPO, SLiC-HF, ORPO, SimPO, BCO (paired/unpaired), KTO against algorithms.md §10 vectors."""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses
from conftest import f64  # noqa: F401  (x64 is a conftest fixture)
from jaxalign.errors import UserError


def close(actual, expected, rtol=1e-6, atol=0.0):
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol)


DPO1 = ([-10.0], [-12.0], [-11.0], [-11.5])
DPO2 = ([-10.0, -20.0], [-12.0, -18.0], [-11.0, -19.0], [-11.5, -19.0])


def test_dpo_1_cdpo_robust_hinge(x64):
  args = f64(*DPO1)
  close(losses.cdpo(*args, beta=0.1, epsilon=0.1), [0.6359570477895321])
  close(losses.robust(*args, beta=0.1, epsilon=0.1), [0.602207047789532])
  close(losses.hinge(*args, beta=0.1), [0.85])
  close(losses.LOSSES["hinge_norm"](*args, beta=0.1), [0.85])  # §8.1: hinge-norm β=0.1, h=1.5
  assert losses.cdpo(*args, beta=0.1, epsilon=0.1).dtype == jnp.float64
  # ε = 0 reduces both to DPO.
  close(losses.cdpo(*args, beta=0.1, epsilon=0.0), losses.dpo(*args, beta=0.1))
  close(losses.robust(*args, beta=0.1, epsilon=0.0), losses.dpo(*args, beta=0.1))


def test_dpo_2_cdpo_robust_means(x64):
  args = f64(*DPO2)
  close(losses.cdpo(*args, beta=0.1, epsilon=0.1).mean(), 0.707047958585562)
  close(losses.robust(*args, beta=0.1, epsilon=0.1).mean(), 0.712672958585562)


def test_rdpo_negative_and_unbounded(x64):
  h = lambda v: f64([v], [0.0], [0.0], [0.0])
  close(losses.robust(*h(100.0), beta=0.1, epsilon=0.1), [-1.2499546011007832])
  close(losses.robust(*h(21.97), beta=0.1, epsilon=0.1), [-0.169], rtol=0, atol=5e-4)
  assert float(losses.robust(*h(1e4), beta=0.1, epsilon=0.1)[0]) < -100  # keeps decreasing


def test_robust_gradient_limit(x64):
  beta, eps = 0.1, 0.1
  pr, rc, rr = f64([0.0], [0.0], [0.0])
  g = jax.grad(lambda c: losses.robust(c, pr, rc, rr, beta=beta, epsilon=eps).sum())
  close(g(jnp.array([1e4])), [-eps / (1 - 2 * eps) * beta])  # −0.0125: never vanishes
  close(g(jnp.array([-1e4])), [-(1 - eps) / (1 - 2 * eps) * beta])


def test_cdpo_finite_minimiser(x64):
  beta, eps = 0.1, 0.1
  h_star = math.log((1 - eps) / eps) / beta  # βh* = 2.1972
  pr, rc, rr = f64([0.0], [0.0], [0.0])
  loss = lambda c: losses.cdpo(c, pr, rc, rr, beta=beta, epsilon=eps).sum()
  close(jax.grad(loss)(jnp.array([h_star])), [0.0], atol=1e-12)
  assert loss(jnp.array([h_star])) < loss(jnp.array([h_star - 1.0]))
  assert loss(jnp.array([h_star])) < loss(jnp.array([h_star + 1.0]))


def ipo_1():
  w, wr = np.array([-1.0, -2.0, -0.5, -1.5]), np.array([-1.2, -2.1, -0.9, -1.8])
  l, lr_ = np.array([-2.0, -1.0, -3.0, -0.5, -1.0]), np.array([-1.5, -1.2, -2.5, -0.6, -0.9])
  args = f64([w.sum()], [l.sum()], [wr.sum()], [lr_.sum()])
  lengths = dict(chosen_lengths=jnp.array([4]), rejected_lengths=jnp.array([5]))
  return args, lengths


def test_ipo_1_all_four(x64):
  args, lengths = ipo_1()
  close(losses.ipo(*args, tau=0.1, length_normalize=False), [10.24])
  close(losses.ipo(*args, tau=1.0, length_normalize=False), [1.69])
  close(losses.ipo(*args, tau=0.1, length_normalize=True, **lengths), [21.0681])
  close(losses.ipo(*args, tau=1.0, length_normalize=True, **lengths), [0.0081])
  # summed mode ignores lengths
  close(losses.ipo(*args, tau=1.0, length_normalize=False, **lengths), [1.69])


def test_slic_1(x64):
  args = f64([-10.0], [-10.4], [0.0], [0.0])
  close(losses.slic_hf(*args, delta=1.0, lam=0.0), [0.6])
  close(losses.slic_hf(*args, delta=1.0, lam=0.5, chosen_nll=jnp.array([9.0])), [5.1])
  # the hinge ignores the reference model
  other_ref = f64([-10.0], [-10.4], [-3.0], [-50.0])
  close(losses.slic_hf(*other_ref, delta=1.0, lam=0.0), [0.6])


def test_orpo_1(x64):
  # A(y_w) = −2/4 = −0.5, A(y_l) = −4.5/3 = −1.5
  pc, pr, zero = f64([-2.0], [-4.5], [0.0])
  lengths = dict(chosen_lengths=jnp.array([4]), rejected_lengths=jnp.array([3]))
  l_or = losses.orpo(pc, pr, zero, zero, lam=1.0, chosen_nll=jnp.array([0.0]), **lengths)
  close(l_or, [0.1708592171464785])
  close(-jax.nn.log_sigmoid(1.6802696706417346), l_or)  # the log-odds ratio itself
  total = losses.orpo(pc, pr, zero, zero, lam=0.1, chosen_nll=jnp.array([0.5]), **lengths)
  close(total, [0.5170859217146478])
  # reference-free: the reference arguments do not matter
  close(losses.orpo(pc, pr, *f64([-7.0], [3.0]), lam=0.1, chosen_nll=jnp.array([0.5]), **lengths), total)


def test_simpo_1(x64):
  pc, pr = f64([-10.0], [-24.0])
  lengths = dict(chosen_lengths=jnp.array([10]), rejected_lengths=jnp.array([12]))
  loss = losses.simpo(pc, pr, *f64([0.0], [0.0]), beta=2.0, gamma=1.0, **lengths)
  close(loss, [0.31326168751822286])
  close(losses.simpo(pc, pr, *f64([5.0], [-9.0]), beta=2.0, gamma=1.0, **lengths), loss)


def test_log1mexp_branches(x64):
  a = jnp.array([-1e-10, -0.5, -0.6931471805599453, -1.5, -50.0])
  # atol: at a = −50 the log1p branch gives −e⁻⁵⁰ where the naive form rounds to 0
  close(losses.log1mexp(a), np.log(-np.expm1(np.asarray(a))), rtol=1e-12, atol=1e-20)
  assert np.isfinite(np.asarray(losses.log1mexp(jnp.array([0.0]))))  # guarded strictly below 0


def bco_step(state, desirable, undesirable, beta=0.1):
  """One BCOTrainer step: push all rewards of the batch, then use the new mean as δ."""
  (pd, rd), (pu, ru) = desirable, undesirable
  pol, ref = f64(pd + pu, rd + ru)
  is_d = jnp.array([True] * len(pd) + [False] * len(pu))
  state = losses.running_mean_update(state, beta * (pol - ref))
  return state, losses.bco_loss(pol, ref, is_d, beta=0.1, delta=state[0])


def test_bco_1_two_steps(x64):
  state = losses.running_mean_init(jnp.float64)
  state, l1 = bco_step(state, ([-10.0, -8.0], [-11.0, -8.5]), ([-12.0, -9.0], [-11.0, -9.4]))
  close(state[0], 0.0225)
  close(l1, [0.6551477739943172, 0.6794917088313764, 0.6337717901301851, 0.7019354613214706])
  close(l1.mean(), 0.6675866835693374)
  state, l2 = bco_step(state, ([-5.0], [-6.0]), ([-7.0, -4.0, -6.0], [-7.0, -3.0, -6.5]))
  close(state[0], 0.0175)
  close(state[1], 8.0)
  close(l2, [0.6527477206, 0.6844354613, 0.6361219699, 0.7095292060], rtol=1e-9)
  close(l2.mean(), 0.6707085894783277)


def test_running_mean_mask_and_scalar(x64):
  s = losses.running_mean_init(jnp.float64)
  s = losses.running_mean_update(s, jnp.array([1.0, 99.0, 3.0]), mask=jnp.array([True, False, True]))
  close(s[0], 2.0)
  s = losses.running_mean_update(s, jnp.array([5.0, 7.0]), mask=jnp.array([False, False]))
  close(s[0], 2.0)  # nothing seen: unchanged
  close(s[1], 2.0)
  s = losses.running_mean_update(s, jnp.float64(5.0))  # a scalar counts once (bco_pair)
  close(s[0], 3.0)


def test_bco_gap_and_bco_pair(x64):
  a, b = 0.7, -0.2  # chosen / rejected rewards with β = 1
  args = f64([a], [b], [0.0], [0.0])
  gap = lambda d: float(losses.bco_pair(*args, beta=1.0, delta=d)[0] - losses.dpo(*args, beta=1.0)[0])
  close(gap(0.25), 0.645344017262822)
  dd = a - b  # Δ
  close(gap(0.25), 2 * math.log1p(math.exp(-dd / 2)) - math.log1p(math.exp(-dd)))
  assert gap(0.25) < min(gap(0.24), gap(0.26))
  # the paired loss is the unpaired loss of (chosen, desirable) + (rejected, undesirable)
  un = losses.bco_loss(*f64([a, b], [0.0, 0.0]), jnp.array([True, False]), beta=1.0, delta=0.25)
  close(losses.bco_pair(*args, beta=1.0, delta=0.25), [un.sum()])
  # TRL ≤ v0.28: running mean of per-batch means, current batch included
  b1, b2 = f64([-10.0, -20.0], [-12.0, -18.0], [-11.0, -19.0], [-11.5, -19.0]), f64(*DPO1)
  s = losses.running_mean_init(jnp.float64)
  s = losses.running_mean_update(s, losses.bco_pair_reward_mean(*b1, beta=0.1))
  close(s[0], 0.0125)  # mean(0.1, −0.1, −0.05, 0.1)
  s = losses.running_mean_update(s, losses.bco_pair_reward_mean(*b2, beta=0.1))
  close(s[0], 0.5 * (0.0125 + 0.025))  # each batch has weight 1
  r_w, r_l = 0.1, -0.05
  close(losses.bco_pair(*b2, beta=0.1, delta=s[0]),
        [-math.log(1 / (1 + math.exp(-(r_w - s[0])))) - math.log(1 / (1 + math.exp(r_l - s[0])))])


def test_class_balanced_delta(x64):
  s = losses.class_balanced_init(jnp.float64)
  close(losses.class_balanced_delta(s), 0.0)
  r = jnp.array([1.0, 1.0, 1.0, -1.0])
  s = losses.class_balanced_update(s, r[:3], jnp.array([True, True, True]))
  close(losses.class_balanced_delta(s), 1.0)  # only desirable seen so far
  s = losses.class_balanced_update(s, r, jnp.array([True, True, True, False]))
  close(losses.class_balanced_delta(s), 0.0)  # ½(1 + (−1)); the pooled mean would be 5/7
  s = losses.class_balanced_update(s, jnp.array([3.0, 9.0]), jnp.array([False, True]),
                                   mask=jnp.array([True, False]))
  close(losses.class_balanced_delta(s), 0.5 * (1.0 + 1.0))


def test_udm_weights_and_bco(x64):
  w = losses.udm_weights(jnp.array([0.8, 0.2, 0.95, 0.3]), jnp.array([False, False, False, True]))
  close(w, [3.9999998, 0.5, 10.0, 1.0])
  pol, ref = f64([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
  is_d = jnp.array([False, False, False, True])
  base = losses.bco_loss(pol, ref, is_d, beta=0.1, delta=0.0)
  close(losses.bco_loss(pol, ref, is_d, beta=0.1, delta=0.0, udm_weight=w), base * w)


def test_kto_1(x64):
  pol, ref = f64([1.0, -0.5], [0.0, 0.0])
  loss = losses.kto_loss(pol, ref, jnp.array([True, False]), *f64([0.3], [0.0]), beta=0.1, lambda_d=1.0,
                         lambda_u=1.0)
  close(loss, [0.48250714233361025, 0.48001065984441815])
  close(loss.mean(), 0.4812589010890142)
  close(losses.kto_kl_baseline(*f64([0.5, -0.2, 0.4], [0.0, 0.0, 0.0])), 0.7 / 3)
  close(losses.kto_kl_baseline(*f64([-1.0], [0.0])), 0.0)  # clamped at 0
  w = losses.kto_loss(pol, ref, jnp.array([True, False]), *f64([0.3], [0.0]), beta=0.1, lambda_d=2.0,
                      lambda_u=0.5)
  close(w, [2 * 0.48250714233361025, 0.5 * 0.48001065984441815])


def extras(name, b, dtype=jnp.float32):
  """Plausible extra inputs for a pairwise loss with batch size b."""
  ones = jnp.ones((b,), dtype)
  pool = {"chosen_lengths": jnp.full((b,), 3), "rejected_lengths": jnp.full((b,), 5), "chosen_nll": ones,
          "delta": dtype(0.01), "policy_chosen_tail": -ones, "policy_rejected_tail": -2 * ones,
          "reference_chosen_tail": -ones, "reference_rejected_tail": -ones}
  return {k: pool[k] for k in losses.EXTRA_INPUTS.get(name, ())}


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_gradients_finite_at_extremes(name):
  fn = losses.LOSSES[name]
  zero = jnp.zeros((2,), jnp.float32)
  for pc, pr in [(zero, jnp.full((2,), -1e4)), (jnp.full((2,), -1e4), zero)]:  # h = ±1e4, log-probs ≤ 0
    loss = lambda c, r: fn(c, r, zero, zero, **extras(name, 2)).sum()
    val = loss(pc, pr)
    gc, gr = jax.grad(loss, argnums=(0, 1))(pc, pr)
    assert np.isfinite(float(val)), (name, pc, pr)
    assert np.isfinite(np.asarray(gc)).all() and np.isfinite(np.asarray(gr)).all(), (name, pc, pr)
    assert val.dtype == jnp.float32


def test_unpaired_gradients_finite_at_extremes():
  pol = jnp.array([1e4, -1e4, 1e4, -1e4])
  ref = jnp.zeros(4)
  is_d = jnp.array([True, True, False, False])
  for f in (lambda p: losses.bco_loss(p, ref, is_d, beta=1.0, delta=0.0).sum(),
            lambda p: losses.kto_loss(p, ref, is_d, p, ref, beta=1.0, lambda_d=1.0, lambda_u=1.0).sum()):
    assert np.isfinite(np.asarray(jax.grad(f)(pol))).all()


HPARAMS = {
    "dpo": {"beta": 0.1}, "cdpo": {"beta": 0.1, "epsilon": 0.1}, "robust": {"beta": 0.1, "epsilon": 0.1},
    "hinge": {"beta": 0.1}, "hinge_norm": {"beta": 0.1}, "ipo": {"tau": 0.1, "length_normalize": True},
    "slic_hf": {"delta": 1.0, "lam": 0.5}, "orpo": {"lam": 0.1}, "simpo": {"beta": 2.5, "gamma": 1.375},
    "bco_pair": {"beta": 0.1}, "rpo": {"beta": 0.1, "eta": 0.1, "sft_reduction": "seq_mean"},
    "ld_dpo": {"beta": 0.1, "alpha": 0.5}, "jpo": {"beta": 0.1},
}


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_get_loss_each_name(name):
  fn, kw = losses.get_loss(name, HPARAMS[name])
  assert fn is losses.LOSSES[name] and kw == HPARAMS[name]
  with pytest.raises(UserError, match=rf"loss.bogus: not a hyper-parameter of loss '{name}'"):
    losses.get_loss(name, {**HPARAMS[name], "bogus": 1.0})
  for arr in losses.EXTRA_INPUTS.get(name, ()):  # arrays come from the trainer, never the config
    with pytest.raises(UserError, match=rf"loss.{arr}: not a hyper-parameter"):
      losses.get_loss(name, {arr: 1.0})
  # the configured function runs under jit with its extras
  b = 3
  args = [jnp.full((b,), v, jnp.float32) for v in (-10.0, -12.0, -11.0, -11.5)]
  out = jax.jit(functools.partial(fn, **kw))(*args, **extras(name, b))
  assert out.shape == (b,) and np.isfinite(np.asarray(out)).all()


def test_extra_inputs_contract():
  assert losses.REFERENCE_FREE == {"simpo", "orpo"}
  assert set(losses.EXTRA_INPUTS) <= set(losses.LOSSES)
  for name, arrays in losses.EXTRA_INPUTS.items():
    params = inspect.signature(losses.LOSSES[name]).parameters
    for arr in arrays:
      assert params[arr].kind == params[arr].KEYWORD_ONLY and params[arr].default is None, (name, arr)


@pytest.mark.parametrize("name", sorted(losses.EXTRA_INPUTS))
def test_missing_extra_inputs_raise(name):
  fn, kw = losses.get_loss(name, HPARAMS[name])
  args = [jnp.full((2,), v, jnp.float32) for v in (-10.0, -12.0, -11.0, -11.5)]
  full = extras(name, 2)
  optional = {"chosen_nll"}  # derived from the chosen log-probs when absent
  optional |= {"rejected_lengths"} if name == "rpo" else set()  # RPO's SFT term is on the chosen side only
  for missing in set(full) - optional:
    partial = {k: v for k, v in full.items() if k != missing}
    with pytest.raises(ValueError, match=rf"loss '{name}' needs the keyword array `{missing}`"):
      fn(*args, **kw, **partial)


def test_optional_extras_and_epsilon_checks():
  args = [jnp.full((2,), v, jnp.float32) for v in (-10.0, -12.0, -11.0, -11.5)]
  assert losses.ipo(*args, tau=0.1, length_normalize=False).shape == (2,)  # summed IPO needs no lengths
  assert losses.slic_hf(*args, delta=1.0, lam=0.0).shape == (2,)  # no SFT term, no NLL needed
  # the default SFT target is the chosen completion: NLL = −S_θ(y_w) summed, −S_θ(y_w)/n for ORPO
  np.testing.assert_allclose(losses.slic_hf(*args, delta=1.0, lam=0.5),
                             losses.slic_hf(*args, delta=1.0, lam=0.5, chosen_nll=-args[0]))
  n = jnp.array([4.0, 5.0])
  np.testing.assert_allclose(
      losses.orpo(*args, lam=0.1, chosen_lengths=n, rejected_lengths=n),
      losses.orpo(*args, lam=0.1, chosen_lengths=n, rejected_lengths=n, chosen_nll=-args[0] / n))
  with pytest.raises(ValueError, match="epsilon"):
    losses.robust(*args, beta=0.1, epsilon=0.5)
  with pytest.raises(ValueError, match="epsilon"):
    losses.cdpo(*args, beta=0.1, epsilon=-0.1)
