"""jaxalign: pure-functional, sharded language-model alignment in JAX.

Importing this package has no side effects (no jax device set-up, no I/O).
"""

import os

__version__ = "0.1.0"

# XLA's CPU default schedules a program so independent ops can run side by side, which keeps
# many more buffers live at once; on a few cores that buys no measurable speed in the train
# step, while the memory-minimising schedule needs far less (the `small` DPO step's backward:
# 2.4 -> 1.8 GB of scratch). See experiments/bench/README.md.
XLA_CPU_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def set_xla_cpu_flags() -> None:
  """Adds `XLA_CPU_FLAGS` to `XLA_FLAGS` (those not already set); call before jax starts its backend."""
  current = os.environ.get("XLA_FLAGS", "")
  extra = [f for f in XLA_CPU_FLAGS if f.split("=")[0] not in current]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
