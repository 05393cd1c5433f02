"""Online IPO / IPO-MD / Nash-MD-PG: spec vectors, the mixture sampler, one sharded step, CLI runs, resume."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli import assert_same_rows, cmd, final, killed_at, rows, run
from conftest import f64
from jaxalign import losses, sampling
from jaxalign import sharding as shd
from jaxalign.config import base_config
from jaxalign.metrics import CompileCounter
from jaxalign.models.loading import abstract_params, init_params
from jaxalign.models.transformer import model_config
from jaxalign.optim import make_optimizer
from jaxalign.sampling import mix_logits, mixture_logprobs, mixture_sample
from jaxalign.scoring import completion_token_logps
from jaxalign.trainers import online
from jaxalign.trainers.state import create_state, jit_step, make_step

CFG = model_config("nano", vocab_size=64)
EOS, PAD = 3, 0


# ---- spec vectors (algorithms.md §4.8), float64 ----

def test_nash_1_mixture_step(x64):
  pol, ref = f64([2.0, 1.0, 0.0], [0.0, 1.0, 2.0])
  want = [0.506480391055654, 0.3071958857184984, 0.18632372322584756]
  np.testing.assert_allclose(np.exp(losses.geometric_mixture_logprobs(pol, ref, 0.25)), want, rtol=1e-6)
  # mixing normalised log-probs gives the same distribution; so does the sampler's mixing
  lp = losses.geometric_mixture_logprobs(jax.nn.log_softmax(pol), jax.nn.log_softmax(ref), 0.25)
  np.testing.assert_allclose(np.exp(lp), want, rtol=1e-6)
  np.testing.assert_allclose(jax.nn.softmax(mix_logits(pol, ref, 0.25)), want, rtol=1e-6)
  # temperature applies after mixing: softmax(mix / 0.5)
  t = jax.nn.softmax(sampling.filter_logits(mix_logits(pol, ref, 0.25)[None], temperature=0.5, top_k=0,
                                            top_p=1.0))[0]
  np.testing.assert_allclose(t, [0.66524, 0.24473, 0.09003], atol=1e-5)


def test_nash_2_trl_loss_and_gradient(x64):
  lpi, lref = f64([-0.5, -1.0, -0.2], [-0.7, -0.8, -0.6])
  mask = jnp.ones((1, 3))
  p = jax.nn.sigmoid(jnp.float64(1.2 - 0.4))
  loss = lambda lp: losses.nash_md_pg(lp, lref[None], mask, p[None], kl_coef=0.1, kl_estimator="token")[0]
  np.testing.assert_allclose(loss(lpi[None]), 0.32495661791694125, rtol=1e-6)
  np.testing.assert_allclose(losses.sequence_kl(lpi[None], lref[None], mask), [0.4], rtol=1e-6)
  np.testing.assert_allclose(jax.grad(loss)(lpi[None])[0], [-0.16997, -0.20997, -0.14997], atol=1e-5)
  # sequence estimator: each token's coefficient uses the reward-to-go Σ_{s≥t}(ℓ_θ − ℓ_ref)
  seq = lambda lp: losses.nash_md_pg(lp, lref[None], mask, p[None], kl_coef=0.1, kl_estimator="sequence")[0]
  togo = np.array([0.4, 0.2, 0.4])
  np.testing.assert_allclose(jax.grad(seq)(lpi[None])[0], 0.1 * togo - (float(p) - 0.5), rtol=1e-6)
  # padding contributes nothing
  padded = losses.nash_md_pg(jnp.array([[-0.5, -1.0, -0.2, -9.0]]), jnp.array([[-0.7, -0.8, -0.6, 3.0]]),
                             jnp.array([[1, 1, 1, 0]]), p[None], kl_coef=0.1)
  np.testing.assert_allclose(padded, [0.32495661791694125], rtol=1e-6)


def test_ipomd_1(x64):
  # h = ρ(a) − ρ(b) = 2 built from log-probs; τ = 0.1, P = 0.8
  pa, ra, pb, rb, p = f64([-1.0], [-2.5], [-3.0], [-2.5], [0.8])
  np.testing.assert_allclose(losses.online_ipo(pa, pb, ra, rb, p, tau=0.1), [1.0], rtol=1e-6)
  np.testing.assert_allclose(losses.online_ipo(pa, pb, ra, rb, p, tau=0.1, label=jnp.ones(1)), [9.0], rtol=1e-6)
  np.testing.assert_allclose(losses.online_ipo(pa, pb, ra, rb, p, tau=0.1, label=jnp.zeros(1)), [49.0],
                             rtol=1e-6)
  # length-normalised: ρ/n; IPO-1's averaged margin 0.41 at τ = 1 with P = 1 (target ½) → 0.0081
  got = losses.online_ipo(*f64([-5.0], [-7.5], [-6.0], [-6.7]), f64([1.0])[0], tau=1.0,
                          length_normalize=True, lengths_a=jnp.array([4]), lengths_b=jnp.array([5]))
  np.testing.assert_allclose(got, [0.0081], rtol=1e-6)


# ---- the mixture sampler on a tiny model ----

@pytest.fixture(scope="module")
def models():
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  pol = init_params(CFG, jax.random.key(0), mesh)
  ref = init_params(CFG, jax.random.key(1), mesh)
  rng = np.random.default_rng(0)
  prompt = rng.integers(4, 64, (4, 5)).astype(np.int32)
  mask = (np.arange(5)[None] >= np.array([[0], [1], [2], [0]])).astype(np.int32)
  prompt = np.where(mask > 0, prompt, PAD)
  return pol, ref, prompt, mask


def test_mixture_logprobs_are_the_models_log_probs_at_beta_0_and_1(models):
  """The reference distribution: β = 0 / 1 give the training log-probs of policy / reference."""
  pol, ref, prompt, mask = models
  tokens, tmask, _ = mixture_sample(pol, ref, prompt, mask, jax.random.key(3), cfg=CFG, beta=0.3, max_new_tokens=7,
                                    eos_id=EOS, pad_id=PAD)
  on = np.asarray(tmask) > 0
  for beta, params in ((0.0, pol), (1.0, ref)):
    lps = mixture_logprobs(pol, ref, prompt, mask, tokens, cfg=CFG, beta=beta)
    got = jnp.take_along_axis(lps, tokens[..., None], -1)[..., 0]
    want = completion_token_logps(CFG, params, prompt, mask, tokens, tmask)
    np.testing.assert_allclose(np.asarray(got)[on], np.asarray(want)[on], atol=2e-5)


@pytest.mark.parametrize("filt", [dict(temperature=1.0, top_k=0, top_p=1.0),
                                  dict(temperature=0.7, top_k=20, top_p=0.9)])
def test_mixture_sampler_draws_from_the_formula_at_every_step(models, filt):
  """Every sampled token is the draw of `mixture_logprobs` (teacher forced, no cache), filtered after
  mixing, under the sampler's key for its step, `fold_in(key, i)`: the whole mixture at every step."""
  pol, ref, prompt, mask = models
  key = jax.random.key(3)
  tokens, tmask, _ = mixture_sample(pol, ref, prompt, mask, key, cfg=CFG, beta=0.3, max_new_tokens=7, eos_id=EOS,
                                    pad_id=PAD, **filt)
  tokens, tmask = np.asarray(tokens), np.asarray(tmask)
  assert tmask.sum() > 4
  lps = mixture_logprobs(pol, ref, prompt, mask, tokens, cfg=CFG, beta=0.3)
  for i in range(tokens.shape[1]):
    want = sampling.categorical(jax.random.fold_in(key, i), sampling.filter_logits(lps[:, i], **filt))
    on = tmask[:, i] > 0
    np.testing.assert_array_equal(tokens[on, i], np.asarray(want)[on])


def _chi2(counts_BxV, p_BxV):
  """Pearson's statistic and its degrees of freedom, over the cells expected at least 20 times per row."""
  expected = counts_BxV.sum(-1, keepdims=True) * p_BxV
  big = expected >= 20
  return float(np.sum(np.where(big, (counts_BxV - expected) ** 2 / np.maximum(expected, 1e-9), 0.0))), int(big.sum())


def test_mixture_first_token_frequencies_are_the_formula(models):
  """Over many rows, first tokens fall as `exp(mixture_logprobs)` says (a chi-square within 6 standard
  deviations), and the same test rejects the policy's and the reference's own distributions."""
  pol, ref, prompt, mask = models
  n, beta = 4096, 0.3
  toks, _, _ = mixture_sample(pol, ref, np.repeat(prompt, n, 0), np.repeat(mask, n, 0), jax.random.key(4), cfg=CFG,
                              beta=beta, max_new_tokens=1, eos_id=EOS, pad_id=PAD)
  counts = np.stack([np.bincount(r, minlength=CFG.vocab_size) for r in np.asarray(toks)[:, 0].reshape(-1, n)])
  step0 = np.zeros((len(prompt), 1), np.int32)  # step 0's distribution depends on the prompt alone
  first = lambda b: np.exp(np.asarray(mixture_logprobs(pol, ref, prompt, mask, step0, cfg=CFG, beta=b))[:, 0])
  chi2, dof = _chi2(counts, first(beta))
  assert dof > 100 and chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)
  for other in (0.0, 1.0):  # it really is a mixture: neither model's own distribution passes
    chi2, dof = _chi2(counts, first(other))
    assert chi2 > dof + 6 * np.sqrt(2 * dof), (other, chi2, dof)


def test_beta_0_and_1_reproduce_policy_and_reference_samples(models):
  pol, ref, prompt, mask = models
  # with every sampling filter on (temperature, top-k, top-p: applied after mixing, as in `sample`)
  common = dict(cfg=CFG, max_new_tokens=9, eos_id=EOS, pad_id=PAD, temperature=0.7, top_k=20, top_p=0.9)
  for beta, params in ((0.0, pol), (1.0, ref)):
    for seed in range(3):
      key = jax.random.key(seed)
      got = mixture_sample(pol, ref, prompt, mask, key, beta=beta, **common)
      want = sampling.sample(params, prompt, mask, key, **common)
      for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  with CompileCounter() as counter:  # β is traced: the loop compiled for β = 0 and 1 serves β = 0.5
    half = mixture_sample(pol, ref, prompt, mask, jax.random.key(0), beta=0.5, **common)[0]
  assert "jit(_sample)" not in counter.counts
  assert not np.array_equal(np.asarray(half), np.asarray(sampling.sample(pol, prompt, mask, jax.random.key(0),
                                                                         **common)[0]))


# ---- one update step: 8-device mesh == one device ----

def _online_config(method):
  c = base_config()
  c.online.method = method
  c.online.tau, c.online.kl_coef = 0.5, 0.1
  c.online.kl_estimator = "sequence"
  return c


def _online_batch(b=8, p=6, c=5):
  rng = np.random.default_rng(1)
  out = dict(prompt=rng.integers(4, 64, (b, p)).astype(np.int32),
             prompt_mask=(np.arange(p)[None] >= rng.integers(0, 3, (b, 1))).astype(np.int32))
  for k in ("a", "b"):
    out[k] = rng.integers(4, 64, (b, c)).astype(np.int32)
    out[f"{k}_mask"] = (np.arange(c)[None] < rng.integers(1, c + 1, (b, 1))).astype(np.int32)
  out["pref"] = rng.random(b).astype(np.float32)
  out["label"] = (rng.random(b) < out["pref"]).astype(np.float32)
  return out


def _step(method, mesh):
  tcfg = base_config().train
  tcfg.optimizer, tcfg.learning_rate, tcfg.warmup_steps = "sgd", 1.0, 0
  one = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  shardings = shd.param_shardings(abstract_params(CFG), mesh)
  params = jax.device_put(init_params(CFG, jax.random.key(0), one), shardings)
  ref = jax.device_put(init_params(CFG, jax.random.key(1), one), shardings)
  opt = make_optimizer(tcfg)
  state = create_state(params, opt, mesh)
  batch = _online_batch()
  b_sh = {k: shd.batch_sharding(mesh, v.ndim, 8) for k, v in batch.items()}
  loss_fn = online.online_loss(_online_config(method), CFG, 16)
  frozen = {"reference": ref}  # the step contract: frozen models by name
  step = jit_step(make_step(loss_fn, opt), state, b_sh, jax.tree.map(lambda x: x.sharding, frozen), mesh)
  state, metrics = step(state, shd.shard_batch(batch, mesh), frozen)
  return jax.device_get(metrics), jax.device_get(state.params)


@pytest.mark.parametrize("method", ["ipo_md", "nash_md"])
def test_sharded_online_step_equals_single_device(method):
  m1, p1 = _step(method, shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  m8, p8 = _step(method, shd.make_mesh(2, 2, 2))
  for k in m1:
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)
  assert int(m1["nonfinite"]) == 0 and float(m1["grad_norm"]) > 0


# ---- the CLI: every config end to end (random init: quality is not the point), resume after SIGKILL ----

FAST = ["--config.init_from=", "--config.eval.samples_per_prompt=1", "--config.eval.max_new_tokens=8",
        "--config.data.completion_len=8"]


@pytest.mark.parametrize("config,extra", [
    ("online_ipo", ["--config.online.target=hard", "--config.online.length_normalize=True"]),
    ("nash_md", ["--config.online.kl_estimator=sequence"]),
])
def test_config_runs_from_the_cli(tmp_path, config, extra):
  wd = str(tmp_path / config)
  out = final(run(wd, *FAST, *extra, config=f"configs/{config}.py:tiny"))
  assert out["step"] == 6 and 0.0 <= out["eval/win_rate"] <= 1.0
  train = [r for r in rows(wd) if "train/loss" in r]
  assert len(train) == 6 and all(0.0 < r["train/pref_prob"] < 1.0 for r in train)
  assert "train/kl" in train[0] if config == "nash_md" else "train/margin" in train[0]


def test_killed_ipo_md_run_resumes_on_the_same_trajectory(tmp_path):
  args = [*FAST, "--config.train.steps=16", "--config.train.checkpoint_every=4", "--config.eval.every=0"]
  full = str(tmp_path / "full")
  out = final(run(full, *args, config="configs/ipo_md.py:tiny"))  # also the IPO-MD CLI smoke run
  assert out["step"] == 16 and "eval/win_rate" in out
  wd = str(tmp_path / "killed")
  killed_at(cmd(wd, *args, config="configs/ipo_md.py:tiny"), "step@10", str(tmp_path / "log"))  # step 10 in flight
  assert max(r["step"] for r in rows(wd)) < 10
  run(wd, *args, config="configs/ipo_md.py:tiny")
  assert_same_rows(rows(wd), rows(full), "ipo_md")


def test_bad_mixture_coef_is_one_line_error(tmp_path):
  p = run(str(tmp_path / "wd"), *FAST, "--config.online.mixture_coef=1.5", config="configs/ipo_md.py:tiny",
          check=False)
  assert p.returncode == 2
  lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("WARNING")]
  assert len(lines) == 1 and lines[0].startswith("error: config online.mixture_coef"), p.stderr[-2000:]
