"""Forces 8 CPU devices before jax is imported, so every test runs on a real mesh."""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after the flag on purpose)

assert jax.device_count() == 8, jax.devices()


import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """float64 for exact parity with the spec's vectors; restored afterwards."""
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def f64(*xs):
  return [jnp.asarray(x, jnp.float64) for x in xs]
