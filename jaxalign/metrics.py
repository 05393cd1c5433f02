"""Metric logging: `metrics.jsonl` and TensorBoard on process 0, plus perf helpers.

Rows are flat and namespaced (`train/loss`, `eval/win_rate`, `perf/mfu`). When a
run resumes from step `s`, rows logged after `s` by the interrupted run are
dropped first, so the file reads exactly like an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def _clean(v):
  v = float(np.asarray(v))
  return v if math.isfinite(v) else str(v)  # JSON has no NaN/inf literals


class MetricWriter:
  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    truncate_jsonl(self.path, resume_step)
    truncate_jsonl(os.path.join(workdir, "samples.jsonl"), resume_step)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1, flush_secs=10)
      except ImportError:  # TensorBoard is optional
        self._tb = None

  def write(self, step: int, metrics: dict) -> dict:
    row = {"step": int(step), **{k: _clean(v) for k, v in sorted(metrics.items())}}
    if self.active:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
      if self._tb is not None:
        for k, v in row.items():
          if k != "step" and isinstance(v, float):
            self._tb.add_scalar(k, v, step)
    return row

  def write_samples(self, step: int, rows: list[dict]) -> None:
    if self.active and rows:
      with open(os.path.join(os.path.dirname(self.path), "samples.jsonl"), "a") as f:
        for r in rows:
          f.write(json.dumps({"step": int(step), **r}) + "\n")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def truncate_jsonl(path: str, max_step: int) -> None:
  """Keeps rows with `step <= max_step` (atomically); a torn last line is dropped."""
  if not os.path.exists(path):
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if int(row.get("step", 0)) <= max_step:
        keep.append(line if line.endswith("\n") else line + "\n")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(keep)
  os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


_MATMUL_RATE: float | None = None


def measured_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
  """Peak float32 matmul rate of the first device, in FLOP/s (measured once per process)."""
  global _MATMUL_RATE
  if _MATMUL_RATE is None:
    dev = jax.devices()[0]
    a = jax.device_put(jnp.ones((n, n), jnp.float32), dev)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      f(a).block_until_ready()
      best = min(best, time.perf_counter() - t0)
    _MATMUL_RATE = 2 * n**3 / best
  return _MATMUL_RATE


def peak_flops(n: int = 1024, repeats: int = 5) -> float:
  """The matmul rate MFU is measured against: one device's rate on CPU (forced host devices
  share one pool of cores), the rate times the device count on accelerators."""
  devices = jax.devices()
  per_device = measured_matmul_flops(n, repeats)
  return per_device * (1 if devices[0].platform == "cpu" else len(devices))


def training_flops(n_params: int, policy_tokens: int, reference_tokens: int = 0) -> float:
  """6·N·T for the policy forward+backward plus 2·N·T for a reference forward."""
  return 6.0 * n_params * policy_tokens + 2.0 * n_params * reference_tokens


def peak_rss_mb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class CompileCounter:
  """Counts XLA compilations per jitted function (`counts["jit(step)"]`), from `jax.monitoring`.

  Use as a context manager; a shape that changes between calls shows up as a new compilation.
  """
  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.counts: dict[str, int] = {}

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    if event == self.EVENT:
      name = str(kwargs.get("fun_name", "?"))
      self.counts[name] = self.counts.get(name, 0) + 1

  def __enter__(self) -> "CompileCounter":
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)
