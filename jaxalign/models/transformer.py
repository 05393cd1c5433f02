"""Decoder-only Llama-style transformer (Flax Linen), plus the options of imported checkpoints.

Dimension alphabet used in every tensor name of the project:
  B batch, L query length, S key/cache length, D model width, N query heads,
  K key/value heads, G = N // K heads per group, H head dim, F MLP width, V vocab.

The model returns final hidden states (after the last norm), never logits:
per-token log-probs are computed from hidden states in vocabulary chunks by
`jaxalign.logprobs`, so the `[B, L, V]` tensor is never materialised in training.
Every parameter carries logical axis names (`embed`, `heads`, `kv_heads`, `mlp`,
`vocab`, ...) that `jaxalign.sharding` maps to mesh axes.

Attention masking is expressed with slots and segment ids so one code path serves
training on padded or packed rows and KV-cache decoding:
  key s is visible to query l  iff  slot[s] <= slot[l]  and  seg[s] == seg[l] != 0
  (and, in a sliding-window layer of width w, slot[s] > slot[l] - w).

The defaults of `ModelConfig` are the native Llama layout. The other fields describe
Hugging Face architectures (`jaxalign.models.hf`): q/k/v biases (Qwen2), per-head q/k
RMSNorm (Qwen3), RoPE scaling (llama3, linear, dynamic, yarn), sliding windows
(Mistral, Qwen2/3), and GPT-2 (LayerNorm with bias, learned absolute positions,
an ungated gelu MLP with biases, tied output). Each is off by default, so native
checkpoints and their parameter trees are unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_NEG = -1e30  # finite "minus infinity": fully masked rows (padding) stay NaN-free


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  head_dim: int = 0  # 0 means d_model // n_heads
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  max_len: int = 2048
  dtype: str = "float32"  # compute dtype; parameters are always float32 masters
  remat: str = "none"  # none | full | dots (per-layer rematerialisation policy)
  attention_chunk: int = 512  # rows longer than this attend in rematerialised query chunks (0: off)
  kv_cache_dtype: str = ""  # samplers' KV cache: "" (the compute dtype) | float32 | bfloat16 | int8 (per token and head)
  # Architecture options (imported checkpoints); the defaults are the native layout above.
  family: str = "llama"  # Hugging Face model_type written on export: llama | mistral | qwen2 | qwen3 | gpt2
  qkv_bias: bool = False  # biases on the q, k, v projections (Qwen2; Llama attention_bias)
  o_bias: bool = False  # bias on the output projection (Llama/Qwen3 attention_bias; GPT-2)
  mlp_bias: bool = False  # biases in the MLP (Llama mlp_bias; GPT-2)
  qk_norm: bool = False  # RMSNorm over head_dim of q and k before RoPE (Qwen3)
  rope_scaling: tuple = ()  # sorted (key, value) pairs; () is plain RoPE. See `rope_inv_freq`.
  layer_windows: tuple = ()  # per-layer sliding-window width (0 = full attention); () = all full
  norm: str = "rms"  # rms | layer (LayerNorm with bias)
  positions: str = "rope"  # rope | learned (absolute position table of max_len rows)
  mlp: str = "gated"  # gated: down(act(gate) * up) | plain: down(act(up))
  act: str = "silu"  # silu | gelu (erf) | gelu_new (tanh approximation) | relu

  @property
  def hdim(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  def window(self, layer: int) -> int:
    return int(self.layer_windows[layer]) if self.layer_windows else 0

  def validate(self) -> None:
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} not divisible by n_kv_heads={self.n_kv_heads}")
    if self.positions == "rope" and self.hdim % 2:
      raise ValueError(f"head_dim={self.hdim} must be even for RoPE")
    for field, choices in (("norm", ("rms", "layer")), ("positions", ("rope", "learned")),
                           ("mlp", ("gated", "plain")), ("act", tuple(_ACTS))):
      if getattr(self, field) not in choices:
        raise ValueError(f"{field}={getattr(self, field)!r} is not one of {', '.join(choices)}")
    if self.layer_windows and len(self.layer_windows) != self.n_layers:
      raise ValueError(f"layer_windows has {len(self.layer_windows)} entries for {self.n_layers} layers")
    if self.rope_scaling:
      rope_inv_freq(self.hdim, self.rope_theta, self.rope_scaling)  # raises on an unknown rope_type


# `nano` is the built-in task's model; `tiny`/`small` have exactly the benchmark shapes
# of the performance issue; the large ones are for `jax.eval_shape` checks.
PRESETS: dict[str, dict[str, Any]] = {
    "nano": dict(vocab_size=128, d_model=96, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=256, max_len=256),
    "tiny": dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=688),
    "small": dict(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_ff=2048),
    "500m": dict(vocab_size=32000, d_model=1024, n_layers=24, n_heads=16, n_kv_heads=16, d_ff=4096),  # ≈ 0.47B
    "1b": dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
               rope_theta=500000.0, tie_embeddings=True, max_len=8192),
    "7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008, max_len=4096),
    "70b": dict(vocab_size=128256, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672,
                rope_theta=500000.0, max_len=8192),
}


def model_config(preset: str, **overrides) -> ModelConfig:
  if preset not in PRESETS:
    raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
  cfg = ModelConfig(**{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})
  cfg.validate()
  return cfg


def _param(axes, init=nn.initializers.lecun_normal()):
  return nn.with_logical_partitioning(init, axes)


_ACTS = {
    "silu": nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


class RMSNorm(nn.Module):
  eps: float

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", _param(("norm",), nn.initializers.ones), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(x.dtype)


class LayerNorm(nn.Module):
  """LayerNorm with scale and bias (GPT-2), statistics in float32."""
  eps: float

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", _param(("norm",), nn.initializers.ones), (x.shape[-1],))
    bias = self.param("bias", _param(("norm",), nn.initializers.zeros), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
    return (y * scale + bias).astype(x.dtype)


def _norm(cfg: ModelConfig, name: str | None = None) -> nn.Module:
  cls = LayerNorm if cfg.norm == "layer" else RMSNorm
  return cls(cfg.norm_eps) if name is None else cls(cfg.norm_eps, name=name)


ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def rope_inv_freq(h: int, theta: float, scaling: tuple) -> tuple[np.ndarray, float]:
  """`(inv_freq [h/2] float32, attention_factor)` of a scaled RoPE, as Hugging Face computes them.

  `scaling` holds (key, value) pairs of the checkpoint's `rope_parameters`, already resolved
  by `jaxalign.models.hf` (no missing keys):
    linear:  inv_freq / factor.
    dynamic: plain RoPE; exact while positions stay below `max_position_embeddings`, which the
             importer makes the model's `max_len` (beyond it Hugging Face rescales on the fly).
    llama3:  low frequencies divided by `factor`, high ones kept, a smooth ramp in between.
    yarn:    a ramp between interpolated and extrapolated frequencies over the dimensions set by
             beta_fast/beta_slow, and cos/sin multiplied by `attention_factor`.
  Arithmetic is float32 throughout, step by step like the reference, so the tables agree bitwise
  or to an ulp.
  """
  s = dict(scaling)
  kind = s.get("rope_type", "default")
  f32 = np.float32
  base_inv = (f32(1.0) / (f32(theta) ** (np.arange(0, h, 2, dtype=f32) / f32(h)))).astype(f32)
  if kind in ("default", "dynamic"):
    return base_inv, 1.0
  if kind == "linear":
    return (base_inv / f32(s["factor"])).astype(f32), 1.0
  if kind == "llama3":
    factor, lo, hi = f32(s["factor"]), f32(s["low_freq_factor"]), f32(s["high_freq_factor"])
    old = f32(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old / lo, old / hi
    wavelen = (f32(2 * np.pi) / base_inv).astype(f32)
    inv = np.where(wavelen > low_wavelen, base_inv / factor, base_inv).astype(f32)
    smooth = ((old / wavelen - lo) / (hi - lo)).astype(f32)
    smoothed = ((f32(1) - smooth) * inv / factor + smooth * inv).astype(f32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, inv).astype(f32), 1.0
  if kind == "yarn":
    factor = float(s["factor"])
    orig = float(s["original_max_position_embeddings"])
    beta_fast, beta_slow = float(s["beta_fast"]), float(s["beta_slow"])

    def correction_dim(rotations):
      return (h * np.log(orig / (rotations * 2 * np.pi))) / (2 * np.log(theta))
    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s["truncate"]:
      low, high = np.floor(low), np.ceil(high)
    low, high = max(low, 0), min(high, h - 1)
    if low == high:
      high += 0.001  # the reference's guard against a zero-width ramp
    ramp = np.clip((np.arange(h // 2, dtype=f32) - f32(low)) / f32(high - low), 0, 1).astype(f32)
    pos_freqs = (f32(theta) ** (np.arange(0, h, 2, dtype=f32) / f32(h))).astype(f32)
    extrapolation = (f32(1) / pos_freqs).astype(f32)
    interpolation = (f32(1) / (f32(factor) * pos_freqs)).astype(f32)
    keep = (f32(1) - ramp).astype(f32)
    inv = (interpolation * (f32(1) - keep) + extrapolation * keep).astype(f32)
    return inv, float(s["attention_factor"])
  raise ValueError(f"rope_type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")


def rope(x_BxLxNxH: Array, positions_BxL: Array, theta: float, scaling: tuple = ()) -> Array:
  """Rotary embedding, half-split convention (as Hugging Face Llama); `scaling` see `rope_inv_freq`."""
  h = x_BxLxNxH.shape[-1]
  attention_factor = 1.0
  if scaling:
    inv_np, attention_factor = rope_inv_freq(h, theta, scaling)
    inv_freq = jnp.asarray(inv_np)
  else:
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  ang_BxLxH2 = positions_BxL[..., None].astype(jnp.float32) * inv_freq
  sin, cos = jnp.sin(ang_BxLxH2)[:, :, None], jnp.cos(ang_BxLxH2)[:, :, None]
  if attention_factor != 1.0:
    sin, cos = sin * attention_factor, cos * attention_factor
  x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)


_CAUSAL_HALF_MIN = 64  # rows of at least 2× this many positions attend in causal halves (see Attention)


class Attention(nn.Module):
  cfg: ModelConfig
  window: int = 0  # sliding-window width; 0 = full causal attention

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL, q_slot_BxL, q_seg_BxL, cache, branch_BxL=None):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    n, k, h = cfg.n_heads, cfg.n_kv_heads, cfg.hdim
    dense = lambda feats, axes, name: nn.DenseGeneral(
        feats, use_bias=cfg.qkv_bias, dtype=dt, kernel_init=_param(axes),
        bias_init=_param(axes[1:], nn.initializers.zeros), name=name)
    q_BxLxNxH = dense((n, h), ("embed", "heads", "head_dim"), "q")(x_BxLxD)
    k_BxLxKxH = dense((k, h), ("embed", "kv_heads", "head_dim"), "k")(x_BxLxD)
    v_BxLxKxH = dense((k, h), ("embed", "kv_heads", "head_dim"), "v")(x_BxLxD)
    if cfg.qk_norm:
      q_BxLxNxH = RMSNorm(cfg.norm_eps, name="q_norm")(q_BxLxNxH)
      k_BxLxKxH = RMSNorm(cfg.norm_eps, name="k_norm")(k_BxLxKxH)
    if cfg.positions == "rope":
      q_BxLxNxH = rope(q_BxLxNxH, positions_BxL, cfg.rope_theta, cfg.rope_scaling)
      k_BxLxKxH = rope(k_BxLxKxH, positions_BxL, cfg.rope_theta, cfg.rope_scaling)

    b, l = q_BxLxNxH.shape[:2]
    q_BxLxKxGxH = q_BxLxNxH.reshape(b, l, k, n // k, h)
    self_only = cache is None or cache["prefill"]  # keys are this chunk (training, or an empty cache)
    if cache is not None:
      # Decoding: write this chunk at cache["index"]. The cache is head-major (B, K, S, H), the layout
      # both attention products read, so XLA updates it in place instead of transposing every
      # layer's whole cache at every step.
      idx = cache["index"]
      put = lambda c, x: jax.lax.dynamic_update_slice_in_dim(c, x.astype(c.dtype), idx, axis=2)
      k_new, v_new = k_BxLxKxH.transpose(0, 2, 1, 3), v_BxLxKxH.transpose(0, 2, 1, 3)
      if "k_scale" in cache:  # int8 cache: symmetric per-token, per-head scales; dequantised when read
        (kq, ks), (vq, vs) = quantize_int8(k_new), quantize_int8(v_new)
        new_cache = dict(k=put(cache["k"], kq), v=put(cache["v"], vq), k_scale=put(cache["k_scale"], ks),
                         v_scale=put(cache["v_scale"], vs))
        keys_BxKxSxH = dequantize_int8(new_cache["k"], new_cache["k_scale"])
        values_BxKxSxH = dequantize_int8(new_cache["v"], new_cache["v_scale"])
      else:
        keys_BxKxSxH, values_BxKxSxH = put(cache["k"], k_new), put(cache["v"], v_new)
        new_cache = dict(k=keys_BxKxSxH, v=values_BxKxSxH)
    else:
      new_cache = None
    if self_only:  # a prefill attends within the chunk: the rest of the cache is empty
      keys, values, kv_layout = k_BxLxKxH, v_BxLxKxH, "BSKH"
      kv_slot_BxS, kv_seg_BxS, kv_branch_BxS = q_slot_BxL, q_seg_BxL, branch_BxL
    else:  # attend over the whole cache
      keys, values, kv_layout = keys_BxKxSxH.astype(dt), values_BxKxSxH.astype(dt), "BKSH"
      s = keys.shape[2]
      kv_slot_BxS = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
      kv_seg_BxS, kv_branch_BxS = cache["segment_ids"], None

    # Head-major operands: one batched matmul per (row, kv head) over the G·C query rows of its group. On the CPU
    # this runs the attention products ≈ 20% faster than the 5-D `BLKGH,BSKH->BKGLS` form, which XLA lowers with
    # a transposed copy per product.
    if kv_layout == "BSKH":
      keys, values = keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3)
    g = n // k

    def attend(q_BxCxKxGxH, q_slot_BxC, q_seg_BxC, q_branch_BxC, n_keys=None):
      """The queries' outputs against the first `n_keys` keys (None: all)."""
      keys_, values_, kv_slot_BxS_, kv_seg_BxS_, kv_branch_BxS_ = (
          (keys, values, kv_slot_BxS, kv_seg_BxS, kv_branch_BxS) if n_keys is None else
          (keys[:, :, :n_keys], values[:, :, :n_keys], kv_slot_BxS[:, :n_keys], kv_seg_BxS[:, :n_keys],
           None if kv_branch_BxS is None else kv_branch_BxS[:, :n_keys]))
      c = q_BxCxKxGxH.shape[1]
      q_BxKxMxH = q_BxCxKxGxH.transpose(0, 2, 3, 1, 4).reshape(b, k, g * c, h)
      scores_BxKxMxS = jnp.einsum("BKMH,BKSH->BKMS", q_BxKxMxH, keys_,
                                  preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(h))
      visible_BxCxS = ((kv_slot_BxS_[:, None, :] <= q_slot_BxC[:, :, None])
                       & (kv_seg_BxS_[:, None, :] == q_seg_BxC[:, :, None])
                       & (kv_seg_BxS_[:, None, :] != 0))
      if self.window:
        visible_BxCxS &= kv_slot_BxS_[:, None, :] > q_slot_BxC[:, :, None] - self.window
      if q_branch_BxC is not None:  # shared-prompt packing: the prompt (0) or the query's own branch
        visible_BxCxS &= (kv_branch_BxS_[:, None, :] == 0) | (kv_branch_BxS_[:, None, :] == q_branch_BxC[:, :, None])
      s = visible_BxCxS.shape[-1]
      visible_Bx1xMxS = jnp.broadcast_to(visible_BxCxS[:, None, None], (b, 1, g, c, s)).reshape(b, 1, g * c, s)
      scores_BxKxMxS = jnp.where(visible_Bx1xMxS, scores_BxKxMxS, _NEG)
      probs = jax.nn.softmax(scores_BxKxMxS, axis=-1).astype(dt)
      out_BxKxMxH = jnp.einsum("BKMS,BKSH->BKMH", probs, values_)
      return out_BxKxMxH.reshape(b, k, g, c, h).transpose(0, 3, 1, 2, 4)

    chunk = self.cfg.attention_chunk
    if self_only and 0 < chunk < l:
      # Long rows (training, or a sampler's prefill): queries in chunks of `chunk`, each chunk
      # rematerialised in the backward pass, so the scores and probabilities live for one chunk at a time
      # ([B, N, chunk, S] instead of [B, N, L, S]); every query still sees all its keys, so the numbers
      # are those of one pass.
      nc = -(-l // chunk)
      pad = lambda x: None if x is None else jnp.pad(x, [(0, 0), (0, nc * chunk - l)] + [(0, 0)] * (x.ndim - 2))
      split = lambda x: None if x is None else jnp.moveaxis(x.reshape(b, nc, chunk, *x.shape[2:]), 1, 0)
      xs = tuple(split(pad(x)) for x in (q_BxLxKxGxH, q_slot_BxL, q_seg_BxL, branch_BxL))
      outs = jax.lax.map(lambda a: jax.checkpoint(attend, prevent_cse=False)(*a), xs)  # [nc, B, chunk, K, G, H]
      out_BxLxKxGxH = jnp.moveaxis(outs, 0, 1).reshape(b, nc * chunk, k, n // k, h)[:, :l]
    elif self_only and l >= 2 * _CAUSAL_HALF_MIN and l % 2 == 0:
      # Causal halves: here slots are row indices (keys at slot > the query's are never visible), so the first
      # half of the queries needs only the first half of the keys; the masked upper-right block is never computed.
      # The attention products and softmax do 3/4 of the work (tiny layer fwd+bwd 55 → 38 ms); same numbers.
      half = l // 2
      sl = lambda x, a, z: None if x is None else x[:, a:z]
      out_BxLxKxGxH = jnp.concatenate(
          [attend(q_BxLxKxGxH[:, :half], sl(q_slot_BxL, 0, half), sl(q_seg_BxL, 0, half),
                  sl(branch_BxL, 0, half), n_keys=half),
           attend(q_BxLxKxGxH[:, half:], sl(q_slot_BxL, half, l), sl(q_seg_BxL, half, l), sl(branch_BxL, half, l))],
          axis=1)
    else:
      out_BxLxKxGxH = attend(q_BxLxKxGxH, q_slot_BxL, q_seg_BxL, branch_BxL)
    out_BxLxNxH = out_BxLxKxGxH.reshape(b, l, n, h)
    y_BxLxD = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=cfg.o_bias, dtype=dt,
                              kernel_init=_param(("heads", "head_dim", "embed")),
                              bias_init=_param(("embed",), nn.initializers.zeros), name="o")(out_BxLxNxH)
    return y_BxLxD, new_cache


class MLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    dense = lambda feats, axes, name: nn.Dense(feats, use_bias=cfg.mlp_bias, dtype=dt, kernel_init=_param(axes),
                                               bias_init=_param(axes[1:], nn.initializers.zeros), name=name)
    act = _ACTS[cfg.act]
    if cfg.mlp == "plain":
      up_BxLxF = dense(cfg.d_ff, ("embed", "mlp"), "up")(x_BxLxD)
      return dense(cfg.d_model, ("mlp", "embed"), "down")(act(up_BxLxF))
    gate, up, down = (dense(cfg.d_ff, ("embed", "mlp"), "gate"), dense(cfg.d_ff, ("embed", "mlp"), "up"),
                      dense(cfg.d_model, ("mlp", "embed"), "down"))
    if cfg.act == "silu" and not cfg.mlp_bias:  # SwiGLU: the hand-written backward below
      kernels = []
      for m, x in ((gate, x_BxLxD), (up, x_BxLxD), (down, jnp.zeros((0, cfg.d_ff), dt))):
        m(x[:0])  # creates the module's params exactly as a call does (zero rows: no compute)
        kernels.append(nn.meta.unbox(m.variables["params"]["kernel"]).astype(dt))
      return swiglu(x_BxLxD.astype(dt), *kernels)
    return down(act(gate(x_BxLxD)) * up(x_BxLxD))


@jax.custom_vjp
def swiglu(x_BxLxD: Array, w_gate_DxF: Array, w_up_DxF: Array, w_down_FxD: Array) -> Array:
  """`down(silu(x @ w_gate) * (x @ w_up))` with a hand-written backward.

  Autodiff's backward writes each of d gate and d up transposed (`[F, B·L]`) for its weight-gradient matmul, a
  layout copy that took ≈ 7% of the tiny DPO step on the CPU; here both are one `[B·L, 2F]` array and one matmul
  gives both weight gradients (another gives d x). The MLP's forward and backward together: 125–138 → 89–97 ms at
  tiny shapes (4096 × 256 × 688). The numbers are autodiff's up to float rounding (tests/test_model.py).
  """
  return _swiglu_fwd(x_BxLxD, w_gate_DxF, w_up_DxF, w_down_FxD)[0]


def _swiglu_fwd(x, w_gate, w_up, w_down):
  g, u = x @ w_gate, x @ w_up
  return (jax.nn.silu(g) * u) @ w_down, (x, g, u, w_gate, w_up, w_down)


def _swiglu_bwd(res, dy_BxLxD):
  x, g, u, w_gate, w_up, w_down = res
  s = jax.nn.sigmoid(g)
  dh = dy_BxLxD @ w_down.T
  d_down = jnp.einsum("...F,...D->FD", g * s * u, dy_BxLxD)
  # d silu(g)/dg = s·(1 + g·(1 − s))
  dgu = jnp.concatenate([dh * u * s * (1 + g * (1 - s)), dh * g * s], axis=-1)
  d_gate_up = jnp.einsum("...D,...F->DF", x, dgu)
  dx = dgu @ jnp.concatenate([w_gate, w_up], axis=1).T
  f = w_gate.shape[1]
  return dx, d_gate_up[:, :f], d_gate_up[:, f:], d_down


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class Block(nn.Module):
  cfg: ModelConfig
  window: int = 0

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL, q_slot_BxL, q_seg_BxL, cache, branch_BxL=None):
    attn_out, new_cache = Attention(self.cfg, self.window, name="attn")(
        _norm(self.cfg, "attn_norm")(x_BxLxD), positions_BxL, q_slot_BxL, q_seg_BxL, cache, branch_BxL)
    x_BxLxD = x_BxLxD + attn_out
    x_BxLxD = x_BxLxD + MLP(self.cfg, name="mlp")(_norm(self.cfg, "mlp_norm")(x_BxLxD))
    return x_BxLxD, new_cache


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nn.Module):
  """`__call__(tokens, positions, segment_ids, cache=None, prefill=False) -> (hidden_BxLxD, cache)`.

  segment_ids: 0 marks padding; equal non-zero ids attend to each other (packing).
  cache: None for training, else `init_cache(...)` output; decoding writes the new
  tokens at `cache["index"]` and returns the advanced cache.
  prefill: the cache is empty (fresh from `init_cache`), so the chunk attends only to
  itself, as in training, instead of over the whole cache buffer.
  branch_ids: shared-prompt packing (training only): 0 on a prompt, 1 and 2 on the two
  completions that follow it in one segment; a token sees branch 0 and its own branch.
  """
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                          embedding_init=_param(("vocab", "embed"), nn.initializers.normal(1.0)))
    block = Block
    if cfg.remat != "none":
      block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=True)
    if cfg.positions == "learned":
      self.pos_embed = nn.Embed(cfg.max_len, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                                embedding_init=_param(("length", "embed"), nn.initializers.normal(0.02)))
    self.layers = [block(cfg, cfg.window(i), name=f"layers_{i}") for i in range(cfg.n_layers)]
    self.final_norm = _norm(cfg)
    if not cfg.tie_embeddings:
      self.lm_head = self.param("lm_head", _param(("embed", "vocab")), (cfg.d_model, cfg.vocab_size))

  def __call__(self, tokens_BxL, positions_BxL, segment_ids_BxL, cache=None, prefill=False, branch_ids_BxL=None):
    x_BxLxD = self.embed(tokens_BxL)
    if self.cfg.positions == "learned":
      x_BxLxD = x_BxLxD + self.pos_embed(positions_BxL)
    if cache is None:
      q_slot_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32), tokens_BxL.shape)
      seg_cache = None
    else:
      q_slot_BxL = cache["index"] + jnp.broadcast_to(
          jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32), tokens_BxL.shape)
      seg_cache = jax.lax.dynamic_update_slice_in_dim(
          cache["segment_ids"], segment_ids_BxL.astype(jnp.int32), cache["index"], axis=1)
    new_layers = []
    for i, layer in enumerate(self.layers):
      layer_cache = None if cache is None else dict(
          cache["layers"][i], index=cache["index"], segment_ids=seg_cache, prefill=prefill)
      x_BxLxD, c = layer(x_BxLxD, positions_BxL, q_slot_BxL, segment_ids_BxL, layer_cache, branch_ids_BxL)
      new_layers.append(c)
    hidden_BxLxD = self.final_norm(x_BxLxD)
    if cache is None:
      return hidden_BxLxD, None
    return hidden_BxLxD, dict(layers=new_layers, segment_ids=seg_cache,
                              index=cache["index"] + tokens_BxL.shape[1])

  def output_matrix(self) -> Array:
    """`[D, V]` projection from hidden states to logits."""
    return self.embed.embedding.T if self.cfg.tie_embeddings else self.lm_head


def output_matrix_DxV(cfg: ModelConfig, params) -> Array:
  """The unembedding matrix from a params tree, without running the module."""
  p = params["params"] if "params" in params else params
  return p["embed"]["embedding"].T if cfg.tie_embeddings else p["lm_head"]


def quantize_int8(x_BxKxLxH: Array) -> tuple[Array, Array]:
  """Symmetric int8 per (batch, head, token): `(q [B, K, L, H] int8, scale [B, K, L] float32)`, x ≈ q·scale."""
  x = x_BxKxLxH.astype(jnp.float32)
  scale = jnp.max(jnp.abs(x), axis=-1) / 127.0
  scale = jnp.where(scale > 0, scale, 1.0)
  return jnp.clip(jnp.round(x / scale[..., None]), -127, 127).astype(jnp.int8), scale


def dequantize_int8(q_BxKxSxH: Array, scale_BxKxS: Array) -> Array:
  return q_BxKxSxH.astype(jnp.float32) * scale_BxKxS[..., None]


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> dict:
  """An empty KV cache of `length` positions; its dtype is `dtype`, else `cfg.kv_cache_dtype`, else the compute
  dtype. int8 keeps per-token, per-head float32 scales beside the int8 keys and values (CacheGen-style)."""
  dt = jnp.dtype(dtype or cfg.kv_cache_dtype or cfg.dtype)
  shape = (batch, cfg.n_kv_heads, length, cfg.hdim)  # head-major: see Attention
  if dt == jnp.int8:
    layer = lambda: dict(k=jnp.zeros(shape, dt), v=jnp.zeros(shape, dt), k_scale=jnp.ones(shape[:3], jnp.float32),
                         v_scale=jnp.ones(shape[:3], jnp.float32))
  else:
    layer = lambda: dict(k=jnp.zeros(shape, dt), v=jnp.zeros(shape, dt))
  return dict(layers=[layer() for _ in range(cfg.n_layers)],
              segment_ids=jnp.zeros((batch, length), jnp.int32), index=jnp.zeros((), jnp.int32))


def positions_from_mask(mask_BxL: Array) -> Array:
  """Position ids that start at 0 on the first real token (left padding is allowed)."""
  return jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=-1) - 1, 0)


def count_params(params, cfg: ModelConfig) -> dict[str, int]:
  """Total parameters and the `N` used for MFU (non-embedding + output projection)."""
  leaves = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(params))
  total = sum(int(x.size) for _, x in leaves)
  embed = cfg.vocab_size * cfg.d_model
  # Tied: the table is the output projection, so it counts once. Untied: the input
  # table is a gather (no FLOPs), the lm_head counts.
  n_flops = total if cfg.tie_embeddings else total - embed
  if cfg.positions == "learned":  # the position table is a gather too
    n_flops -= cfg.max_len * cfg.d_model
  return dict(total=total, flops_params=n_flops)
