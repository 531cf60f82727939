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


import pytest  # pylint: disable=wrong-import-position,wrong-import-order


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """tests/tiny_config.py's synthetic data set, built once for the whole run."""
  from artv_jax.data import pipeline
  from tests import tiny_config
  path = str(tmp_path_factory.mktemp("tfds"))
  data = tiny_config.get_config().data
  pipeline.make_builder("synthetic_shapes", path, resolution=data.resolution,
                        variant=data.variant)
  return path
