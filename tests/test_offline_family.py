"""Every pairwise loss trains through the offline trainer; reference-free ones compile without reference params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses
from jaxalign import sharding as shd
from jaxalign.config import base_config
from jaxalign.models.transformer import model_config
from jaxalign.optim import make_optimizer
from jaxalign.trainers import offline
from jaxalign.trainers.state import create_state, make_step

from jaxalign.models.loading import init_params

CFG = model_config("nano", vocab_size=64)
HPARAMS = {"dpo": dict(beta=0.1), "cdpo": dict(beta=0.1, epsilon=0.1), "robust": dict(beta=0.1, epsilon=0.1),
           "hinge": dict(beta=0.1), "hinge_norm": dict(beta=0.1), "ipo": dict(tau=0.5, length_normalize=True),
           "slic_hf": dict(delta=1.0, lam=0.1), "orpo": dict(lam=0.5), "simpo": dict(beta=2.5, gamma=1.375)}


def _batch(b=8, p=5, c=6, seed=0):
  rng = np.random.default_rng(seed)
  out = dict(prompt=rng.integers(4, 64, (b, p)).astype(np.int32), prompt_mask=np.ones((b, p), np.int32))
  for k in ("chosen", "rejected"):
    out[k] = rng.integers(4, 64, (b, c)).astype(np.int32)
    out[f"{k}_mask"] = (np.arange(c)[None] < rng.integers(1, c + 1, (b, 1))).astype(np.int32)
  return out


@pytest.fixture(scope="module")
def setup():
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  return mesh, init_params(CFG, jax.random.key(0), mesh), init_params(CFG, jax.random.key(1), mesh)


def test_every_pairwise_loss_has_hparams_here():
  assert set(HPARAMS) == set(losses.LOSSES) - {"bco_pair"}


@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_loss_trains_in_the_offline_step(setup, name):
  mesh, params, ref = setup
  tcfg = base_config().train
  tcfg.learning_rate, tcfg.warmup_steps, tcfg.schedule = 3e-3, 0, "constant"
  opt = make_optimizer(tcfg)
  frozen = None if name in losses.REFERENCE_FREE else ref
  step = jax.jit(make_step(offline.preference_loss(CFG, name, HPARAMS[name], chunk=32), opt))
  state = create_state(jax.tree.map(jnp.copy, params), opt, mesh)
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  first = None
  for _ in range(8):  # one fixed batch: every objective must be able to lower its own loss
    state, m = step(state, batch, frozen)
    first = float(m["loss"]) if first is None else first
    assert int(m["nonfinite"]) == 0
  assert float(m["loss"]) < first, (name, first, float(m["loss"]))
  assert float(m["rewards/margins"]) > 0 or name in losses.REFERENCE_FREE


@pytest.mark.parametrize("name", sorted(losses.REFERENCE_FREE))
def test_reference_free_step_has_no_reference_inputs(setup, name):
  mesh, params, _ = setup
  opt = make_optimizer(base_config().train)
  state = create_state(params, opt, mesh)
  step = make_step(offline.preference_loss(CFG, name, HPARAMS[name], chunk=32), opt)
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  jaxpr = jax.make_jaxpr(step)(state, batch, None)
  n_state_and_batch = len(jax.tree.leaves(state)) + len(jax.tree.leaves(batch))
  assert len(jaxpr.jaxpr.invars) == n_state_and_batch  # nothing else goes in: no reference params


def test_bco_pair_carries_its_reward_shift_in_the_state(setup):
  """δ = running mean of per-batch mean rewards, including the current batch (algorithms.md §3.3)."""
  mesh, params, ref = setup
  tcfg = base_config().train
  tcfg.learning_rate, tcfg.warmup_steps, tcfg.schedule = 3e-3, 0, "constant"
  opt = make_optimizer(tcfg)
  step = jax.jit(make_step(offline.preference_loss(CFG, "bco_pair", dict(beta=0.5), chunk=32), opt,
                           stateful=True))
  state = create_state(jax.tree.map(jnp.copy, params), opt, mesh, offline.initial_extra("bco_pair"))
  logps = jax.jit(lambda p, b: offline.pair_logps(CFG, p, b, 32))
  means = []
  for seed in (1, 2):
    batch = {k: jnp.asarray(v) for k, v in _batch(seed=seed).items()}
    (pc, pr), (rc, rr) = logps(state.params, batch), logps(ref, batch)
    means.append(float(losses.bco_pair_reward_mean(pc, pr, rc, rr, beta=0.5)))
    state, m = step(state, batch, ref)
    np.testing.assert_allclose(float(m["delta"]), np.mean(means), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(state.extra["delta"][0]), np.mean(means), rtol=1e-5, atol=1e-7)
  assert means[1] != means[0]  # the policy moved: the second batch mean is a new value
