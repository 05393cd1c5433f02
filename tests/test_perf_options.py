"""Memory options that change numbers within a stated tolerance: the samplers' KV cache in bfloat16 or int8
(per-token, per-head scales) and a bfloat16 frozen reference (`model.reference_dtype`)."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli import run
from jaxalign import sampling
from jaxalign import sharding as shd
from jaxalign.models.loading import init_params
from jaxalign.models.transformer import (Transformer, dequantize_int8, init_cache, model_config, output_matrix_DxV,
                                         positions_from_mask, quantize_int8)

CFG = model_config("nano", vocab_size=64)
B, P, T = 4, 6, 10
# Stated tolerances (mean per-token KL between the next-token distributions of a float32 cache and the other):
KL_TOL = {"bfloat16": 1e-3, "int8": 1e-3}


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0), shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]))


def _decode_logprobs(params, cfg, prompt, tokens):
  """Next-token log-probs `[B, T, V]`: prefill the prompt, then feed `tokens` one at a time through the cache."""
  model, w = Transformer(cfg), output_matrix_DxV(cfg, params)
  b, p = prompt.shape
  cache = init_cache(cfg, b, p + tokens.shape[1])
  mask = jnp.ones_like(prompt)
  h, cache = model.apply({"params": params}, prompt, positions_from_mask(mask), mask, cache, prefill=True)
  out = [h[:, -1] @ w]
  for t in range(tokens.shape[1] - 1):
    h, cache = model.apply({"params": params}, tokens[:, t:t + 1], jnp.full((b, 1), p + t), jnp.ones((b, 1), jnp.int32),
                           cache)
    out.append(h[:, -1] @ w)
  return jax.nn.log_softmax(jnp.stack(out, 1).astype(jnp.float32), -1)


def test_int8_quantisation_round_trip_is_within_half_a_step():
  x = jax.random.normal(jax.random.key(1), (2, 3, 5, 16)) * jnp.arange(1, 6)[None, None, :, None]
  q, s = quantize_int8(x)
  assert q.dtype == jnp.int8 and s.shape == (2, 3, 5)
  err = jnp.abs(dequantize_int8(q, s) - x)
  assert bool(jnp.all(err <= 0.5 * s[..., None] + 1e-7))
  assert float(jnp.max(jnp.abs(q))) == 127  # each (batch, head, token) uses the full range
  zq, zs = quantize_int8(jnp.zeros((1, 1, 2, 4)))
  assert jnp.all(zq == 0) and jnp.all(zs == 1)


def test_cache_bytes_per_dtype():
  nbytes = {}
  for dt in ("float32", "bfloat16", "int8"):
    cache = init_cache(dataclasses.replace(CFG, kv_cache_dtype=dt), 8, 128)
    nbytes[dt] = sum(x.nbytes for layer in cache["layers"] for x in layer.values())
  h = CFG.hdim  # int8: 1 byte per value + a 4-byte scale per (token, head) for H values
  assert nbytes["float32"] == 2 * nbytes["bfloat16"]
  assert nbytes["float32"] / nbytes["int8"] == pytest.approx(4 * h / (h + 4))


@pytest.mark.parametrize("dt", ["bfloat16", "int8"])
def test_quantised_cache_next_token_distributions_stay_within_tolerance(params, dt):
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.integers(4, 64, (B, P)), jnp.int32)
  tokens = jnp.asarray(rng.integers(4, 64, (B, T)), jnp.int32)
  ref = _decode_logprobs(params, CFG, prompt, tokens)
  # the float32 cache is exact: the same numbers as one forward pass over the whole sequence
  seq = jnp.concatenate([prompt, tokens], 1)
  m = jnp.ones_like(seq)
  h, _ = Transformer(CFG).apply({"params": params}, seq, positions_from_mask(m), m)
  full = jax.nn.log_softmax(h[:, P - 1:P - 1 + T] @ output_matrix_DxV(CFG, params), -1)
  np.testing.assert_allclose(np.asarray(ref), np.asarray(full), atol=2e-5)
  got = _decode_logprobs(params, dataclasses.replace(CFG, kv_cache_dtype=dt), prompt, tokens)
  kl = jnp.sum(jnp.exp(ref) * (ref - got), -1)  # KL(float32 ‖ quantised) per position
  assert 0 < float(jnp.mean(kl)) < KL_TOL[dt], float(jnp.mean(kl))
  assert float(jnp.mean(jnp.argmax(ref, -1) == jnp.argmax(got, -1))) >= 0.9


@pytest.mark.parametrize("dt", ["bfloat16", "int8"])
def test_both_samplers_run_on_a_quantised_cache(params, dt):
  cfg = dataclasses.replace(CFG, kv_cache_dtype=dt)
  prompt = jnp.asarray(np.random.default_rng(2).integers(4, 64, (B, P)), jnp.int32)
  pm = jnp.ones_like(prompt)
  kw = dict(max_new_tokens=T, eos_id=2, pad_id=0, temperature=0.0)
  greedy = {c: sampling.sample(params, prompt, pm, jax.random.key(0), cfg=c, **kw)[0] for c in (CFG, cfg)}
  assert float(jnp.mean(greedy[CFG] == greedy[cfg])) >= 0.8  # greedy decoding mostly unchanged
  t, m, _ = sampling.mixture_sample(params, params, prompt, pm, jax.random.key(0), cfg=cfg, beta=0.5, **kw)
  assert t.shape == (B, T) and m.shape == (B, T)


def test_bfloat16_reference_changes_the_dpo_loss_within_tolerance(tmp_path):
  """The same tiny DPO run with a float32 and a bfloat16 frozen reference: the policy and its optimiser stay
  float32, and every logged loss moves by less than 1e-2 (the reference's log-probs round, nothing else)."""
  losses = {}
  for dt in ("float32", "bfloat16"):
    wd = str(tmp_path / dt)
    run(wd, "--config.init_from=", f"--config.model.reference_dtype={dt}", "--config.eval.every=0",
        config="configs/dpo.py:tiny")
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      losses[dt] = [json.loads(line)["train/loss"] for line in f if '"train/loss"' in line]
  assert len(losses["float32"]) == 6
  diff = np.abs(np.array(losses["float32"]) - np.array(losses["bfloat16"]))
  assert np.all(diff < 1e-2) and np.any(diff > 0), diff
