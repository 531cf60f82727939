"""The dense (fully connected) layer of the networks here: ``flax.linen.Dense`` whose
product has, on CPU, a gradient that XLA:CPU's fast matmul takes.

The weight gradient of ``x @ W`` is ``x^T @ dy``, a product contracting the major (row)
axis of x. XLA folds the transpose into the product, and XLA:CPU runs such products on its
own matmul instead of YNNPACK, 2-3x slower. Here the transpose of x is made explicitly (it
is cheap next to the product) and kept apart from the product, so the product is an
ordinary one. Elsewhere ``lax.dot_general`` is used as is.
"""
from typing import Any

import flax.linen as nn
import jax


def _dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """``lax.dot_general``, through :func:`_matmul` for Dense's product on CPU."""
  dense_product = (((lhs.ndim - 1,), (0,)), ((), ()))
  if (jax.default_backend() != "cpu" or dimension_numbers != dense_product
      or precision is not None or preferred_element_type is not None):
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


class Dense(nn.Dense):
  """``flax.linen.Dense`` (same attributes and parameters): [..., C_in] -> [..., features]."""
  dot_general: Any = _dot_general
