"""The 2-D convolution every network here is built from.

Every backend uses the native ``lax.conv_general_dilated``: cuDNN and the TPU compiler lower
it best, and since jaxlib 0.10 XLA:CPU hands it to YNNPACK, which runs forward, input-gradient
and weight-gradient convolutions of SD UNet shapes at the speed of its matmuls.
(``benchmarks/unet_vs_diffusers.py --im2col`` compares the im2col + matmul lowering.)
"""
from typing import Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Padding = Union[int, Sequence[tuple[int, int]]]


def explicit_padding(padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
  """``padding`` as ``((top, bottom), (left, right))``."""
  if isinstance(padding, int):
    return (padding, padding), (padding, padding)
  (top, bottom), (left, right) = padding
  return (top, bottom), (left, right)


def conv2d(x: jax.Array, kernel: jax.Array, strides: int = 1,
           padding: Padding = 0) -> jax.Array:
  """Square-kernel NHWC convolution (cross-correlation, like ``torch.nn.functional.conv2d``).

  Args:
    x: [B, H, W, C_in].
    kernel: [k, k, C_in, C_out] (HWIO).
    strides: the same stride along H and W.
    padding: zeros added on each side, or ``((top, bottom), (left, right))``.

  Returns:
    [B, H', W', C_out], H' = (H + top + bottom - k) // strides + 1, likewise W'.
  """
  if kernel.shape[1] != kernel.shape[0]:
    raise ValueError(f"kernel has shape {kernel.shape}; conv2d takes square [k, k, C_in, "
                     f"C_out] (HWIO) kernels")
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(strides, strides), padding=explicit_padding(padding),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv2D(nn.Module):
  """NHWC convolution with a HWIO kernel, named like ``torch.nn.Conv2d`` (kernel, bias).

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    strides: square stride.
    padding: symmetric padding per side, or explicit ``((top, bottom), (left, right))``.
    kernel_init: initialiser of the [k, k, C_in, features] kernel.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Padding = 0
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C_in] -> [B, H', W', features]."""
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = conv2d(x, kernel, self.strides, self.padding)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y
