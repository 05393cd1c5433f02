"""jaxalign: pure-functional, sharded language-model alignment in JAX.

Importing this package has no side effects (no jax device set-up, no I/O).
"""

__version__ = "0.1.0"
