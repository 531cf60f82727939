"""The 2-D convolution every network here is built from.

One module so that the convolution lowering is chosen in one place. Every backend uses the
native ``lax.conv_general_dilated`` by default: cuDNN and the TPU compiler lower it best, and
since jaxlib 0.10 XLA:CPU hands it to YNNPACK, which runs forward, input-gradient and
weight-gradient convolutions of SD UNet shapes at the speed of its matmuls (as fast as
PyTorch's oneDNN on the same CPU). The im2col lowering (patches @ kernel, one matmul) is an
option for XLA builds whose convolutions lag their matmuls; with jaxlib 0.10 it made the SD
UNet training step on CPU 25% slower (the patch copies and their col2im gradient cost more
than they save), so it is off by default.
"""
from typing import Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Padding = Union[int, Sequence[tuple[int, int]]]


def _explicit(padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
  if isinstance(padding, int):
    return (padding, padding), (padding, padding)
  (top, bottom), (left, right) = padding
  return (top, bottom), (left, right)


def im2col_patches(x: jax.Array, kernel_size: int, strides: int,
                   padding: Padding) -> jax.Array:
  """The kernel-sized windows of x, side by side in the channels.

  x: [B, H, W, C] -> [B, H', W', kernel_size**2 * C], channel index (i * kernel_size + j) * C
  + c for window offset (i, j): the order of a HWIO kernel reshaped to [k*k*C, C_out].
  """
  (top, bottom), (left, right) = _explicit(padding)
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  _, height, width, _ = x.shape
  out_h = (height - kernel_size) // strides + 1
  out_w = (width - kernel_size) // strides + 1
  windows = [x[:, i:i + strides * (out_h - 1) + 1:strides, j:j + strides * (out_w - 1) + 1:strides]
             for i in range(kernel_size) for j in range(kernel_size)]
  return windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)


def conv2d(x: jax.Array, kernel: jax.Array, strides: int = 1, padding: Padding = 0,
           im2col: bool = False) -> jax.Array:
  """Square-kernel NHWC convolution (cross-correlation, like ``torch.nn.functional.conv2d``).

  Args:
    x: [B, H, W, C_in].
    kernel: [k, k, C_in, C_out] (HWIO).
    strides: the same stride along H and W.
    padding: zeros added on each side, or ``((top, bottom), (left, right))``.
    im2col: lower as ``im2col_patches(x) @ kernel`` instead of ``lax.conv_general_dilated``
      (same result up to float rounding, gradients included).

  Returns:
    [B, H', W', C_out], H' = (H + top + bottom - k) // strides + 1, likewise W'.
  """
  k = kernel.shape[0]
  if kernel.shape[1] != k:
    raise ValueError(f"kernel has shape {kernel.shape}; conv2d takes square [k, k, C_in, "
                     f"C_out] (HWIO) kernels")
  if not im2col:
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(strides, strides), padding=_explicit(padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  patches = im2col_patches(x, k, strides, padding)
  return patches @ kernel.reshape(-1, kernel.shape[-1])


class Conv2D(nn.Module):
  """NHWC convolution with a HWIO kernel, named like ``torch.nn.Conv2d`` (kernel, bias).

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    strides: square stride.
    padding: symmetric padding per side, or explicit ``((top, bottom), (left, right))``.
    kernel_init: initialiser of the [k, k, C_in, features] kernel.
    im2col: lower as im2col + matmul (see :func:`conv2d`); the parameters are the same.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Padding = 0
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  im2col: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C_in] -> [B, H', W', features]."""
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = conv2d(x, kernel, self.strides, self.padding, self.im2col)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y
