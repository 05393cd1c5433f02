"""Reward and preference models: RM-1 / PM-1 vectors, heads, symmetrisation, sharding, end-to-end runs."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import f64  # noqa: F401  (x64 is a conftest fixture)
from jaxalign import sharding as shd
from jaxalign.data import builtin
from jaxalign.losses import reward_model as rm
from jaxalign.models import heads
from jaxalign.models.transformer import Transformer, model_config, positions_from_mask
from jaxalign.models import loading
from jaxalign.trainers import reward
from jaxalign.models.loading import init_params

CFG = model_config("nano", vocab_size=64)


def test_rm_1(x64):
  rw, rl, m = f64([1.0, 0.2], [0.0, 0.5], [1.0, 0.0])
  np.testing.assert_allclose(rm.bradley_terry(rw, rl).mean(), 0.583808465993375, rtol=1e-6)
  np.testing.assert_allclose(rm.bradley_terry(rw, rl, margin=m).mean(), 0.7737512125142363, rtol=1e-6)
  np.testing.assert_allclose(rm.bradley_terry(rw, rl, center_coef=0.01).mean(), 0.591258465993375, rtol=1e-6)
  np.testing.assert_allclose((rm.bradley_terry(rw, rl, center_coef=0.01) - rm.bradley_terry(rw, rl)).mean(),
                             0.00745, rtol=1e-6)
  met = rm.reward_metrics(rw, rl)
  np.testing.assert_allclose([met["accuracy"], met["margin"]], [0.5, 0.35], rtol=1e-6)
  assert float(rm.reward_metrics(rw, rw)["accuracy"]) == 0.0  # ties are wrong
  # dL/dr_w = −σ(−(r_w − r_l − m)); the centring term adds 2η(r_w + r_l)
  g = jax.grad(lambda x: rm.bradley_terry(x, rl, margin=m, center_coef=0.01).sum())(rw)
  np.testing.assert_allclose(g, -1 / (1 + np.exp(np.array([0.0, -0.3]))) + 0.02 * np.array([1.0, 0.7]), rtol=1e-6)


def test_pm_1(x64):
  f, = f64([0.8, 0.8])
  np.testing.assert_allclose(rm.preference_bce(f, jnp.array([1.0, 0.0])),
                             [0.3711006659477777, 1.1711006659477778], rtol=1e-6)


def test_property_pairs_relabel_the_same_pairs():
  base = builtin.preference_pairs(200, seed=3)
  assert builtin.property_preference_pairs(200, seed=3, prop="reward") == base
  for prop in ("sentiment", "politeness"):
    rows = builtin.property_preference_pairs(200, seed=3, prop=prop)
    assert [{r["chosen"], r["rejected"]} for r in rows] == [{r["chosen"], r["rejected"]} for r in base]
    gc, gr = reward._gt(rows, prop)
    untied = gc != gr
    assert 0.7 < np.mean(gc[untied] > gr[untied]) < 0.95  # noisy, but mostly right
  assert builtin.property_score("review of the phone in paris :", "the screen is good .", True, "sentiment") == 1.0
  assert builtin.property_score("review of the phone in paris :", "the screen is good .", False,
                                "politeness") == builtin.INVALID_REWARD
  with pytest.raises(ValueError):
    builtin.property_score("x", "y", True, "length")


def test_rater_margin_scale():
  np.testing.assert_allclose(reward._rater_margin(np.array([-1.0, 0.0, 0.5, 1.2, 2.5]), 1.0), [0, 0, 1 / 3, 2 / 3, 1])


def _rows(b=6, p=5, c=7, seed=0):
  rng = np.random.default_rng(seed)
  prompt = rng.integers(4, 64, (b, p)).astype(np.int32)
  pmask = (np.arange(p)[None] >= rng.integers(0, p, (b, 1))).astype(np.int32)  # left-padded, >= 1 token
  out = dict(prompt=prompt, prompt_mask=pmask)
  for k in ("chosen", "rejected"):
    out[k] = rng.integers(4, 64, (b, c)).astype(np.int32)
    out[f"{k}_mask"] = (np.arange(c)[None] < rng.integers(0, c + 1, (b, 1))).astype(np.int32)
  out["chosen_mask"][0] = 0  # an empty completion: scored at the last prompt token
  return {k: jnp.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def scalar_params():
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  return {"trunk": init_params(CFG, jax.random.key(0), mesh), "head": heads.init_head(CFG, jax.random.key(1), mesh)}


def test_sequence_score_reads_the_last_real_token(scalar_params):
  b = _rows()
  score = jax.jit(lambda p, *a: heads.sequence_score(CFG, p, *a))
  r = score(scalar_params, b["prompt"], b["prompt_mask"], b["chosen"], b["chosen_mask"])
  # by hand: the head on the hidden state at P + len − 1 (P − 1 for the empty completion)
  tokens = jnp.concatenate([b["prompt"], b["chosen"]], 1)
  mask = jnp.concatenate([b["prompt_mask"], b["chosen_mask"]], 1)
  hidden, _ = Transformer(CFG).apply({"params": scalar_params["trunk"]}, tokens, positions_from_mask(mask), mask)
  last = b["prompt"].shape[1] + b["chosen_mask"].sum(1) - 1
  want = hidden[jnp.arange(6), last] @ scalar_params["head"]["kernel"] + scalar_params["head"]["bias"]
  np.testing.assert_allclose(r, want, rtol=1e-5, atol=1e-6)
  # padding tokens (in the prompt's left padding and after the completion) change nothing
  noisy = {k: jnp.where(b[f"{k}_mask"] > 0, b[k], 63) for k in ("prompt", "chosen")}
  r2 = score(scalar_params, noisy["prompt"], b["prompt_mask"], noisy["chosen"], b["chosen_mask"])
  np.testing.assert_allclose(r2, r, rtol=1e-5, atol=1e-6)
  # values: one per completion token, 0 on padding; the first one is read where the prompt ends
  v = heads.token_values(CFG, scalar_params, b["prompt"], b["prompt_mask"], b["chosen"], b["chosen_mask"])
  assert v.shape == b["chosen"].shape and np.all(np.asarray(v)[np.asarray(b["chosen_mask"]) == 0] == 0)
  row = 1 if int(b["chosen_mask"][1, 0]) else 2
  p = b["prompt"].shape[1]
  np.testing.assert_allclose(v[row, 0], hidden[row, p - 1] @ scalar_params["head"]["kernel"]
                             + scalar_params["head"]["bias"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("readout", ["difference", "last"])
def test_preference_symmetrisation_is_exact(scalar_params, readout):
  b = _rows(b=8, seed=1)
  prob = jax.jit(lambda p, *a: heads.preference_prob(CFG, p, *a, sep_id=2, readout=readout))
  ab = np.asarray(prob(scalar_params, b["prompt"], b["prompt_mask"], b["chosen"], b["chosen_mask"], b["rejected"],
                       b["rejected_mask"]))
  ba = np.asarray(prob(scalar_params, b["prompt"], b["prompt_mask"], b["rejected"], b["rejected_mask"], b["chosen"],
                       b["chosen_mask"]))
  aa = np.asarray(prob(scalar_params, b["prompt"], b["prompt_mask"], b["chosen"], b["chosen_mask"], b["chosen"],
                       b["chosen_mask"]))
  np.testing.assert_array_equal(ab + ba, np.ones_like(ab))  # exactly, in float32
  np.testing.assert_array_equal(aa, np.full_like(aa, 0.5))
  assert np.all((ab > 0) & (ab < 1)) and np.ptp(ab) > 0
  # the un-symmetrised model is order-dependent; the symmetrised P is the spec's formula
  f_ab, f_ba = heads.both_order_logits(CFG, scalar_params, b["prompt"], b["prompt_mask"], b["chosen"],
                                       b["chosen_mask"], b["rejected"], b["rejected_mask"], sep_id=2,
                                       readout=readout)
  sig = lambda x: 1 / (1 + np.exp(-np.asarray(x, np.float64)))
  np.testing.assert_allclose(ab, 0.5 * (sig(f_ab) + 1 - sig(f_ba)), rtol=1e-6)
  assert not np.allclose(f_ab, -np.asarray(f_ba), atol=1e-3)


def test_sharded_scoring_equals_unsharded(scalar_params):
  mesh = shd.make_mesh(2, 2, 2)
  shardings = jax.tree.map(lambda x: x.sharding, loading.abstract_scalar_model(CFG, mesh))
  assert shardings["head"]["kernel"].spec == jax.sharding.PartitionSpec("fsdp")
  sharded = jax.device_put(scalar_params, shardings)
  b = _rows(b=8, seed=2)
  b_sh = shd.shard_batch({k: np.asarray(v) for k, v in b.items()}, mesh)
  fn = jax.jit(lambda p, x: reward.pair_scores(CFG, p, x))
  want = fn(scalar_params, b)
  got = fn(sharded, b_sh)
  assert len(got[0].sharding.device_set) == 8
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
  pm = jax.jit(lambda p, x: reward.pair_logits(CFG, p, x, 2))
  for g, w in zip(pm(sharded, b_sh), pm(scalar_params, b)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def _config(kind, variant="tiny", **train):
  if kind == "reward_model":
    from configs import reward_model as mod
  else:
    from configs import preference_model as mod
  c = mod.get_config(variant)
  with c.unlocked():
    c.init_from = ""  # random trunk: keeps the test short (the SFT path is the offline trainer's)
    for k, v in train.items():
      c.train[k] = v
  return c


def test_reward_model_end_to_end(tmp_path):
  from jaxalign import main
  c = _config("reward_model", steps=40, learning_rate=3e-3, batch_size=32, checkpoint_every=40)
  with c.unlocked():
    c.data.num_examples, c.reward.eval_pairs, c.eval.every = 1536, 256, 0
  wd = str(tmp_path / "rm")
  final = main.train(c, wd)
  assert final["step"] == 40
  # far above chance against the noisy labels, and close to what they allow against the ground truth
  assert final["eval/accuracy"] > 0.6, final  # 256 pairs: chance is 0.5 ± 0.03
  assert final["eval/accuracy_vs_ground_truth"] > 0.68, final
  assert 0.75 < final["eval/label_ceiling"] < 0.9, final
  for k in ("train/loss", "train/accuracy", "train/margin", "perf/tokens_per_s"):
    assert k in final, k
  # the saved model scores the same held-out pairs to the same accuracy
  m = loading.load_reward_model(wd)
  assert m.kind == "reward_model" and m.cfg.d_model == 96
  from jaxalign.data import pipeline
  tok = pipeline.load_tokenizer(c.data, wd)
  _, held, gt = reward.build_data(c, tok)
  rc, rr = jax.jit(lambda p, b: reward.pair_scores(m.cfg, p, b))(m.params, {k: jnp.asarray(v) for k, v in held.items()})
  acc = reward.pair_accuracies(np.asarray(rc - rr, np.float64), gt)
  assert acc["eval/accuracy"] == pytest.approx(final["eval/accuracy"], abs=2 / 256)


def test_preference_model_end_to_end(tmp_path):
  from jaxalign import main
  c = _config("preference_model")
  final = main.train(c, str(tmp_path / "pm"))
  assert final["step"] == 6
  for k in ("eval/accuracy", "eval/accuracy_vs_ground_truth", "eval/label_ceiling", "eval/prob_chosen",
            "train/order_gap", "train/accuracy"):
    assert k in final and np.isfinite(final[k]), k
  m = loading.load_reward_model(str(tmp_path / "pm"))
  assert m.kind == "preference_model" and m.sep_id >= 0
  assert os.path.isdir(tmp_path / "pm" / "checkpoints" / "6")


def test_bad_reward_config_is_a_user_error(tmp_path):
  from jaxalign import main
  from jaxalign.errors import UserError
  c = _config("preference_model")
  with c.unlocked():
    c.data.completion_len = 120
    c.data.prompt_len = 16
  with pytest.raises(UserError, match=re.escape("prompt | A | sep | B")):
    main.train(c, str(tmp_path / "bad"))
  c = _config("reward_model")
  with c.unlocked():
    c.reward.property = "length"
  with pytest.raises(UserError, match="reward.property"):
    main.train(c, str(tmp_path / "bad2"))
