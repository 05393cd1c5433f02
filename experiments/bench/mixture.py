"""Geometric-mixture sampling vs plain policy sampling: wall time for the same batch and length.

  python experiments/bench/mixture.py --preset tiny --batch 16 --new_tokens 64 --json

Two random-init models of the preset (policy and reference). `jaxalign.sampling.sample` (one
model, one KV cache) and `jaxalign.sampling.mixture_sample` (both models, two KV caches, β = 0.5)
each draw `--new_tokens` tokens per row (no EOS: every row runs to the end) after
`--prompt_len`-token prompts. Calls alternate `--repeats` times after one warm-up (compile)
call each; medians are reported, with the ratio mixture / plain (target: ≤ 2.5; two forward
passes per token make ≈ 2 the floor).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxalign import sampling  # noqa: E402
from jaxalign import sharding as shd  # noqa: E402
from jaxalign.models.loading import init_params  # noqa: E402
from jaxalign.models.transformer import model_config  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="tiny")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--prompt_len", type=int, default=16)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--beta", type=float, default=0.5)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--json", action="store_true")
  a = ap.parse_args()
  cfg = model_config(a.preset)
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  pol = init_params(cfg, jax.random.key(0), mesh)
  ref = init_params(cfg, jax.random.key(1), mesh)
  prompt = np.random.default_rng(0).integers(4, cfg.vocab_size, (a.batch, a.prompt_len)).astype(np.int32)
  mask = np.ones_like(prompt)
  kw = dict(cfg=cfg, max_new_tokens=a.new_tokens, eos_id=-1, pad_id=0)
  fns = {"plain": lambda k: sampling.sample(pol, prompt, mask, k, **kw),
         "mixture": lambda k: sampling.mixture_sample(pol, ref, prompt, mask, k, beta=a.beta, **kw)}
  compile_s, times = {}, {n: [] for n in fns}
  for n, f in fns.items():
    t = time.perf_counter()
    jax.block_until_ready(f(jax.random.key(0)))
    compile_s[n] = time.perf_counter() - t
  for r in range(a.repeats):
    for n, f in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(f(jax.random.key(r + 1)))
      times[n].append(time.perf_counter() - t)
  med = {n: statistics.median(v) for n, v in times.items()}
  out = dict(preset=a.preset, batch=a.batch, prompt_len=a.prompt_len, new_tokens=a.new_tokens, beta=a.beta,
             device=str(jax.devices()[0].platform), plain_s=med["plain"], mixture_s=med["mixture"],
             ratio=med["mixture"] / med["plain"],
             plain_tokens_per_s=a.batch * a.new_tokens / med["plain"],
             mixture_tokens_per_s=a.batch * a.new_tokens / med["mixture"],
             first_call_s=compile_s)
  if a.json:
    print(json.dumps(out, indent=1))
  else:
    print(f"{a.preset} B={a.batch} T={a.new_tokens}: plain {med['plain']:.3f}s, mixture {med['mixture']:.3f}s, "
          f"ratio {out['ratio']:.2f}x")


if __name__ == "__main__":
  main()
