"""A dense product whose weight gradient XLA:CPU runs on its fast matmul.

The weight gradient of ``x @ W`` is ``x^T @ dy``, a product contracting the major (row) axis
of x. XLA folds the transpose into the product, and XLA:CPU runs such products on its own
matmul instead of YNNPACK, which is slower. Here the transpose of x is made explicitly (it is
cheap next to the product) and kept apart from the product, so the product is an ordinary one.
"""
import jax


def cpu_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers,
                    precision=None, preferred_element_type=None) -> jax.Array:
  """``lax.dot_general``, through :func:`_matmul` for ``nn.Dense``'s product.

  nn.Dense's product is lhs: [..., K] with rhs: [K, N] -> [..., N]; other products (and
  explicit precisions or output types) go to ``lax.dot_general`` as they are.
  """
  dense_product = (((lhs.ndim - 1,), (0,)), ((), ()))
  if (dimension_numbers != dense_product or precision is not None
      or preferred_element_type is not None):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  rows = lhs.reshape(-1, lhs.shape[-1])
  return _matmul(rows, rhs).reshape(lhs.shape[:-1] + rhs.shape[1:])


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x: [M, K] @ kernel: [K, N] -> [M, N]."""
  return x @ kernel


def _matmul_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _matmul_bwd(residuals, d_y):
  x, kernel = residuals
  # The barrier keeps XLA from folding the transpose back into the product.
  x_t = jax.lax.optimization_barrier(x.T)
  return d_y @ kernel.T, x_t @ d_y


_matmul.defvjp(_matmul_fwd, _matmul_bwd)
