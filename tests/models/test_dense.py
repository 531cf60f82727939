"""The dense layer: flax's Dense, with a CPU weight gradient that runs on the fast matmul."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from artv_jax.models.dense import Dense


def test_output_and_gradients_match_flax_dense():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 7)), jnp.float32)
  ours, ref = Dense(3), nn.Dense(3)
  params = ref.init(jax.random.PRNGKey(0), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # A non-zero bias.
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-6, atol=1e-6)
  # A nonlinear loss, so the output cotangent differs from element to element.
  grads = lambda layer: jax.grad(lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x))),
                                 (0, 1))(params, x)
  for got, want in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(ref))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_keeps_the_parameter_names_and_shapes():
  x = jnp.ones((4, 7))
  shapes = lambda layer: jax.tree.map(jnp.shape, layer.init(jax.random.PRNGKey(0), x))
  assert shapes(Dense(3, name="proj")) == shapes(nn.Dense(3, name="proj"))
