"""PPO trainer: the one compiled update (jaxpr, numbers vs an independent float64 reference),
sharded == unsharded, a tiny CLI run, and a SIGKILLed run that resumes on the same trajectory."""

import os

import jax
import numpy as np
import pytest

from cli import assert_same_rows, cmd, killed_at, rows, run
from jaxalign import sharding as shd
from jaxalign.config import base_config
from jaxalign.models import heads
from jaxalign.models.transformer import model_config
from jaxalign.trainers import ppo
from jaxalign.trainers.state import create_state, jit_step

from jaxalign.models.loading import init_params

CFG = model_config("nano", vocab_size=64)
B, P, C = 16, 8, 12


def _config(**ppo_overrides):
  c = base_config()
  c.train.optimizer, c.train.learning_rate, c.train.warmup_steps, c.train.schedule = "sgd", 0.1, 0, "constant"
  c.ppo.epochs, c.ppo.minibatches = 2, 2
  for k, v in ppo_overrides.items():
    c.ppo[k] = v
  return c


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  plen = rng.integers(3, P + 1, B)
  pm = (np.arange(P)[None] >= P - plen[:, None]).astype(np.int32)  # left-padded
  clen = rng.integers(1, C + 1, B)
  cm = (np.arange(C)[None] < clen[:, None]).astype(np.int32)
  return dict(prompt=rng.integers(4, 64, (B, P)).astype(np.int32) * pm, prompt_mask=pm,
              completion=rng.integers(4, 64, (B, C)).astype(np.int32) * cm, completion_mask=cm,
              rewards=rng.normal(size=(B, 1)).astype(np.float32), finished=rng.random(B) < 0.7)


def _setup(mesh, config, value_kind="head"):
  pol = init_params(CFG, jax.random.key(0), mesh)
  ref = init_params(CFG, jax.random.key(1), mesh)
  if value_kind == "head":
    value = {"head": heads.init_head(CFG, jax.random.key(2), mesh, std=0.02)}
  else:
    value = {"trunk": init_params(CFG, jax.random.key(3), mesh),
             "head": heads.init_head(CFG, jax.random.key(2), mesh, std=0.02)}
  opt = ppo.optimizer_for(config)
  state = create_state({"policy": pol, "value": value}, opt, mesh,
                       jax.device_put(ppo.initial_extra(config), shd.replicated(mesh)))
  batch = shd.shard_batch(_batch(), mesh)
  update = ppo.make_update(config.ppo, CFG, CFG, opt, seed=0, chunk=32)
  return state, batch, {"reference": ref, "reward_models": ()}, update, opt


def _primitives(jaxpr, out=None):
  """Names of every primitive in a jaxpr and its sub-jaxprs (jit names as `jit:NAME`)."""
  out = set() if out is None else out
  for e in jaxpr.eqns:
    out.add(e.primitive.name)
    if "name" in e.params:
      out.add(f"jit:{e.params['name']}")
    for v in e.params.values():
      for sub in v if isinstance(v, (list, tuple)) else [v]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _primitives(inner, out)
  return out


@pytest.mark.parametrize("value_kind", ["head", "reward_model"])
def test_update_is_one_jaxpr_with_kl_gae_and_loss(value_kind):
  config = _config(value=value_kind, kl_estimator="k3")
  mesh = shd.make_mesh()
  state, batch, ref, update, _ = _setup(mesh, config, value_kind)
  closed = jax.make_jaxpr(update)(state, batch, ref)
  text, prims = str(closed), _primitives(closed.jaxpr)
  assert "reverse=True" in text  # GAE: the reverse scan over response tokens
  assert "length=2" in text  # epochs x minibatches: nested lax.scan inside the same function
  # log-probs of policy and reference, k3 KL (expm1), ratio (exp), clipping, whitening (rsqrt),
  # gradients (transpose of the model's matmuls), the non-finite guard (cond), minibatch shuffles
  for prim in ("jit:token_logps", "expm1", "exp", "jit:clip", "rsqrt", "dot_general", "transpose", "cond",
               "random_fold_in", "scan"):
    assert prim in prims, prim


def _reference_numbers(state, batch, ref, config):
  """KL, GAE and returns in float64 numpy from the update's own forward passes (independent recursion)."""
  p = config.ppo
  fwd = jax.jit(lambda params, ref, b: (
      ppo.policy_forward(CFG, CFG, params, b, value_kind="head", temperature=1.0, chunk=32),
      ppo.reference_forward(CFG, ref, b, temperature=1.0, chunk=32)))
  (lp, _, v), lr = fwd(state.params, ref["reference"], batch)
  lp, v, lr = (np.asarray(x, np.float64) for x in (lp, v, lr))
  m = np.asarray(batch["completion_mask"]) > 0
  # raw_sum of one reward, minus the missing-EOS penalty (TRL's "subtract")
  score = np.asarray(batch["rewards"], np.float64)[:, 0] - float(p.missing_eos_penalty) * ~np.asarray(
      batch["finished"])
  k = np.where(m, lp - lr, 0.0)
  r = -float(p.kl_coef) * k
  last = m.sum(1) - 1
  r[np.arange(B), last] += score
  adv = np.zeros_like(r)
  for i in range(B):
    a, nv = 0.0, 0.0
    for t in range(last[i], -1, -1):
      delta = r[i, t] + float(p.gamma) * nv - v[i, t]
      a = delta + float(p.gamma) * float(p.lam) * a
      adv[i, t], nv = a, v[i, t]
  ret = adv + v
  return dict(kl=k.sum(1).mean(), advantage=adv[m].mean(), returns=ret[m].mean(), value=v[m].mean(),
              score=score.mean(), rlhf_reward=(score - float(p.kl_coef) * k.sum(1)).mean())


def test_update_numbers_match_float64_reference():
  config = _config()
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  state, batch, ref, update, _ = _setup(mesh, config)
  want = _reference_numbers(state, batch, ref, config)
  _, m = jax.jit(update)(state, batch, ref)
  m = jax.device_get(m)
  for k, v in want.items():
    np.testing.assert_allclose(float(m[k]), v, rtol=1e-4, atol=1e-5, err_msg=k)
  assert int(m["nonfinite"]) == 0 and float(m["entropy"]) > 0 and 0 <= float(m["clipfrac"]) <= 1


def test_sharded_update_equals_one_device():
  config = _config(adaptive_kl=True, kl_target=0.1, kl_horizon=100.0)
  outs = []
  # 2x2x2: the batch split over data x fsdp, params over fsdp and tensor (a superset of data=8)
  for mesh in (shd.make_mesh(data=1, devices=jax.devices()[:1]), shd.make_mesh(data=2, fsdp=2, tensor=2)):
    state, batch, ref, update, _ = _setup(mesh, config)
    sh = {k: v.sharding for k, v in batch.items()}
    fn = jit_step(update, state, sh, jax.tree.map(lambda x: x.sharding, ref), mesh)
    state, m = fn(state, batch, ref)
    outs.append(jax.device_get((state.params, state.extra, m)))
  one, sharded = outs
  assert float(one[1]["kl_coef"]) != 0.05  # the adaptive controller moved
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), one, sharded)


# ---- CLI ----

OVERRIDES = ["--config.init_from="]  # random init: no SFT phase


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("ppo") / "run")
  run(wd, *OVERRIDES, config="configs/ppo.py:tiny")
  return wd


def test_tiny_cli_run_logs_the_ppo_keys(tiny_run):
  rs = rows(tiny_run)
  train = [r for r in rs if "train/kl" in r]
  assert [r["step"] for r in train] == list(range(1, 7))
  for key in ("train/kl", "train/score", "train/clipfrac", "train/approxkl", "train/entropy", "train/kl_coef",
              "train/value_loss", "train/policy_loss", "train/gt_reward", "train/learning_rate",
              "perf/rollout_time_s", "perf/update_time_s", "perf/step_compiles"):
    assert all(np.isfinite(r[key]) for r in train), key
  # the shared loop's perf keys (the first iteration compiles and is kept out of throughput)
  assert all(r["perf/tokens_per_s"] > 0 and 0 < r["perf/mfu"] < 1 for r in train[1:])
  assert [r["perf/step_compiles"] for r in train] == [1] * 6  # one compiled update for the whole run
  lrs = [r["train/learning_rate"] for r in train]  # warm-up counted in optimiser steps, then decay
  assert lrs[0] < lrs[1] and lrs[-1] < max(lrs)
  ev = [r for r in rs if "eval/win_rate" in r]
  assert [r["step"] for r in ev] == [3, 6] and all("eval/kl" in r for r in ev)
  assert os.path.exists(os.path.join(tiny_run, "samples.jsonl"))
  assert sorted(int(d) for d in os.listdir(os.path.join(tiny_run, "checkpoints")) if d.isdigit())[-1] == 6


def test_killed_ppo_run_resumes_on_the_same_trajectory(tiny_run, tmp_path):
  wd = str(tmp_path / "run")
  killed_at(cmd(wd, *OVERRIDES, config="configs/ppo.py:tiny"), "checkpoint@6", str(tmp_path / "log"))  # mid-write
  assert sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit()) == [2, 4]
  run(wd, *OVERRIDES, config="configs/ppo.py:tiny")
  assert_same_rows(rows(wd), rows(tiny_run), "ppo")


def test_bad_ppo_config_is_one_line_error(tmp_path):
  p = run(str(tmp_path / "wd"), *OVERRIDES, "--config.ppo.minibatches=3", config="configs/ppo.py:tiny",
          check=False)
  assert p.returncode == 2
  lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("WARNING")]
  assert lines[-1].startswith("error: config ppo.minibatches"), p.stderr[-2000:]
