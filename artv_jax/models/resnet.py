"""Residual blocks and the 2x down/up-sampling layers shared by the UNet and the VAE."""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax import kernels
from artv_jax.models.conv import Conv2D


class ResnetBlock2D(nn.Module):
  """GroupNorm-SiLU-conv, twice, with an optional time embedding added in between.

  x: [B, H, W, C_in], temb: [B, T] or None -> [B, H, W, out_channels].
  """
  out_channels: int
  groups: int = 32
  eps: float = 1e-5
  dropout: float = 0.0
  dense: str = "auto"  # lowering of time_emb_proj ('auto', 'xla', 'cpu'; kernels.dense)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: nn.GroupNorm(self.groups, epsilon=self.eps, use_fast_variance=False,
                                     name=name, **kw)
    h = Conv2D(self.out_channels, 3, padding=1, name="conv1", **kw)(nn.silu(norm("norm1")(x)))
    if temb is not None:
      time_emb_proj = nn.Dense(self.out_channels, name="time_emb_proj",
                               dot_general=kernels.dense_dot_general(self.dense), **kw)
      h = h + time_emb_proj(nn.silu(temb))[:, None, None]
    h = nn.silu(norm("norm2")(h))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = Conv2D(self.out_channels, 3, padding=1, name="conv2", **kw)(h)
    if x.shape[-1] != self.out_channels:
      x = Conv2D(self.out_channels, 1, name="conv_shortcut", **kw)(x)
    return x + h


class Downsample2D(nn.Module):
  """Stride-2 3x3 conv: [B, H, W, C] -> [B, H/2, W/2, C].

  ``asymmetric_padding`` pads only bottom/right by one, as the VAE encoder does.
  """
  channels: int
  asymmetric_padding: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    padding = ((0, 1), (0, 1)) if self.asymmetric_padding else 1
    return Conv2D(self.channels, 3, strides=2, padding=padding, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="conv")(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour 2x upsampling then a 3x3 conv: [B, H, W, C] -> [B, 2H, 2W, C]."""
  channels: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return Conv2D(self.channels, 3, padding=1, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="conv")(x)
