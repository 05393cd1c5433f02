"""The rest of the seeds' offline family (algorithms.md §8.7–8.10, §8.14): LiPO-λ and the listwise losses it compares
with, RPO, LD-DPO, D²O and JPO against their float64 vectors (rtol 1e-6 under x64), plus their invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses
from conftest import f64  # noqa: F401  (x64 is a conftest fixture)

RTOL = 1e-6
# LIPO-1: K = 4, β = 0.05, ρ = [4, 10, −2, 0] (reference 0), ψ = [0.9, 0.6, 0.6, 0.1]
RHO = np.array([[4.0, 10.0, -2.0, 0.0]])
PSI = np.array([[0.9, 0.6, 0.6, 0.1]])


def _mean(out):
  values, weights = out
  return float(jnp.sum(values) / jnp.sum(weights))


def test_lipo_1_eq8_rax_and_the_losses_it_compares_with(x64):
  z = np.zeros_like(RHO)
  assert losses.listwise.score_ranks(0.05 * jnp.asarray(RHO)).tolist() == [[2, 1, 4, 3]]
  assert int(losses.listwise.valid_pairs(jnp.asarray(PSI)).sum()) == 5
  assert _mean(losses.lipo(RHO, z, PSI, beta=0.05)) == pytest.approx(0.49009679744922174, rel=RTOL)
  assert _mean(losses.lipo(RHO, z, PSI, beta=0.05, discount_base="2", scale_by_list_size=True,
                           reduction="pair_mean")) == pytest.approx(0.2717673706827094, rel=RTOL)
  assert _mean(losses.pair_logistic(RHO, z, PSI, beta=0.05)) == pytest.approx(0.6450646005144648, rel=RTOL)
  assert _mean(losses.list_mle(RHO, z, PSI, beta=0.05)) == pytest.approx(2.8757321089288674, rel=RTOL)
  assert _mean(losses.softmax_listnet(RHO, z, PSI, beta=0.05)) == pytest.approx(1.3724768090425805, rel=RTOL)
  assert _mean(losses.softmax_listnet(RHO, z, PSI, beta=0.05, normalize_labels=False)) == pytest.approx(
      3.0194489798936774, rel=RTOL)


def test_lipo_1_gradient_holds_the_lambda_weights_fixed(x64):
  """∂l/∂s of Eq. 8 with Δ fixed (τ is piecewise constant): the vector of §8.7; through ρ it is β·∂l/∂s."""
  g = jax.grad(lambda rho: jnp.sum(losses.lipo(rho, jnp.zeros_like(rho), PSI, beta=0.05)[0]))(jnp.asarray(RHO))
  np.testing.assert_allclose(np.asarray(g)[0] / 0.05, [-0.21777434, -0.01374287, 0.01976482, 0.21175239], atol=1e-8)


def test_lipo_with_two_completions_and_equal_weights_is_dpo(x64):
  rng = np.random.default_rng(0)
  pc, pr, rc, rr = (rng.normal(-15, 4, 16) for _ in range(4))
  pol, ref = np.stack([pc, pr], 1), np.stack([rc, rr], 1)
  lab = np.tile([1.0, 0.0], (16, 1))
  want = np.asarray(losses.dpo(pc, pr, rc, rr, beta=0.1))
  values, weights = losses.lipo(pol, ref, lab, beta=0.1, lambda_weight=False)
  np.testing.assert_allclose(np.asarray(values), want, rtol=1e-12)
  assert np.all(np.asarray(weights) == 1)
  # the swapped storage order gives the same losses: labels, not positions, say which is chosen
  np.testing.assert_allclose(np.asarray(losses.lipo(pol[:, ::-1], ref[:, ::-1], lab[:, ::-1], beta=0.1,
                                                    lambda_weight=False)[0]), want, rtol=1e-12)


def test_listwise_padding_is_ignored(x64):
  """A list padded from K = 4 to 6 (mask False, any values in the padding) gives the K = 4 losses."""
  z = np.zeros((1, 6))
  rho = np.concatenate([RHO, [[99.0, -99.0]]], 1)
  psi = np.concatenate([PSI, [[1.0, 0.5]]], 1)
  mask = np.array([[True] * 4 + [False] * 2])
  for fn, kw in [(losses.lipo, {}), (losses.lipo, dict(discount_base="2", scale_by_list_size=True,
                                                       reduction="pair_mean")),
                 (losses.pair_logistic, {}), (losses.list_mle, {}), (losses.softmax_listnet, {})]:
    want = _mean(fn(RHO, np.zeros_like(RHO), PSI, beta=0.05, **kw))
    assert _mean(fn(rho, z, psi, mask, beta=0.05, **kw)) == pytest.approx(want, rel=1e-12), (fn.__name__, kw)


def test_lipo_rejects_unknown_options():
  with pytest.raises(ValueError, match="discount_base"):
    losses.lipo(RHO, RHO, PSI, discount_base="10")
  with pytest.raises(ValueError, match="reduction"):
    losses.lipo(RHO, RHO, PSI, reduction="mean")


# DPO-2 pairs (§1.6) for RPO-1
SW, SL, RW, RL = (np.array(v) for v in ([-10.0, -20.0], [-12.0, -18.0], [-11.0, -19.0], [-11.5, -19.0]))
NW = np.array([4.0, 20.0])


def test_rpo_1_three_normalisations(x64):
  f = lambda red: float(jnp.mean(losses.rpo(SW, SL, RW, RL, beta=0.1, eta=1.0, sft_reduction=red,
                                            chosen_lengths=NW, rejected_lengths=NW)))
  assert f("seq_sum") == pytest.approx(2.2095479585855617, rel=RTOL)
  assert f("seq_mean") == pytest.approx(2.4595479585855617, rel=RTOL)
  assert f("token_pool") == pytest.approx(1.959547958585562, rel=RTOL)
  assert float(jnp.mean(losses.rpo(SW, SL, RW, RL, beta=0.1, eta=0.0))) == pytest.approx(0.709547958585562, rel=RTOL)
  with pytest.raises(ValueError, match="chosen_lengths"):
    losses.rpo(SW, SL, RW, RL, sft_reduction="seq_mean")


def _ld_case():
  cw, cwr = np.array([-1.0, -0.5, -2.0]), np.array([-1.2, -0.6, -1.5])
  cl, clr = np.array([-0.8, -1.0, -0.4, -1.5, -2.5]), np.array([-1.0, -0.9, -0.6, -1.2, -2.0])
  return cw, cwr, cl, clr


def test_ld_dpo_1_from_token_log_probs(x64):
  """LDDPO-1: tails from token log-probs (as the trainer computes them), then the loss: DPO at α = 1, the
  desensitised reference (default) and the policy-only variant."""
  cw, cwr, cl, clr = _ld_case()
  pad = lambda t: np.pad(t, (0, 5 - len(t)))
  mask_c, mask_r = np.array([[1, 1, 1, 0, 0]]), np.array([[1, 1, 1, 1, 1]])
  pol_tok, ref_tok = np.stack([pad(cw), pad(cl)]), np.stack([pad(cwr), pad(clr)])
  ptc, ptr = losses.common_length_tails(pol_tok, mask_c, mask_r)
  rtc, rtr = losses.common_length_tails(ref_tok, mask_c, mask_r)
  assert float(ptc[0]) == 0 and float(ptr[0]) == pytest.approx(-4.0) and float(rtr[0]) == pytest.approx(-3.2)
  sums = [np.array([t.sum()]) for t in (cw, cl, cwr, clr)]
  tails = dict(policy_chosen_tail=ptc, policy_rejected_tail=ptr, reference_chosen_tail=rtc,
               reference_rejected_tail=rtr)
  f = lambda **kw: float(losses.ld_dpo(*sums, beta=0.1, **tails, **kw)[0])
  assert f(alpha=1.0) == pytest.approx(0.6782596763414485, rel=RTOL)
  assert f(alpha=0.5) == pytest.approx(0.6981596805078624, rel=RTOL)
  assert f(alpha=0.5, desensitize_reference=False) == pytest.approx(0.781755338870623, rel=RTOL)
  assert f(alpha=1.0) == pytest.approx(float(losses.dpo(*sums, beta=0.1)[0]), rel=1e-12)


def test_d2o_1_value_and_gradients(x64):
  pos, neg = jnp.array([[0.5, -0.2, 0.3]]), jnp.array([1.0])
  f = lambda p, n: losses.d2o(p, jnp.zeros_like(p), n, jnp.zeros_like(n), beta=0.1, alpha=0.1)[0]
  assert float(f(pos, neg)) == pytest.approx(0.7339469673175899, rel=RTOL)
  gp, gn = jax.grad(f, argnums=(0, 1))(pos, neg)
  np.testing.assert_allclose(np.asarray(gp)[0], [-0.017332978005186062] * 3, rtol=RTOL)
  assert float(gn[0]) == pytest.approx(0.05199893401555819, rel=RTOL)
  # padding a fourth "positive" changes nothing
  padded = losses.d2o(jnp.array([[0.5, -0.2, 0.3, 50.0]]), jnp.zeros((1, 4)), neg, jnp.zeros(1),
                      jnp.array([[True, True, True, False]]), beta=0.1, alpha=0.1)
  assert float(padded[0]) == pytest.approx(0.7339469673175899, rel=RTOL)


def test_jpo_1_is_dpo_on_joint_log_probs(x64):
  jpo = losses.LOSSES["jpo"]
  same = jpo(np.array([-40.0]), np.array([-42.0]), np.array([-42.0]), np.array([-42.5]), beta=0.1)
  assert float(same[0]) == pytest.approx(0.6209570477895321, rel=RTOL)
  diff = jpo(np.array([-40.0]), np.array([-37.0]), np.array([-42.0]), np.array([-36.5]), beta=0.1)
  assert float(diff[0]) == pytest.approx(0.5759394198788436, rel=RTOL)


def test_new_pairwise_losses_are_configurable_by_name():
  for name, hp in [("rpo", {"beta": 0.1, "eta": 0.005, "sft_reduction": "seq_mean"}), ("ld_dpo", {"alpha": 0.5}),
                   ("jpo", {"beta": 0.1})]:
    fn, kw = losses.get_loss(name, hp)
    assert kw == hp
  from jaxalign.errors import UserError
  with pytest.raises(UserError, match="policy_chosen_tail"):  # an array, never a config key
    losses.get_loss("ld_dpo", {"policy_chosen_tail": 1.0})
