"""Transformer invariants (causality, padding, KV cache), presets, and the sampler."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.models.transformer import (PRESETS, Transformer, count_params, model_config, output_matrix_DxV,
                                         positions_from_mask)
from jaxalign.sampling import filter_logits, sample
from jaxalign.models.loading import abstract_params

CFG = model_config("nano", vocab_size=61)


@pytest.fixture(scope="module")
def params():
  tok = jnp.zeros((1, 4), jnp.int32)
  return nn.meta.unbox(Transformer(CFG).init(jax.random.key(0), tok, tok, tok + 1))["params"]


def logits(params, tokens, mask):
  h, _ = Transformer(CFG).apply({"params": params}, tokens, positions_from_mask(mask), mask)
  return h @ output_matrix_DxV(CFG, params)


def test_causal(params):
  t = jax.random.randint(jax.random.key(1), (2, 10), 4, 61)
  m = jnp.ones_like(t)
  t2 = t.at[:, 6:].set((t[:, 6:] + 7) % 61)
  a, b = logits(params, t, m), logits(params, t2, m)
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


def test_left_padding_does_not_change_real_positions(params):
  t = jax.random.randint(jax.random.key(2), (1, 8), 4, 61)
  padded = jnp.concatenate([jnp.full((1, 5), 17), t], axis=1)  # pad tokens are arbitrary ids
  mask = jnp.concatenate([jnp.zeros((1, 5), jnp.int32), jnp.ones((1, 8), jnp.int32)], axis=1)
  np.testing.assert_allclose(logits(params, padded, mask)[:, 5:], logits(params, t, jnp.ones_like(t)), atol=1e-5)
  assert np.isfinite(np.asarray(logits(params, padded, mask))).all()  # fully masked rows stay finite


def test_packed_segments_are_independent(params):
  a = jax.random.randint(jax.random.key(3), (1, 5), 4, 61)
  b = jax.random.randint(jax.random.key(4), (1, 6), 4, 61)
  packed = jnp.concatenate([a, b], axis=1)
  seg = jnp.array([[1] * 5 + [2] * 6])
  pos = jnp.array([list(range(5)) + list(range(6))])
  h, _ = Transformer(CFG).apply({"params": params}, packed, pos, seg)
  out = h @ output_matrix_DxV(CFG, params)
  np.testing.assert_allclose(out[:, :5], logits(params, a, jnp.ones_like(a)), atol=1e-5)
  np.testing.assert_allclose(out[:, 5:], logits(params, b, jnp.ones_like(b)), atol=1e-5)


def test_greedy_kv_cache_matches_full_forward(params):
  prompt = jax.random.randint(jax.random.key(5), (3, 6), 4, 61)
  pmask = jnp.array([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 0, 0, 0, 1]])
  toks, mask, done = sample(params, prompt, pmask, jax.random.key(0), cfg=CFG, max_new_tokens=8,
                            eos_id=-1, pad_id=0, temperature=0.0)
  assert toks.shape == (3, 8) and int(mask.sum()) == 24 and not bool(done.any())
  full = jnp.concatenate([prompt, toks], 1)
  fmask = jnp.concatenate([pmask, mask], 1)
  np.testing.assert_array_equal(jnp.argmax(logits(params, full, fmask), -1)[:, 5:13], toks)


def test_eos_stops_rows_and_pads_after(params):
  prompt = jax.random.randint(jax.random.key(6), (4, 5), 4, 61)
  pmask = jnp.ones_like(prompt)
  toks, mask, done = sample(params, prompt, pmask, jax.random.key(1), cfg=CFG, max_new_tokens=30,
                            eos_id=3, pad_id=0, temperature=5.0)  # hot: EOS comes up soon
  toks, mask, done = map(np.asarray, (toks, mask, done))
  for row, m, d in zip(toks, mask, done):
    n = int(m.sum())
    assert m[:n].all() and not m[n:].any()  # mask is a prefix
    if d:
      assert row[n - 1] == 3 and (row[:n - 1] != 3).all() and (row[n:] == 0).all()
  assert done.any()


def test_sampling_is_a_function_of_the_key(params):
  prompt = jnp.ones((2, 4), jnp.int32) * 9
  pm = jnp.ones_like(prompt)
  kw = dict(cfg=CFG, max_new_tokens=10, eos_id=3, pad_id=0, temperature=1.0)
  a = sample(params, prompt, pm, jax.random.key(7), **kw)[0]
  b = sample(params, prompt, pm, jax.random.key(7), **kw)[0]
  c = sample(params, prompt, pm, jax.random.key(8), **kw)[0]
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()


def test_top_k_top_p_filter():
  lg = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  keep = lambda **kw: np.isfinite(np.asarray(filter_logits(lg, temperature=1.0, **kw)))[0].tolist()
  assert keep(top_k=2, top_p=1.0) == [True, True, False, False, False]
  assert keep(top_k=0, top_p=0.6) == [True, True, False, False, False]  # 0.5 < 0.6 <= 0.7
  assert keep(top_k=0, top_p=0.5) == [True, False, False, False, False]
  assert keep(top_k=0, top_p=0.01) == [True, False, False, False, False]  # never empty
  assert keep(top_k=0, top_p=1.0) == [True] * 5


def test_presets_param_counts_without_allocating():
  counts = {}
  for name in PRESETS:
    cfg = model_config(name)
    counts[name] = count_params(abstract_params(cfg), cfg)["total"]
  # 4 layers x (4·256·256 attention + 3·256·688 MLP + 2·256 norms) + 2·8192·256 tables + 256 final norm
  assert counts["tiny"] == 4 * (4 * 256 * 256 + 3 * 256 * 688 + 512) + 2 * 8192 * 256 + 256
  assert 0.9e8 < counts["small"] < 1.4e8  # "≈ 100M parameters"
  assert 1.1e9 < counts["1b"] < 1.4e9 and 6.5e9 < counts["7b"] < 7.0e9 and 6.9e10 < counts["70b"] < 7.2e10


def test_remat_and_bf16_compute_match_closely(params):
  t = jax.random.randint(jax.random.key(9), (2, 9), 4, 61)
  m = jnp.ones_like(t)
  base = logits(params, t, m)
  for kw in (dict(remat="full"), dict(remat="dots")):
    cfg = model_config("nano", vocab_size=61, **kw)
    h, _ = Transformer(cfg).apply({"params": params}, t, positions_from_mask(m), m)
    np.testing.assert_allclose(h @ output_matrix_DxV(cfg, params), base, atol=1e-5)
  cfg = model_config("nano", vocab_size=61, dtype="bfloat16")
  h, _ = Transformer(cfg).apply({"params": params}, t, positions_from_mask(m), m)
  assert h.dtype == jnp.bfloat16
  assert np.abs(np.asarray(h.astype(jnp.float32) @ output_matrix_DxV(cfg, params)) - np.asarray(base)).max() < 0.5


@pytest.mark.parametrize("remat", ["none", "full"])
def test_query_chunked_attention_equals_one_pass(params, remat):
  """`attention_chunk`: hidden states and parameter gradients equal the one-pass attention's, with packed
  segments, shared-prompt branch ids, padding and a sliding-window layer; 5 does not divide the 13 rows."""
  t = jax.random.randint(jax.random.key(3), (2, 13), 4, 61)
  seg = jnp.array([[1] * 7 + [2] * 4 + [0] * 2, [1] * 13])
  pos = jnp.array([[0, 1, 2, 3, 4, 3, 4, 0, 1, 2, 3, 0, 0], list(range(6)) + [4, 5, 6, 7, 4, 5, 6]])
  branch = jnp.array([[0, 0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 0, 0], [0] * 6 + [1] * 4 + [2] * 3])
  w = jax.random.normal(jax.random.key(4), (2, 13, CFG.d_model))

  def run(chunk):
    cfg = model_config("nano", vocab_size=61, remat=remat, layer_windows=(0, 3), attention_chunk=chunk)
    def loss(p):
      h, _ = Transformer(cfg).apply({"params": p}, t, pos, seg, branch_ids_BxL=branch)
      return jnp.sum(h * w), h
    (_, h), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return h, g

  h0, g0 = run(0)
  for chunk in (4, 5, 13):
    h, g = run(chunk)
    np.testing.assert_allclose(h, h0, atol=2e-5, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4), g, g0)


def test_query_chunked_prefill_samples_the_same_tokens(params):
  """A sampler's prefill over a prompt longer than `attention_chunk` runs chunked: same tokens."""
  prompt = jax.random.randint(jax.random.key(6), (3, 11), 4, 61)
  pmask = jnp.ones_like(prompt).at[0, :3].set(0)
  kw = dict(max_new_tokens=6, eos_id=-1, pad_id=0, temperature=1.0)
  want = sample(params, prompt, pmask, jax.random.key(1), cfg=model_config("nano", vocab_size=61,
                                                                              attention_chunk=0), **kw)
  got = sample(params, prompt, pmask, jax.random.key(1), cfg=model_config("nano", vocab_size=61,
                                                                             attention_chunk=4), **kw)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_swiglu_handwritten_backward_equals_autodiff(dtype, rtol):
  """`swiglu`'s custom VJP: value and all four gradients equal autodiff of the plain expression."""
  from jaxalign.models.transformer import swiglu
  ks = jax.random.split(jax.random.key(3), 5)
  x = jax.random.normal(ks[0], (2, 7, 16)).astype(dtype)
  w = [(jax.random.normal(k, s) * 0.3).astype(dtype) for k, s in zip(ks[1:4], [(16, 24), (16, 24), (24, 16)])]
  dy = jax.random.normal(ks[4], (2, 7, 16)).astype(dtype)
  plain = lambda x, a, b, c: (jax.nn.silu(x @ a) * (x @ b)) @ c
  y0, vjp0 = jax.vjp(plain, x, *w)
  y1, vjp1 = jax.vjp(swiglu, x, *w)
  f32 = lambda a: np.asarray(a, np.float32)
  np.testing.assert_allclose(f32(y1), f32(y0), rtol=rtol, atol=rtol)
  for g0, g1 in zip(vjp0(dy), vjp1(dy)):
    assert g1.dtype == g0.dtype and g1.shape == g0.shape
    scale = np.abs(f32(g0)).max()
    np.testing.assert_allclose(f32(g1) / scale, f32(g0) / scale, atol=rtol)
    assert np.abs(f32(g0)).max() > 0.1  # a real gradient, not zeros on both sides


def test_model_gradients_equal_with_and_without_the_swiglu_backward(params, monkeypatch):
  """The whole model's parameter gradients with `swiglu` against autodiff through the same MLP."""
  import jaxalign.models.transformer as tr
  t = jax.random.randint(jax.random.key(4), (2, 9), 4, 61)
  m = jnp.ones_like(t)
  loss = lambda p: jnp.sum(jnp.tanh(logits(p, t, m)))
  fast = jax.grad(loss)(params)
  monkeypatch.setattr(tr, "swiglu", lambda x, a, b, c: (jax.nn.silu(x @ a) * (x @ b)) @ c)
  plain = jax.grad(loss)(params)
  for path, a in jax.tree_util.tree_leaves_with_path(fast):
    b = dict(jax.tree_util.tree_leaves_with_path(plain))[path]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max(), err_msg=jax.tree_util.keystr(path))
  assert np.abs(fast["layers_0"]["mlp"]["gate"]["kernel"]).max() > 0


def test_causal_halves_equal_one_pass(params, monkeypatch):
  """Rows of ≥ 2·`_CAUSAL_HALF_MIN` positions attend in causal halves (the first half's queries against the first
  half's keys only): hidden states at real positions and parameter gradients equal the one-pass attention's, with
  packed segments, shared-prompt branch ids, padding and a sliding-window layer."""
  import jaxalign.models.transformer as tr
  t = jax.random.randint(jax.random.key(5), (2, 14), 4, 61)
  seg = jnp.array([[1] * 7 + [2] * 5 + [0] * 2, [0] * 3 + [1] * 11])
  pos = jnp.array([[0, 1, 2, 3, 4, 3, 4, 0, 1, 2, 3, 4, 0, 0], [0] * 3 + list(range(6)) + [4, 5, 6, 4, 5]])
  branch = jnp.array([[0, 0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 0, 0], [0] * 9 + [1] * 3 + [2] * 2])
  real = (seg > 0)[..., None]
  w = jax.random.normal(jax.random.key(6), (2, 14, CFG.d_model)) * real  # padding outputs carry no loss
  cfg = model_config("nano", vocab_size=61, layer_windows=(0, 3))

  def run(half_min):
    monkeypatch.setattr(tr, "_CAUSAL_HALF_MIN", half_min)
    def loss(p):
      h, _ = Transformer(cfg).apply({"params": p}, t, pos, seg, branch_ids_BxL=branch)
      return jnp.sum(h * w), h
    (_, h), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)  # traced anew: the constant is read
    return np.where(real, h, 0.0), g

  h0, g0 = run(10**9)
  h1, g1 = run(4)  # 14 ≥ 2·4: halves
  np.testing.assert_allclose(h1, h0, atol=2e-5, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4), g1, g0)
  assert np.abs(h0).max() > 0.1
