"""The CPU dense product against ``lax.dot_general``, inside flax's ``nn.Dense``."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from artv_jax.kernels.cpu_dense import cpu_dot_general


def _params_and_input(layer: nn.Module):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 7)), jnp.float32)
  params = layer.init(jax.random.PRNGKey(0), x)
  return jax.tree.map(lambda p: p + 0.1, params), x  # A non-zero bias.


def test_output_and_gradients_match_flax_dense():
  ours, ref = nn.Dense(3, dot_general=cpu_dot_general), nn.Dense(3)
  params, x = _params_and_input(ref)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-6, atol=1e-6)
  # A nonlinear loss, so the output cotangent differs from element to element.
  grads = lambda layer: jax.grad(lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x))),
                                 (0, 1))(params, x)
  for got, want in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(ref))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_other_products_go_to_lax_dot_general():
  x = jnp.arange(12.0).reshape(3, 4)
  batched = (((1,), (1,)), ((0,), (0,)))  # Not Dense's product: a batched one.
  np.testing.assert_array_equal(cpu_dot_general(x, x, batched),
                                jax.lax.dot_general(x, x, batched))
