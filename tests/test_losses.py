"""DPO loss and metrics against the float64 vectors of algorithms.md (DPO-1, DPO-2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses
from conftest import f64  # noqa: F401  (x64 is a conftest fixture)
from jaxalign.errors import UserError


def test_dpo_1_value_and_gradient(x64):
  pc, pr, rc, rr = f64([-10.0], [-12.0], [-11.0], [-11.5])
  loss = losses.dpo(pc, pr, rc, rr, beta=0.1)
  np.testing.assert_allclose(loss, [0.6209570477895321], rtol=1e-6)
  assert loss.dtype == jnp.float64
  # dL/dh = -β σ(-βh); h moves one-for-one with the chosen policy log-prob.
  g = jax.grad(lambda c: losses.dpo(c, pr, rc, rr, beta=0.1).sum())(pc)
  np.testing.assert_allclose(g, [-0.04625701546562505], rtol=1e-6)
  m = losses.preference_metrics(pc, pr, rc, rr, beta=0.1)
  np.testing.assert_allclose([m["rewards/chosen"], m["rewards/rejected"], m["rewards/margins"],
                              m["rewards/accuracies"]], [0.1, -0.05, 0.15, 1.0], rtol=1e-6)


def test_dpo_2_batch_metrics(x64):
  pc, pr, rc, rr = f64([-10.0, -20.0], [-12.0, -18.0], [-11.0, -19.0], [-11.5, -19.0])
  per_pair = losses.dpo(pc, pr, rc, rr, beta=0.1)
  np.testing.assert_allclose(per_pair, [0.6209570478, 0.7981388694], rtol=1e-9)
  np.testing.assert_allclose(per_pair.mean(), 0.709547958585562, rtol=1e-6)
  m = losses.preference_metrics(pc, pr, rc, rr, beta=0.1)
  np.testing.assert_allclose(m["rewards/chosen"], 0.0, atol=1e-12)
  np.testing.assert_allclose(m["rewards/rejected"], 0.025, rtol=1e-6)
  np.testing.assert_allclose(m["rewards/accuracies"], 0.5, rtol=1e-6)
  np.testing.assert_allclose(m["rewards/margins"], -0.025, rtol=1e-6)
  np.testing.assert_allclose(m["logps/chosen"], -15.0, rtol=1e-6)
  np.testing.assert_allclose(m["logps/rejected"], -15.0, rtol=1e-6)


def test_dpo_float32_close_and_accuracy_is_strict():
  pc, pr, rc, rr = (jnp.float32(x) for x in (-10.0, -12.0, -11.0, -11.5))
  np.testing.assert_allclose(losses.dpo(pc, pr, rc, rr, beta=0.1), 0.6209570477895321, rtol=1e-5)
  tie = losses.preference_metrics(jnp.array([-1.0]), jnp.array([-1.0]), jnp.array([0.0]), jnp.array([0.0]), beta=0.1)
  assert float(tie["rewards/accuracies"]) == 0.0  # ties count as wrong
  # large margins stay finite (softplus, not log(sigmoid))
  assert np.isfinite(losses.dpo(jnp.array([0.0]), jnp.array([-1e4]), jnp.array([0.0]), jnp.array([0.0]), beta=1.0)).all()
  assert np.isfinite(losses.dpo(jnp.array([-1e4]), jnp.array([0.0]), jnp.array([0.0]), jnp.array([0.0]), beta=1.0)).all()


def test_get_loss_validates_name_and_hparams():
  fn, kw = losses.get_loss("dpo", {"beta": 0.5})
  assert fn is losses.dpo and kw == {"beta": 0.5}
  with pytest.raises(UserError, match=r"loss.name: unknown loss 'dpx'"):
    losses.get_loss("dpx", {})
  with pytest.raises(UserError, match=r"loss.gamma: not a hyper-parameter"):
    losses.get_loss("dpo", {"beta": 0.1, "gamma": 1.0})
