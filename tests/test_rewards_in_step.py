"""Rewards inside the compiled step: PPO's reward models + LSC and the online reward-model annotator are
part of the update's jaxpr (their params are inputs, no host callback), and give a host-side computation's
numbers."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import judges
from jaxalign import sharding as shd
from jaxalign.config import base_config
from jaxalign.models import heads
from jaxalign.models.loading import ScalarModel, init_params
from jaxalign.models.transformer import model_config
from jaxalign.optim import make_optimizer
from jaxalign.trainers import online, ppo
from jaxalign.trainers.state import create_state, make_step
from test_ppo import _primitives

CFG = model_config("nano", vocab_size=64)
B, P, C = 16, 8, 12
CALLBACKS = ("pure_callback", "io_callback", "debug_callback", "callback")


def _rows(seed=0):
  rng = np.random.default_rng(seed)
  pm = (np.arange(P)[None] >= P - rng.integers(3, P + 1, B)[:, None]).astype(np.int32)  # left-padded
  cm = (np.arange(C)[None] < rng.integers(1, C + 1, B)[:, None]).astype(np.int32)
  comp = lambda: rng.integers(4, 64, (B, C)).astype(np.int32) * cm
  return rng, dict(prompt=rng.integers(4, 64, (B, P)).astype(np.int32) * pm, prompt_mask=pm, completion=comp(),
                   completion_mask=cm, b=comp(), finished=rng.random(B) < 0.6)


def _reward_model(i, mesh):
  return {"trunk": init_params(CFG, jax.random.key(10 + i), mesh),
          "head": heads.init_head(CFG, jax.random.key(20 + i), mesh, std=0.5)}


def _params_are_inputs(closed, args, tree):
  """Every leaf of `tree` is an input variable of the jaxpr (not a baked-in constant)."""
  leaves = jax.tree.leaves(args)
  assert len(closed.jaxpr.invars) == len(leaves)
  ids = {id(x): i for i, x in enumerate(leaves)}
  for x in jax.tree.leaves(tree):
    assert id(x) in ids
  assert all(np.size(c) <= 1 for c in closed.consts), [np.shape(c) for c in closed.consts]


def test_ppo_update_scores_two_reward_models_with_lsc_inside_the_jaxpr():
  c = base_config()
  c.ppo.reward_source, c.ppo.aggregation, c.ppo.missing_eos, c.ppo.missing_eos_penalty = "reward_models", "lsc", \
      "subtract", 0.7
  c.ppo.epochs, c.ppo.minibatches = 1, 2
  mesh = shd.make_mesh()
  rng, rows = _rows()
  rows.pop("b")
  rows["r_ref"] = rng.normal(size=(B, 2)).astype(np.float32)
  rms = (_reward_model(0, mesh), _reward_model(1, mesh))
  frozen = {"reference": init_params(CFG, jax.random.key(1), mesh), "reward_models": rms}
  opt = ppo.optimizer_for(c)
  state = create_state({"policy": init_params(CFG, jax.random.key(0), mesh),
                        "value": {"head": heads.init_head(CFG, jax.random.key(2), mesh, std=0.02)}}, opt, mesh,
                       jax.device_put(ppo.initial_extra(c), shd.replicated(mesh)))
  batch = shd.shard_batch(rows, mesh)
  update = ppo.make_update(c.ppo, CFG, CFG, opt, seed=0, chunk=32, reward_cfgs=(CFG, CFG))

  closed = jax.make_jaxpr(update)(state, batch, frozen)
  _params_are_inputs(closed, (state, batch, frozen), rms)
  prims = _primitives(closed.jaxpr)
  assert not prims & set(CALLBACKS), prims & set(CALLBACKS)

  # the numbers: each reward model scored on its own (one jit per model), LSC and the penalty in float64 numpy
  r = np.stack([np.asarray(jax.jit(heads.sequence_score, static_argnums=0)(
      CFG, rm, batch["prompt"], batch["prompt_mask"], batch["completion"], batch["completion_mask"]), np.float64)
      for rm in rms], axis=-1)
  u = r - rows["r_ref"].astype(np.float64)
  score = np.sum(-np.logaddexp(0.0, -u), axis=-1) - 0.7 * ~rows["finished"]
  _, m = jax.jit(update)(state, batch, frozen)
  np.testing.assert_allclose(float(m["score"]), score.mean(), rtol=1e-5)
  # atol: a reward model's batch mean can be near 0 (here 0.0078 from terms of ~2), where float32 summation
  # order alone moves the relative error past 1e-5
  np.testing.assert_allclose([float(m["reward_0"]), float(m["reward_1"])], r.mean(0), rtol=1e-5,
                             atol=1e-6 * np.abs(r).max())
  assert float(m["finished"]) == rows["finished"].mean()
  # a different reward model changes the score: its params really enter the step
  other = {**frozen, "reward_models": (rms[1], rms[0])}
  _, m2 = jax.jit(update)(state, batch, other)
  np.testing.assert_allclose([float(m2["reward_0"]), float(m2["reward_1"])], r.mean(0)[::-1], rtol=1e-5,
                             atol=1e-6 * np.abs(r).max())


def test_online_step_annotates_with_the_reward_model_inside_the_jaxpr():
  c = base_config()
  c.online.method, c.online.annotator, c.online.target = "ipo_md", "reward_model", "hard"
  mesh = shd.make_mesh()
  rng, rows = _rows(1)
  batch = dict(prompt=rows["prompt"], prompt_mask=rows["prompt_mask"], a=rows["completion"],
               a_mask=rows["completion_mask"], b=rows["b"], b_mask=rows["completion_mask"][::-1].copy(),
               label_u=rng.random(B).astype(np.float32))
  rm = _reward_model(0, mesh)
  model = ScalarModel("reward_model", CFG, rm, 0, "difference")
  frozen = {"reference": init_params(CFG, jax.random.key(1), mesh), "annotator": rm}
  tcfg = base_config().train
  tcfg.optimizer, tcfg.learning_rate, tcfg.warmup_steps = "sgd", 0.1, 0
  opt = make_optimizer(tcfg)
  state = create_state(init_params(CFG, jax.random.key(0), mesh), opt, mesh)
  step = make_step(online.online_loss(c, CFG, 32, model), opt)
  sbatch = shd.shard_batch(batch, mesh)

  closed = jax.make_jaxpr(step)(state, sbatch, frozen)
  _params_are_inputs(closed, (state, sbatch, frozen), rm)
  assert not _primitives(closed.jaxpr) & set(CALLBACKS)

  ra, rb = (np.asarray(jax.jit(heads.sequence_score, static_argnums=0)(
      CFG, rm, sbatch["prompt"], sbatch["prompt_mask"], sbatch[k], sbatch[f"{k}_mask"]), np.float64)
      for k in ("a", "b"))
  p = 1.0 / (1.0 + np.exp(-(ra - rb)))
  _, m = jax.jit(step)(state, sbatch, frozen)
  np.testing.assert_allclose(float(m["pref_prob"]), p.mean(), rtol=1e-5)
  np.testing.assert_allclose([float(m["rm_reward_a"]), float(m["rm_reward_b"])], [ra.mean(), rb.mean()], rtol=1e-5)
  label = batch["label_u"] < p  # the hard label: I = [u < P]
  tau = float(c.online.tau)
  np.testing.assert_allclose(float(m["target"]), np.mean((label - 0.5) / tau), rtol=1e-5)
  # the judge module's own entry point gives the same probabilities
  pj, _ = jax.jit(lambda prm, b: judges.preference(model, prm, b["prompt"], b["prompt_mask"], b["a"], b["a_mask"],
                                                    b["b"], b["b_mask"]))(rm, sbatch)
  np.testing.assert_allclose(np.asarray(pj), p, rtol=1e-5)
