"""The device's measured matmul rates (float32 and bfloat16, best of several n×n products) and its datasheet peak.

  python experiments/bench/matmul.py --n 8192 --json
  python experiments/bench/matmul.py --routes --torch     # XLA's CPU matmul routes side by side, and torch

`--routes` runs this script once per XLA CPU route (`ROUTES`: the default Eigen path, oneDNN, XNNPACK, YNNPACK, each
by its XLA flag) in its own process, and with `--torch` the same products through torch (when installed), and
prints one table: the bf16 question of issue 18 item 2 (is there a supported XLA route to the CPU's bf16 units?).

MFU in the other scripts is measured against the float32 rate on CPU; on an accelerator the GPU script reports both
the measured bfloat16 rate and the chip's dense bfloat16 peak (`PEAK_BF16`, by `device_kind`; None when unknown).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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


# XLA CPU routes for dot products in jaxlib 0.10 (flags from its DebugOptions; "" = XLA's default)
ROUTES = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_fusion_dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn_fusion_dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "ynn_fusion_dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
}


# torch's rates, run in its own interpreter (`--torch_python` may be a venv without jax)
TORCH_CODE = """
import json, time, torch
def rate(n, dtype, repeats):
  a = torch.ones((n, n), dtype=getattr(torch, dtype))
  a @ a
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    a @ a
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best
print(json.dumps([torch.__version__] + [rate(%d, d, %d) for d in ("float32", "bfloat16")]))
"""


def routes(a) -> list[dict]:
  """One process per XLA route (the flags are read when jax starts), then torch's rates in another."""
  rows = []
  for name, flag in ROUTES.items():
    env = {**os.environ, "XLA_FLAGS": " ".join(x for x in (os.environ.get("XLA_FLAGS", ""), flag) if x)}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--n", str(a.n), "--repeats", str(a.repeats),
                          "--json"], env=env, capture_output=True, text=True)
    if out.returncode:
      rows.append(dict(route=name, flag=flag, error=out.stderr.strip().splitlines()[-1][:200]))
      continue
    r = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append(dict(route=name, flag=flag, f32_gflops=r["f32_flops"] / 1e9, bf16_gflops=r["bf16_flops"] / 1e9))
  if a.torch:
    out = subprocess.run([a.torch_python or sys.executable, "-c", TORCH_CODE % (a.n, a.repeats)],
                         capture_output=True, text=True)
    if out.returncode:
      rows.append(dict(route="torch", error=out.stderr.strip().splitlines()[-1][:200]))
    else:
      version, f32, bf16 = json.loads(out.stdout.strip().splitlines()[-1])
      rows.append(dict(route="torch", flag=f"torch {version}", f32_gflops=f32 / 1e9, bf16_gflops=bf16 / 1e9))
  return rows


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
  p.add_argument("--routes", action="store_true", help="every XLA CPU route in its own process (and --torch)")
  p.add_argument("--torch", action="store_true", help="with --routes: torch's rates too")
  p.add_argument("--torch_python", default="", help="interpreter with torch (default: this one)")
  a = p.parse_args(argv)
  if a.routes:
    import platform

    from ppo import cpu_model

    rows = routes(a)
    if a.json:
      print(json.dumps(dict(figure="matmul_routes", cpu_model=cpu_model(), machine=platform.machine(), n=a.n,
                            routes=rows)))
    else:
      print(f"{cpu_model()}: best of {a.repeats} {a.n}x{a.n} products, GFLOP/s")
      print(f"{'route':<20}{'f32':>8}{'bf16':>8}  flag")
      for r in rows:
        print(f"{r['route']:<20}" + (f"{r['f32_gflops']:>8.0f}{r['bf16_gflops']:>8.0f}  {r['flag']}"
                                     if "error" not in r else f"  error: {r['error']}"))
    return
  kind = jax.devices()[0].device_kind
  print_result(dict(figure="matmul", device=kind, platform=jax.devices()[0].platform, n=a.n,
                    f32_flops=rate(a.n, jnp.float32, a.repeats), bf16_flops=rate(a.n, jnp.bfloat16, a.repeats),
                    peak_bf16_flops=peak_bf16(kind), jax_version=jax.__version__), a.json)


if __name__ == "__main__":
  main()
