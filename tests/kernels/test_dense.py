"""The dense dispatcher (``config.model.dense``): 'auto' per backend, equal lowerings, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.kernels import dense
from artv_jax.kernels.cpu_dense import cpu_dot_general
from artv_jax.models.embeddings import TimestepEmbedding


def test_auto_is_the_cpu_product_on_cpu_and_xla_elsewhere():
  assert dense.resolve_implementation("auto", "cpu") == "cpu"
  assert dense.resolve_implementation("auto", "gpu") == "xla"
  assert dense.resolve_implementation("auto", "tpu") == "xla"
  assert jax.default_backend() == "cpu"
  assert dense.dense_dot_general("auto") is cpu_dot_general
  assert dense.dense_dot_general("cpu") is cpu_dot_general
  assert dense.dense_dot_general("xla") is jax.lax.dot_general


def test_xla_and_cpu_give_the_same_outputs_gradients_and_parameters():
  # A tiny layer of the UNet (linear_1, SiLU, linear_2), under each lowering.
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 6)), jnp.float32)
  layers = {name: TimestepEmbedding(4, dense=name) for name in ("xla", "cpu")}
  params = layers["xla"].init(jax.random.PRNGKey(0), x)
  assert (jax.tree.map(jnp.shape, layers["cpu"].init(jax.random.PRNGKey(0), x))
          == jax.tree.map(jnp.shape, params))
  params = jax.tree.map(lambda p: p + 0.1, params)  # Non-zero biases.
  # A nonlinear loss, so the output cotangent differs from element to element.
  loss = lambda layer: lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x)))
  xla, cpu = (jax.value_and_grad(loss(layers[name]), (0, 1))(params, x) for name in layers)
  np.testing.assert_allclose(cpu[0], xla[0], rtol=1e-6)
  for got, want in zip(jax.tree.leaves(cpu[1]), jax.tree.leaves(xla[1])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unknown_name_is_a_config_error_listing_the_choices():
  with pytest.raises(ValueError, match=r"config.model.dense 'mkl' is not one of "
                                       r"\('auto', 'xla', 'cpu'\)"):
    dense.resolve_implementation("mkl", "cpu")
  with pytest.raises(ValueError, match="config.model.dense 'mkl'"):  # From a layer, too.
    TimestepEmbedding(4, dense="mkl").init(jax.random.PRNGKey(0), jnp.ones((1, 6)))
