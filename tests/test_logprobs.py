"""Chunked log-probs equal log_softmax + gather, in value, gradient and entropy; and use less memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.logprobs import sequence_logps, token_logps, token_logps_reference


def _inputs(b=3, t=7, d=16, v=1000, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(k1, (b, t, d)), jax.random.normal(k2, (d, v)) * 0.5,
          jax.random.randint(k3, (b, t), 0, v))


@pytest.mark.parametrize("chunk", [128, 333, 1000, 4096])  # divides, ragged, exact, larger than V
def test_chunked_equals_plain(chunk):
  h, w, t = _inputs()
  np.testing.assert_allclose(token_logps(h, w, t, chunk_size=chunk), token_logps_reference(h, w, t), atol=1e-5)
  ga = jax.grad(lambda h, w: token_logps(h, w, t, chunk_size=chunk).sum(), argnums=(0, 1))(h, w)
  gb = jax.grad(lambda h, w: token_logps_reference(h, w, t).sum(), argnums=(0, 1))(h, w)
  for a, b in zip(ga, gb):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("chunk", [128, 333])
def test_handwritten_backward_equals_autodiff_of_plain(chunk):
  """The custom VJP under a weighted cotangent, targets at chunk edges and in the repeated columns
  of a ragged last chunk, and bfloat16 hidden states (gradients come back in the inputs' dtypes)."""
  h, w, _ = _inputs()
  t = jnp.array([[0, 127, 128, 332, 333, 999, 700]] * 3)
  g = jax.random.normal(jax.random.key(5), t.shape)
  ga = jax.grad(lambda h, w: (token_logps(h, w, t, chunk_size=chunk) * g).sum(), argnums=(0, 1))(h, w)
  gb = jax.grad(lambda h, w: (token_logps_reference(h, w, t) * g).sum(), argnums=(0, 1))(h, w)
  for a, b in zip(ga, gb):
    np.testing.assert_allclose(a, b, atol=1e-5)
  hb = h.astype(jnp.bfloat16)
  dh, dw = jax.grad(lambda h, w: (token_logps(h, w, t, chunk_size=chunk) * g).sum(), argnums=(0, 1))(hb, w)
  assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  np.testing.assert_allclose(dw, gb[1], atol=0.05 * float(jnp.abs(gb[1]).max()))


def test_entropy_and_targets_at_chunk_edges():
  h, w, _ = _inputs(v=512)
  t = jnp.array([[0, 127, 128, 255, 256, 511, 383]] * 3)  # first/last column of chunks
  lp, ent = token_logps(h, w, t, chunk_size=128, with_entropy=True)
  np.testing.assert_allclose(lp, token_logps_reference(h, w, t), atol=1e-5)
  logits = jnp.einsum("btd,dv->btv", h, w)
  ref_ent = -jnp.sum(jax.nn.softmax(logits) * jax.nn.log_softmax(logits), -1)
  np.testing.assert_allclose(ent, ref_ent, atol=1e-4)


def test_sequence_logps_masks_nonfinite_padding():
  lp = jnp.array([[-1.0, -2.0, -jnp.inf], [-0.5, jnp.nan, -3.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 1]])
  np.testing.assert_allclose(sequence_logps(lp, mask), [-3.0, -3.5])
  np.testing.assert_allclose(sequence_logps(lp, mask, average=True), [-1.5, -1.75])


def test_chunked_memory_is_far_below_plain():
  # [8, 512] positions, 32k vocabulary (the shape), compiled memory, no execution.
  h = jax.ShapeDtypeStruct((8, 512, 768), jnp.float32)
  w = jax.ShapeDtypeStruct((768, 32000), jnp.float32)
  t = jax.ShapeDtypeStruct((8, 512), jnp.int32)

  def temp_bytes(f):
    g = jax.jit(jax.value_and_grad(lambda h, w: f(h, w).sum(), argnums=(0, 1)))
    return g.lower(h, w).compile().memory_analysis().temp_size_in_bytes

  chunked = temp_bytes(lambda h, w: token_logps(h, w, jnp.zeros((8, 512), jnp.int32)))  # default chunk
  plain = temp_bytes(lambda h, w: token_logps_reference(h, w, jnp.zeros((8, 512), jnp.int32)))
  assert plain > 8 * 512 * 32000 * 4  # the plain path holds at least one full logits tensor
  assert chunked < plain / 4, (chunked, plain)
  del t
