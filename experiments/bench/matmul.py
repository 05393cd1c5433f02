"""The device's measured matmul rates (float32 and bfloat16, best of several n×n products) and its datasheet peak.

  python experiments/bench/matmul.py --n 8192 --json

MFU in the other scripts is measured against the float32 rate on CPU; on an accelerator the GPU script reports both
the measured bfloat16 rate and the chip's dense bfloat16 peak (`PEAK_BF16`, by `device_kind`; None when unknown).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_result  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# dense (no sparsity) bfloat16 peak FLOP/s per chip, from the vendors' datasheets
PEAK_BF16 = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
             "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12, "TPU v5 lite": 197e12,
             "TPU v4": 275e12, "TPU v5p": 459e12}


def rate(n: int, dtype, repeats: int) -> float:
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a))
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best


def peak_bf16(kind: str) -> float | None:
  return next((v for k, v in PEAK_BF16.items() if kind.startswith(k)), None)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=2048)
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--json", action="store_true")
  a = p.parse_args(argv)
  kind = jax.devices()[0].device_kind
  print_result(dict(figure="matmul", device=kind, platform=jax.devices()[0].platform, n=a.n,
                    f32_flops=rate(a.n, jnp.float32, a.repeats), bf16_flops=rate(a.n, jnp.bfloat16, a.repeats),
                    peak_bf16_flops=peak_bf16(kind), jax_version=jax.__version__), a.json)


if __name__ == "__main__":
  main()
