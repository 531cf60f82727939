"""Suite-wide settings, applied before any test imports JAX."""
import os
import tempfile

# XLA:CPU compilation dominates this suite's time, and many tests (and the subprocesses they
# start) compile the same small networks: share compiled programs through JAX's persistent
# cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "artv_jax_test_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# The XLA:CPU flags main.py sets, so tests run the programs users run.
from artv_jax import xla_flags  # pylint: disable=wrong-import-position
xla_flags.use_cpu_flags()
