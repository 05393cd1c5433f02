"""Tokens/s of the jitted KV-cache sampler, next to `transformers`' `generate` on the same model.

  python experiments/bench/generate.py --preset tiny --batch 8 --new_tokens 128 --json
  python experiments/bench/generate.py --preset small --batch 8 --new_tokens 128 --hf --json

A random-init model of the preset; `jaxalign.sampling.sample` draws `--new_tokens` tokens per
row (no EOS: every row runs to the end) after `--prompt_len`-token prompts, plain sampling
(temperature 1, no top-k/top-p). With `--hf` (torch + transformers installed) the same
weights are exported with `jaxalign.models.save_hf`, loaded with `from_pretrained` and run
through `generate(do_sample=True, top_k=0, top_p=1.0)` with its KV cache, forced to the same
length. The two alternate `--repeats` times in one process; medians are reported. The first
jaxalign call (compilation) is reported separately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from _common import cpu_seconds, print_result  # noqa: E402

import jaxalign  # noqa: E402

jaxalign.set_xla_cpu_flags()  # as jaxalign.main does, before jax starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxalign import sharding as shd  # noqa: E402
from jaxalign.metrics import CompileCounter, peak_rss_mb  # noqa: E402
from jaxalign.models.transformer import count_params, model_config  # noqa: E402
from jaxalign.sampling import _sample, bucket, sample  # noqa: E402
from jaxalign.models.loading import init_params  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="tiny", choices=["nano", "tiny", "small", "500m"])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="jaxalign compute dtype")
  p.add_argument("--kv_cache_dtype", default="", choices=["", "float32", "bfloat16", "int8"],
                 help="the sampler's KV cache (\"\": the compute dtype); quantised rows are separate from --hf rows")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--hf", action="store_true", help="also time transformers' generate on the same weights")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", action="store_true")
  return p.parse_args(argv)


def run(args) -> dict:
  cfg = model_config(args.preset, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
                     max_len=max(args.prompt_len + args.new_tokens, model_config(args.preset).max_len))
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  params = init_params(cfg, jax.random.key(args.seed), mesh)
  rng = np.random.default_rng(args.seed)
  prompt = rng.integers(1, cfg.vocab_size, (args.batch, args.prompt_len), dtype=np.int32)
  mask = np.ones_like(prompt)
  new = args.batch * args.new_tokens
  kw = dict(cfg=cfg, max_new_tokens=args.new_tokens, eos_id=-1, pad_id=0, temperature=1.0, top_k=0, top_p=1.0)

  def jax_once(i):
    c0, t0 = cpu_seconds(), time.perf_counter()
    toks, m, _ = sample(params, jnp.asarray(prompt), jnp.asarray(mask), jax.random.key(i), **kw)
    jax.block_until_ready(toks)
    assert int(m.sum()) == new
    return time.perf_counter() - t0, cpu_seconds() - c0

  def prefill_once(i):
    """The same compiled program with a budget of 0 new tokens: cache set-up and the prompt's forward pass only."""
    pad = bucket(args.prompt_len) - args.prompt_len  # as `sample` pads the prompt to its bucket
    ids = jnp.pad(jnp.asarray(prompt), ((0, 0), (pad, 0)))
    m = jnp.pad(jnp.asarray(mask), ((0, 0), (pad, 0)))
    t0 = time.perf_counter()
    toks, m, _ = _sample((params,), ids, m, jax.random.key(i), jnp.int32(0), None, None, cfgs=(cfg,),
                         t_buffer=bucket(args.new_tokens), eos_id=-1, pad_id=0, temperature=1.0, top_k=0, top_p=1.0)
    jax.block_until_ready(toks)
    assert int(m.sum()) == 0
    return time.perf_counter() - t0

  with CompileCounter() as compiles:
    first, _ = jax_once(0)
    prefill_once(0)
    hf_model = None
    if args.hf:
      import torch
      import transformers
      from jaxalign.models import save_hf
      tmp = tempfile.TemporaryDirectory()
      save_hf(cfg, params, tmp.name)
      hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp.name, dtype=torch.float32).eval()
      hf_prompt, hf_mask = torch.tensor(prompt, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def hf_once(i):
      torch.manual_seed(i)
      c0, t0 = cpu_seconds(), time.perf_counter()
      with torch.no_grad():
        out = hf_model.generate(hf_prompt, attention_mask=hf_mask, max_new_tokens=args.new_tokens,
                                min_new_tokens=args.new_tokens, do_sample=True, temperature=1.0, top_k=0,
                                top_p=1.0, pad_token_id=0, eos_token_id=None, use_cache=True)
      assert out.shape == (args.batch, args.prompt_len + args.new_tokens)
      return time.perf_counter() - t0, cpu_seconds() - c0

    if hf_model is not None:
      hf_once(0)  # warm-up (allocator, thread pool)
    jt, ht, jcpu, hcpu, pt = [], [], [], [], []
    for i in range(args.repeats):
      t, c = jax_once(i + 1)
      jt.append(t)
      jcpu.append(c)
      pt.append(prefill_once(i + 1))
      if hf_model is not None:
        t, c = hf_once(i + 1)
        ht.append(t)
        hcpu.append(c)
  out = dict(
      preset=args.preset, batch=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
      dtype=args.dtype, n_params=count_params(params, cfg)["total"],
      jaxalign_s=statistics.median(jt), jaxalign_tokens_per_s=new / statistics.median(jt),
      jaxalign_first_call_s=first, jaxalign_compiles=compiles.counts.get("jit(_sample)", 0),  # one program for both
      jaxalign_cpu_cores_used=sum(jcpu) / sum(jt),
  )
  if ht:
    import transformers
    out.update(hf_s=statistics.median(ht), hf_tokens_per_s=new / statistics.median(ht),
               hf_cpu_cores_used=sum(hcpu) / sum(ht), transformers_version=transformers.__version__,
               ratio_tokens_per_s=statistics.median(ht) / statistics.median(jt))
  out.update(decode_floor(cfg, params, args, statistics.median(jt), statistics.median(pt)))
  out.update(peak_rss_mb=peak_rss_mb(), loadavg_1m=os.getloadavg()[0], cpu_count=os.cpu_count(),
             jax_version=jax.__version__, device=jax.devices()[0].device_kind)
  return out


def measured_bandwidth(mb: int = 256, repeats: int = 5) -> float:
  """Bytes/s at which a jitted matrix-vector product reads an `mb`-MB float32 matrix (best of `repeats`): the
  access pattern of a decode step's weight reads. (An element-wise op measured 4 GB/s here, a sixth of this: XLA's
  CPU element-wise loops are not memory-bound.)"""
  a = jnp.ones((8192, mb * 2**18 // 8192), jnp.float32)
  v = jnp.ones((a.shape[1],), jnp.float32)
  f = jax.jit(lambda m, x: m @ x)
  jax.block_until_ready(f(a, v))
  best = min(_timed(lambda: f(a, v)) for _ in range(repeats))
  return a.nbytes / best


def matmul_rate_at_rows(rows: int, d: int, v: int, repeats: int = 10) -> float:
  """FLOP/s of a `[rows, d] @ [d, v]` float32 product (best of `repeats`): the decode step's matmuls have as many
  rows as the batch, far fewer than the 2048² product the plain floor's rate comes from."""
  x, w = jnp.ones((rows, d), jnp.float32), jnp.ones((d, v), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(x, w))
  return 2.0 * rows * d * v / min(_timed(lambda: f(x, w)) for _ in range(repeats))


def _timed(call) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(call())
  return time.perf_counter() - t0


def decode_floor(cfg, params, args, total_s: float, prefill_s: float) -> dict:
  """The decode step against its floor: per step the weights and the KV cache (half full on average) are read
  once, and 2·N·batch FLOPs (plus attention) are done; floor = max(bytes ÷ measured bandwidth, FLOPs ÷ measured
  matmul rate). `decode_step_s` = (whole call − the prefill-only call of the same program) ÷ `new_tokens`;
  `step_with_prefill_s` = whole call ÷ `new_tokens` (the prefill amortised, as before). `floor_at_batch_rows_*`:
  the same floor with the matmul rate of a `[batch, D] @ [D, V]` product (the rows a decode step really has)."""
  from jaxalign.metrics import measured_matmul_flops
  from jaxalign.models.transformer import init_cache
  n = count_params(params, cfg)["flops_params"]
  w_bytes = sum(x.nbytes for x in jax.tree.leaves(params)) * (0.5 if args.dtype == "bfloat16" else 1.0)
  cache = init_cache(cfg, args.batch, args.prompt_len + args.new_tokens)
  kv_bytes = sum(x.nbytes for layer in cache["layers"] for x in layer.values())
  avg_kv = kv_bytes * (args.prompt_len + args.new_tokens / 2) / (args.prompt_len + args.new_tokens)
  flops = 2.0 * n * args.batch + 4.0 * args.batch * cfg.n_layers * cfg.n_heads * cfg.hdim * (
      args.prompt_len + args.new_tokens / 2)
  bw, mm = measured_bandwidth(), measured_matmul_flops(2048, 5)
  floor = max((w_bytes + avg_kv) / bw, flops / mm)
  step = (total_s - prefill_s) / args.new_tokens
  mm_rows = matmul_rate_at_rows(args.batch, cfg.d_model, cfg.vocab_size)
  floor_rows = max((w_bytes + avg_kv) / bw, flops / mm_rows)
  return dict(kv_cache_dtype=args.kv_cache_dtype or args.dtype, kv_cache_bytes=int(kv_bytes), prefill_s=prefill_s,
              decode_step_s=step, step_with_prefill_s=total_s / args.new_tokens,
              floor_ratio_with_prefill=total_s / args.new_tokens / floor,
              matmul_gflops_at_batch_rows=mm_rows / 1e9, floor_at_batch_rows_step_s=floor_rows,
              floor_ratio_at_batch_rows=step / floor_rows,
              bytes_per_step=w_bytes + avg_kv, flops_per_step=flops,
              floor_step_s=floor, floor_ratio=step / floor, floor_bound="memory" if (w_bytes + avg_kv) / bw * mm > flops
              else "compute", bandwidth_gb_s=bw / 1e9, matmul_gflops=mm / 1e9)


def main(argv=None):
  args = parse_args(argv)
  print_result(run(args), args.json)


if __name__ == "__main__":
  main()
