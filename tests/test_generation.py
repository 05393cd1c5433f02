"""The sampler's bucketed shapes: same tokens as the exact-shape loop, few compilations per run."""

import jax
import pytest
import jax.numpy as jnp
import numpy as np

from jaxalign import sharding as shd
from jaxalign.metrics import CompileCounter
from jaxalign.models.loading import init_params
from jaxalign.models.transformer import model_config
from jaxalign.sampling import _sample, sample

CFG = model_config("nano", vocab_size=61)


def _params():
  return init_params(CFG, jax.random.key(0), shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]))


def test_bucketed_sampling_equals_exact_shapes():
  params = _params()
  prompt = jax.random.randint(jax.random.key(5), (3, 11), 4, 61)  # 11 -> bucket 12
  pmask = jnp.array([[0, 0] + [1] * 9, [1] * 11, [0] * 10 + [1]])
  kw = dict(eos_id=3, pad_id=0, temperature=1.0, top_k=0, top_p=1.0)
  got = sample(params, prompt, pmask, jax.random.key(2), cfg=CFG, max_new_tokens=13, **kw)  # 13 -> buffer 14
  # the loop itself on one model (no β), at the exact shapes
  want = _sample((params,), prompt, pmask, jax.random.key(2), jnp.int32(13), None, cfgs=(CFG,), t_buffer=13, **kw)
  assert got[0].shape == (3, 13)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_lengths_within_a_bucket_share_one_compilation():
  params = _params()
  kw = dict(cfg=CFG, eos_id=-1, pad_id=0, temperature=0.0)
  with CompileCounter() as counter:
    for p, t in [(9, 17), (10, 18), (7, 20), (12, 19), (11, 20), (5, 17)]:
      prompt = jnp.full((2, p), 7, jnp.int32)
      toks, mask, _ = sample(params, prompt, jnp.ones_like(prompt), jax.random.key(0), max_new_tokens=t, **kw)
      assert toks.shape == (2, t) and int(mask.sum()) == 2 * t
  # prompts 9, 10 share bucket 10 and 11, 12 bucket 12 (7 and 5 are exact); every max_new_tokens
  # here runs in a buffer of 20
  assert counter.counts["jit(_sample)"] == 4


@pytest.mark.parametrize("v", [300, 1000])
def test_two_stage_categorical_draws_from_softmax(v):
  """Block-then-token draws: empirical frequencies match softmax; filtered (-inf) tokens never appear."""
  from jaxalign.sampling import categorical
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (1, v)).astype(np.float32)
  logits[0, ::7] = -np.inf  # as top-k / top-p filtering leaves them
  logits[0, v - 1] = 4.0  # the last, partly filled block must be reachable
  n = 200_000
  draws = jax.jit(jax.vmap(lambda k: categorical(k, jnp.asarray(logits))[0]))(jax.random.split(jax.random.key(1), n))
  counts = np.bincount(np.asarray(draws), minlength=v)
  assert counts.shape == (v,)  # nothing out of range
  assert counts[::7].sum() == 0
  p = np.asarray(jax.nn.softmax(jnp.asarray(logits[0])))
  # every token with enough mass for the normal approximation within 5 standard deviations of its mean,
  big = n * p > 20
  assert big.sum() > 100
  z = (counts[big] - n * p[big]) / np.sqrt(n * p[big] * (1 - p[big]))
  assert np.max(np.abs(z)) < 5.0
  # the rare ones together, and a chi-square over the frequent ones
  rare = ~big & (p > 0)
  assert abs(counts[rare].sum() - n * p[rare].sum()) < 5 * np.sqrt(n * p[rare].sum())
  chi2 = np.sum((counts[big] - n * p[big]) ** 2 / (n * p[big]))
  assert chi2 < big.sum() + 6 * np.sqrt(2 * big.sum())


def test_kv_cache_sampler_draws_what_a_loop_over_the_whole_sequence_draws():
  """Tokens equal a plain loop that runs the whole sequence through the model (no cache), filters
  (temperature, top-k) and draws step i with `categorical(fold_in(rng, i), ...)` (two-stage draw)."""
  from jaxalign.models.transformer import Transformer, output_matrix_DxV
  from jaxalign.sampling import categorical, filter_logits
  cfg = model_config("nano", vocab_size=300)  # > 256: the two-stage draw
  params = init_params(cfg, jax.random.key(1), shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  b, p, t = 3, 8, 21
  prompt = jax.random.randint(jax.random.key(4), (b, p), 4, 300)
  rng = jax.random.key(9)
  filt = dict(temperature=0.7, top_k=50, top_p=1.0)
  got, mask, _ = sample(params, prompt, jnp.ones_like(prompt), rng, cfg=cfg, max_new_tokens=t, eos_id=-1,
                        pad_id=0, **filt)
  assert int(mask.sum()) == b * t

  @jax.jit
  def next_token(seq, i):  # causal: the slots after p + i (still 0) do not change position p + i - 1
    n = seq.shape[1]
    hidden, _ = Transformer(cfg).apply({"params": params}, seq, jnp.broadcast_to(jnp.arange(n), (b, n)),
                                       jnp.ones((b, n), jnp.int32))
    logits = jax.lax.dynamic_index_in_dim(hidden, p + i - 1, axis=1, keepdims=False) @ output_matrix_DxV(cfg, params)
    return categorical(jax.random.fold_in(rng, i), filter_logits(logits, **filt))

  seq = jnp.concatenate([prompt, jnp.zeros((b, t), prompt.dtype)], axis=1)
  for i in range(t):
    seq = seq.at[:, p + i].set(next_token(seq, i))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(seq[:, p:]))
