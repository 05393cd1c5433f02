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
           "slic_hf": dict(delta=1.0, lam=0.1), "orpo": dict(lam=0.5), "simpo": dict(beta=2.5, gamma=1.375),
           "rpo": dict(beta=0.1, eta=0.5, sft_reduction="seq_mean"), "ld_dpo": dict(beta=0.1, alpha=0.5),
           "jpo": dict(beta=0.1)}
LIST_HPARAMS = {"lipo": dict(beta=0.1), "pair_logistic": dict(beta=0.1), "list_mle": dict(beta=0.1),
                "softmax": dict(beta=0.1)}


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


def _lists(b=8, k=4, p=5, c=6, seed=0):
  """K completions per prompt; the last list has only 2 (the rest padding), scores in [0, 1]."""
  rng = np.random.default_rng(seed)
  comps = rng.integers(4, 64, (b, k, c)).astype(np.int32)
  mask = (np.arange(c)[None, None] < rng.integers(1, c + 1, (b, k, 1))).astype(np.int32)
  mask[-1, 2:] = 0
  return dict(prompt=rng.integers(4, 64, (b, p)).astype(np.int32), prompt_mask=np.ones((b, p), np.int32),
              completions=comps, completions_mask=mask, scores=rng.random((b, k)).astype(np.float32),
              list_mask=mask.sum(2) > 0)


def test_every_listwise_loss_has_hparams_here():
  assert set(LIST_HPARAMS) == set(losses.LISTWISE)


@pytest.mark.parametrize("name", sorted(LIST_HPARAMS))
def test_listwise_loss_trains_in_the_offline_step(setup, name):
  mesh, params, ref = setup
  tcfg = base_config().train
  tcfg.learning_rate, tcfg.warmup_steps, tcfg.schedule = 3e-3, 0, "constant"
  opt = make_optimizer(tcfg)
  step = jax.jit(make_step(offline.listwise_loss(CFG, name, LIST_HPARAMS[name], chunk=32), opt))
  state = create_state(jax.tree.map(jnp.copy, params), opt, mesh)
  batch = {k: jnp.asarray(v) for k, v in _lists().items()}
  first = None
  for _ in range(8):
    state, m = step(state, batch, ref)
    first = float(m["loss"]) if first is None else first
    assert int(m["nonfinite"]) == 0
  assert float(m["loss"]) < first, (name, first, float(m["loss"]))
  assert float(m["rewards/pair_accuracy"]) > 0.5 and float(m["rewards/margins"]) > 0


def test_list_logps_are_the_pair_logps_and_packing_changes_nothing(setup):
  """Pairs are lists of two on one forward path; a packed list batch (K branches) scores as the fixed one;
  padding completions score 0."""
  mesh, params, _ = setup
  from jaxalign.data import packing
  pairs = _batch()
  as_lists = dict(prompt=pairs["prompt"], prompt_mask=pairs["prompt_mask"],
                  completions=np.stack([pairs["chosen"], pairs["rejected"]], 1),
                  completions_mask=np.stack([pairs["chosen_mask"], pairs["rejected_mask"]], 1))
  pc, pr = offline.pair_logps(CFG, params, {k: jnp.asarray(v) for k, v in pairs.items()}, 32)
  seq = offline.list_logps(CFG, params, {k: jnp.asarray(v) for k, v in as_lists.items()}, 32)
  np.testing.assert_array_equal(np.asarray(seq), np.stack([pc, pr], 1))
  lists = _lists()
  fixed = np.asarray(offline.list_logps(CFG, params, {k: jnp.asarray(v) for k, v in lists.items()}, 32))
  assert np.all(fixed[-1, 2:] == 0) and np.all(fixed[lists["list_mask"]] < 0)
  for share in (True, False):
    packed = packing.pack_lists(lists, share_prompt=share)
    got = np.asarray(offline.list_logps(CFG, params, {k: jnp.asarray(v) for k, v in packed.items()}, 32))
    np.testing.assert_allclose(got, fixed, rtol=2e-5, atol=2e-5)
    assert np.array_equal(packed["scores"], lists["scores"])  # per-list arrays pass through


def test_lipo_with_two_completions_and_equal_weights_takes_the_dpo_step(setup):
  mesh, params, ref = setup
  tcfg = base_config().train
  tcfg.learning_rate, tcfg.warmup_steps, tcfg.schedule = 3e-3, 0, "constant"
  opt = make_optimizer(tcfg)
  pairs = _batch(seed=3)
  lists = dict(prompt=pairs["prompt"], prompt_mask=pairs["prompt_mask"],
               completions=np.stack([pairs["rejected"], pairs["chosen"]], 1),  # chosen second: labels decide
               completions_mask=np.stack([pairs["rejected_mask"], pairs["chosen_mask"]], 1),
               scores=np.tile(np.float32([0.0, 1.0]), (8, 1)), list_mask=np.ones((8, 2), bool))
  outs = []
  for fn, batch in ((offline.preference_loss(CFG, "dpo", dict(beta=0.1), chunk=32), pairs),
                    (offline.listwise_loss(CFG, "lipo", dict(beta=0.1, lambda_weight=False), chunk=32), lists)):
    step = jax.jit(make_step(fn, opt))
    state = create_state(jax.tree.map(jnp.copy, params), opt, mesh)
    for _ in range(2):
      state, m = step(state, {k: jnp.asarray(v) for k, v in batch.items()}, ref)
    outs.append((float(m["loss"]), float(m["rewards/margins"]), state.params))
  assert outs[1][0] == pytest.approx(outs[0][0], rel=1e-5)
  assert outs[1][1] == pytest.approx(outs[0][1], rel=1e-4, abs=1e-6)
  for a, b in zip(jax.tree.leaves(outs[0][2]), jax.tree.leaves(outs[1][2])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=2e-5)  # Adam after 2 steps
