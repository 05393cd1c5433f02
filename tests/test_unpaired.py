"""BCO and KTO on unpaired feedback: δ in the state, KTO's mismatched KL rows, UDM, resume, CLI."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli import assert_same_rows, cmd, final, killed_at, rows, run
from jaxalign import losses, udm
from jaxalign import sharding as shd
from jaxalign.config import base_config
from jaxalign.data import builtin, pipeline
from jaxalign.models.transformer import model_config
from jaxalign.optim import make_optimizer
from jaxalign.trainers import unpaired
from jaxalign.trainers.state import create_state, make_step

from jaxalign.models.loading import init_params

CFG = model_config("nano", vocab_size=64)


def _batch(b=8, p=5, c=6, seed=0):
  rng = np.random.default_rng(seed)
  out = dict(prompt=rng.integers(4, 64, (b, p)).astype(np.int32), prompt_mask=np.ones((b, p), np.int32))
  for k in ("completion", "kl_completion"):
    out[k] = rng.integers(4, 64, (b, c)).astype(np.int32)
    out[f"{k}_mask"] = (np.arange(c)[None] < rng.integers(1, c + 1, (b, 1))).astype(np.int32)
  out["label"] = (np.arange(b) % 3 == 0).astype(np.int32)  # imbalanced: 3 up, 5 down
  return {k: jnp.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def models():
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  return mesh, init_params(CFG, jax.random.key(0), mesh), init_params(CFG, jax.random.key(1), mesh)


def _opt():
  tcfg = base_config().train
  tcfg.learning_rate, tcfg.warmup_steps, tcfg.schedule = 3e-3, 0, "constant"
  return make_optimizer(tcfg)


_ROW_LOGPS = {kl: jax.jit(lambda p, b, kl=kl: unpaired.row_logps(CFG, p, b, 32, kl)) for kl in (False, True)}


def _logps(params, b, with_kl=False):
  return _ROW_LOGPS[with_kl](params, b)


@pytest.mark.parametrize("estimator", ["running_mean", "class_balanced"])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_bco_delta_is_carried_in_the_state(models, estimator, grad_accum):
  """δ after each step = the estimator over every reward seen so far, this batch included (§3.3)."""
  mesh, params, ref = models
  beta, opts = 0.5, {"delta_estimator": estimator}
  opt = _opt()
  step = jax.jit(make_step(unpaired.unpaired_loss(CFG, "bco", dict(beta=beta), opts, 32), opt, grad_accum,
                           stateful=True))
  state = create_state(jax.tree.map(jnp.copy, params), opt, mesh, unpaired.initial_extra("bco", opts))
  seen_r, seen_pos = [], []
  for seed in (1, 2):
    b = _batch(seed=seed)
    r = np.asarray(beta * (_logps(state.params, b)[0] - _logps(ref, b)[0]))
    pos = np.asarray(b["label"]) > 0
    seen_r.append(r)
    seen_pos.append(pos)
    state, m = step(state, b, ref)
    allr, allpos = np.concatenate(seen_r), np.concatenate(seen_pos)
    if estimator == "running_mean":
      want = allr.mean()
    else:
      want = 0.5 * (allr[allpos].mean() + allr[~allpos].mean())
    got = float(losses.class_balanced_delta(state.extra["delta"]) if estimator == "class_balanced"
                else state.extra["delta"][0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    if grad_accum == 1:  # the loss is BCO's mean over all rows at this δ
      np.testing.assert_allclose(float(m["delta"]), want, rtol=1e-5, atol=2e-6)
      pol, rl = _logps(params if seed == 1 else prev, b)[0], _logps(ref, b)[0]
      expect = losses.bco_loss(pol, rl, pos, beta=beta, delta=want).mean()
      np.testing.assert_allclose(float(m["loss"]), float(expect), rtol=1e-5)
    prev = state.params


def test_kto_reference_point_uses_the_mismatched_rows(models):
  mesh, params, ref = models
  opt = _opt()
  hp = dict(beta=0.1, lambda_d=1.0, lambda_u=1.5)
  step = jax.jit(make_step(unpaired.unpaired_loss(CFG, "kto", hp, {}, 32), opt))
  b = _batch(seed=3)
  pol, pol_kl = _logps(params, b, True)
  rl, rl_kl = _logps(ref, b, True)
  z0 = max(0.0, float(np.mean(pol_kl - rl_kl)))
  state = create_state(jax.tree.map(jnp.copy, params), opt, mesh)
  _, m = step(state, b, ref)
  np.testing.assert_allclose(float(m["kl"]), z0, rtol=1e-5, atol=2e-6)
  expect = losses.kto_loss(pol, rl, b["label"] > 0, pol_kl, rl_kl, **hp).mean()
  np.testing.assert_allclose(float(m["loss"]), float(expect), rtol=1e-5)
  # Without the KL rows the reference point would differ: the rows do enter the computation.
  assert not np.allclose(pol_kl, pol)


def test_precomputed_reference_equals_in_step_reference(models):
  mesh, params, ref = models
  opt = _opt()
  for name, hp, opts in (("bco", dict(beta=0.1), {}), ("kto", dict(beta=0.1), {})):
    loss = unpaired.unpaired_loss(CFG, name, hp, opts, 32)
    b = _batch(seed=4)
    cols = _logps(ref, b, name == "kto")
    b_pre = {**b, "ref_logps": cols[0], **({"ref_kl_logps": cols[1]} if name == "kto" else {})}
    stateful = name == "bco"
    extra = unpaired.initial_extra(name, opts)
    step = jax.jit(make_step(loss, opt, stateful=stateful))
    s1, m1 = step(create_state(jax.tree.map(jnp.copy, params), opt, mesh, extra), b, ref)
    s2, m2 = step(create_state(jax.tree.map(jnp.copy, params), opt, mesh, extra), b_pre, None)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    for a, c in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=2e-6)


def test_density_ratio_classifier_recovers_a_known_ratio():
  """N(+1, 1) vs N(−1, 1) in 1-D: the true ratio p₊(x)/p₋(x) is e^{2x}."""
  rng = np.random.default_rng(0)
  x_pos = rng.normal(1.0, 1.0, (4000, 1))
  x_neg = rng.normal(-1.0, 1.0, (1000, 1))  # imbalanced on purpose: balanced weights remove the prior
  clf = udm.fit_classifier(x_pos, x_neg, steps=100, l2=0.0)
  x = np.array([[-0.5], [0.0], [0.3], [0.8]])
  p = np.asarray(udm.prob_desirable(clf, x))
  np.testing.assert_allclose(p / (1 - p), np.exp(2 * x[:, 0]), rtol=0.12)


def test_udm_weights_follow_the_prompt_families(tmp_path, models):
  """Thumbs-up only on phone/hotel prompts, thumbs-down everywhere: down rows on phone/hotel prompts
  are under-represented among the thumbs-down prompts (ratio ≈ 2 > 1), down rows on restaurant/movie
  prompts never appear among the thumbs-up ones (ratio ≈ 0, clipped to 0.5)."""
  mesh, _, _ = models
  tok = builtin.builtin_tokenizer(str(tmp_path))
  rows_ = [r for r in builtin.binary_feedback(1200, seed=0)
           if not r["label"] or builtin.prompt_category(r["prompt"]) in builtin.UP_FAMILIES]
  arrays = pipeline.tokenize_binary(tok, rows_, 16, 24)
  cfg = model_config("nano", vocab_size=tok.vocab_size)
  ref = init_params(cfg, jax.random.key(0), mesh)
  ucfg = base_config().udm
  ucfg.prompt_sample_size = 512
  clf, w, stats = udm.fit_udm(cfg, ref, arrays, mesh, ucfg, seed=0, batch_size=64)
  label = arrays["label"] > 0
  cats = np.array([builtin.prompt_category(r["prompt"]) for r in rows_])
  assert len(cats) == len(label)  # no row lost to truncation
  up_family = np.isin(cats, builtin.UP_FAMILIES)
  assert np.all(w[label] == 1.0)
  assert 1.5 < w[~label & up_family].mean() < 3.0, w[~label & up_family].mean()
  assert w[~label & ~up_family].mean() < 0.6
  assert set(clf) == {"mu", "sigma", "w", "b"}
  assert stats["udm/mean_weight_thumbs_down"] == pytest.approx(float(w[~label].mean()))


@pytest.fixture(scope="module")
def bco_run(tmp_path_factory):
  """A BCO run long enough to be killed in the middle (eval only at the end)."""
  wd = str(tmp_path_factory.mktemp("bco_full"))
  overrides = ["--config.train.steps=120", "--config.train.checkpoint_every=10", "--config.eval.every=0",
               "--config.udm.enabled=True", "--config.udm.prompt_sample_size=64"]
  p = run(wd, *overrides, config="configs/bco.py:tiny")
  return wd, overrides, p


def test_bco_from_the_cli(bco_run):
  wd, _, p = bco_run
  out = final(p)
  assert out["step"] == 120 and "eval/win_rate" in out
  train = [r for r in rows(wd) if "train/loss" in r]
  assert len(train) == 120
  deltas = [r["train/delta"] for r in train]
  assert len(set(deltas)) > 100  # a running statistic, updated every step
  assert all(0.5 <= r["train/udm_weight"] <= 10.0 for r in train)
  assert any(f.startswith("unpaired_bco_logps-") for f in os.listdir(os.path.join(wd, "ref_cache")))


def test_killed_bco_run_resumes_with_the_same_delta(bco_run, tmp_path):
  full, overrides, _ = bco_run
  wd = str(tmp_path / "run")
  # Share the uninterrupted run's SFT reference so only the BCO phase runs (and is killed) here.
  args = [*overrides, f"--config.init_from={os.path.join(full, 'sft')}"]
  killed_at(cmd(wd, *args, config="configs/bco.py:tiny"), "checkpoint@30", str(tmp_path / "log"))  # mid-write
  assert sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())[-1] == 20
  run(wd, *args, config="configs/bco.py:tiny")
  assert_same_rows(rows(wd), rows(full), "bco")


@pytest.mark.parametrize("overrides,expected", [
    (["--config.loss.delta_estimator=median"], "error: config loss.delta_estimator: 'median' is not one of"),
    (["--config.loss.name=dpo"], "error: config loss.name: 'dpo' is not an unpaired loss"),
])
def test_bad_unpaired_config_is_one_line_error(tmp_path, overrides, expected):
  p = run(str(tmp_path / "wd"), *overrides, config="configs/bco.py:tiny", check=False)
  assert p.returncode == 2
  lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("WARNING")]
  assert len(lines) == 1 and lines[0].startswith(expected), p.stderr[-2000:]


def test_kto_with_udm_is_refused(tmp_path):
  p = run(str(tmp_path / "wd"), "--config.udm.enabled=True", config="configs/kto.py:tiny", check=False)
  assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: config udm.enabled")
