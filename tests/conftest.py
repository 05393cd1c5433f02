"""Forces 8 CPU devices before jax is imported, so every test runs on a real mesh."""

import atexit
import os
import shutil
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after the flag on purpose)

assert jax.device_count() == 8, jax.devices()

# The CLI runs that tests start in subprocesses share one on-disk XLA compilation cache, so a program
# compiles once per session instead of once per process (a killed run, its resumption and the
# uninterrupted run compile the same steps). Set after `import jax`: this process does not use it, so
# in-process compilation counts are unchanged; tests that count compilations in a subprocess drop it.
# Under pytest-xdist the controller makes the folder and its workers (spawned with its environment)
# reuse it, so the workers share one cache; the process that made it removes it.
_XLA_CACHE = os.environ.get("JAXALIGN_TESTS_XLA_CACHE")
if not _XLA_CACHE or not os.path.isdir(_XLA_CACHE):
  _XLA_CACHE = tempfile.mkdtemp(prefix="jaxalign-tests-xla-cache-")
  os.environ["JAXALIGN_TESTS_XLA_CACHE"] = _XLA_CACHE
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


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
