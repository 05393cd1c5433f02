"""One DPO step: 8-device (data=2, fsdp=2, tensor=2) mesh == one device; precomputed ref == in-step ref."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import sharding as shd
from jaxalign.config import base_config
from jaxalign.models.transformer import model_config
from jaxalign.optim import make_optimizer
from jaxalign.trainers import offline
from jaxalign.trainers.state import create_state, jit_step, make_step

from jaxalign.models.loading import abstract_params, init_params

CFG = model_config("nano", vocab_size=64)


def assert_trees_close(x, y, rtol=1e-5):
  """Per-tensor relative error ||a - b|| / ||b||: Adam's first step g/(|g|+eps) amplifies
  reduction-order noise in near-zero gradient entries, so elementwise rtol is too strict."""
  for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b), (np.linalg.norm(a - b), np.linalg.norm(b))


def _batch(b=8, p=6, c=5, seed=0):
  rng = np.random.default_rng(seed)
  prompt_mask = (np.arange(p)[None] >= rng.integers(0, 3, (b, 1))).astype(np.int32)
  out = dict(prompt=rng.integers(4, 64, (b, p)).astype(np.int32), prompt_mask=prompt_mask)
  for k in ("chosen", "rejected"):
    out[k] = rng.integers(4, 64, (b, c)).astype(np.int32)
    out[f"{k}_mask"] = (np.arange(c)[None] < rng.integers(1, c + 1, (b, 1))).astype(np.int32)
  return out


def _run(mesh, precompute: bool, grad_accum: int = 1):
  tcfg = base_config().train
  # SGD: the update is proportional to the gradient, so this compares gradients directly
  # (Adam's first step g/(|g|+eps) would amplify reduction-order noise of near-zero entries).
  tcfg.optimizer, tcfg.learning_rate, tcfg.warmup_steps, tcfg.grad_accum = "sgd", 1.0, 0, grad_accum
  one = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  params = init_params(CFG, jax.random.key(0), one)
  shardings = shd.param_shardings(abstract_params(CFG), mesh)
  params = jax.device_put(params, shardings)
  ref = jax.device_put(init_params(CFG, jax.random.key(1), one), shardings)
  batch = _batch()
  loss_fn = offline.preference_loss(CFG, "dpo", {"beta": 0.5}, chunk=16)
  frozen = ref
  if precompute:
    rc, rr = jax.jit(lambda p, b: offline.pair_logps(CFG, p, b, 16))(ref, shd.shard_batch(batch, mesh))
    batch = {**batch, "ref_chosen_logps": np.asarray(rc), "ref_rejected_logps": np.asarray(rr)}
    frozen = None
  opt = make_optimizer(tcfg)
  state = create_state(params, opt, mesh)
  b_sh = {k: shd.batch_sharding(mesh, v.ndim, 8) for k, v in batch.items()}
  step = jit_step(make_step(loss_fn, opt, grad_accum), state, b_sh,
                  None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen), mesh)
  state, metrics = step(state, shd.shard_batch(batch, mesh), frozen)
  return jax.device_get(metrics), jax.device_get(state.params), state


@pytest.fixture(scope="module")
def single():
  return _run(shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]), precompute=False)


def test_sharded_step_equals_single_device(single):
  mesh = shd.make_mesh(2, 2, 2)
  m8, p8, state = _run(mesh, precompute=False)
  m1, p1, _ = single
  # the parameters really are split over the mesh
  q = state.params["layers_0"]["attn"]["q"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert len({str(s.index) for s in q.addressable_shards}) == 4
  for k in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "grad_norm"):
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, atol=1e-7, err_msg=k)
  assert_trees_close(p8, p1)
  assert float(m1["loss"]) > 0 and int(m1["nonfinite"]) == 0


def test_precomputed_reference_and_grad_accum_equal_in_step(single):
  m1, p1, _ = single
  mp, pp, _ = _run(shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]), precompute=True)
  ma, pa, _ = _run(shd.make_mesh(4, 1, 1, devices=jax.devices()[:4]), precompute=False, grad_accum=2)
  for m, p in ((mp, pp), (ma, pa)):
    np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-5)
    assert_trees_close(p, p1)


def test_nonfinite_step_keeps_state():
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  params = init_params(CFG, jax.random.key(0), mesh)
  opt = make_optimizer(base_config().train)
  state = create_state(params, opt, mesh)
  before = jax.device_get(state.params)

  def bad_loss(p, mb, frozen):
    return jnp.sum(p["final_norm"]["scale"]) * jnp.nan, (jnp.float32(1.0), {})
  step = jax.jit(make_step(bad_loss, opt))
  new, metrics = step(state, {"x": jnp.zeros((2, 1))}, None)
  assert int(metrics["nonfinite"]) == 1 and int(new.step) == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(new.params)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
