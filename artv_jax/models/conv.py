"""The 2-D convolution every network here is built from.

One module so that the convolution lowering is chosen in one place (the CPU fast path lives
here, the native ``lax.conv_general_dilated`` is used on GPU/TPU).
"""
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Padding = Union[int, Sequence[tuple[int, int]]]


class Conv2D(nn.Module):
  """NHWC convolution with a HWIO kernel, named like ``torch.nn.Conv2d`` (kernel, bias).

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    strides: square stride.
    padding: symmetric padding per side, or explicit ``((top, bottom), (left, right))``.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Padding = 0
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C_in] -> [B, H', W', features]."""
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    padding = self.padding
    if isinstance(padding, int):
      padding = ((padding, padding), (padding, padding))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(self.strides, self.strides), padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y
