"""The down, mid and up blocks of the SD UNet.

Each block is a stack of ``ResnetBlock2D`` layers, optionally each followed by a
``Transformer2DModel`` (self-attention, cross-attention to the text, feed-forward). One class
per direction covers both of diffusers' variants, because the parameter names do not depend
on the class:

    diffusers                    here
    CrossAttnDownBlock2D         DownBlock(num_attention_heads=n)
    DownBlock2D                  DownBlock(num_attention_heads=None)
    UNetMidBlock2DCrossAttn      MidBlock
    CrossAttnUpBlock2D           UpBlock(num_attention_heads=n)
    UpBlock2D                    UpBlock(num_attention_heads=None)

Parameter paths: ``resnets_{i}``, ``attentions_{i}``, ``downsamplers_0/conv``,
``upsamplers_0/conv``, as in the diffusers state dict.
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax.models.attention import Transformer2DModel
from artv_jax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D


class _UNetBlock(nn.Module):
  """Settings every UNet block shares, and the two layers it is built from (called from
  the subclasses' compact ``__call__``).

  Attributes:
    out_channels: channels of every layer's output.
    num_layers: number of resnets (each with its transformer when attention is on).
    num_attention_heads: heads of the transformers; None means a block without attention.
      The head width is ``out_channels // num_attention_heads``, as in diffusers.
    transformer_layers: BasicTransformerBlocks per transformer.
    use_linear_projection: linear (SD2) instead of 1x1-conv (SD1) proj_in/proj_out.
    upcast_attention: attention in float32 under a lower compute dtype (SD2.1).
    norm_groups, norm_eps: GroupNorm of the resnets (the transformers use eps 1e-6).
    dropout: dropout rate of the resnets (diffusers gives the transformers none).
    attention: lowering of the transformers' attention core (Attention.implementation).
    dense: lowering of every linear layer inside (Attention.dense).
  """
  out_channels: int
  num_layers: int = 1
  num_attention_heads: Optional[int] = None
  transformer_layers: int = 1
  use_linear_projection: bool = False
  upcast_attention: bool = False
  norm_groups: int = 32
  norm_eps: float = 1e-5
  dropout: float = 0.0
  attention: str = "auto"
  dense: str = "auto"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _resnet(self, i: int, x: jax.Array, temb: jax.Array, deterministic: bool) -> jax.Array:
    return ResnetBlock2D(self.out_channels, groups=self.norm_groups, eps=self.norm_eps,
                         dropout=self.dropout, dense=self.dense, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"resnets_{i}")(x, temb, deterministic)

  def _attend(self, i: int, x: jax.Array, context: jax.Array,
              deterministic: bool) -> jax.Array:
    heads = self.num_attention_heads
    return Transformer2DModel(
        heads=heads, dim_head=self.out_channels // heads, num_layers=self.transformer_layers,
        use_linear_projection=self.use_linear_projection,
        upcast_attention=self.upcast_attention, norm_groups=self.norm_groups,
        attention=self.attention, dense=self.dense, dtype=self.dtype,
        param_dtype=self.param_dtype, name=f"attentions_{i}")(x, context, deterministic)


class DownBlock(_UNetBlock):
  """Resnets (+ transformers), then an optional stride-2 downsampler.

  Attributes:
    add_downsample: end with ``downsamplers_0`` (all down blocks but the last).
    downsample_padding: 1 pads the stride-2 conv on every side; 0 only bottom/right.
  """
  add_downsample: bool = True
  downsample_padding: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array,
               residual: Optional[jax.Array], deterministic: bool
               ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Runs the block.

    Args:
      x: [B, H, W, C_in].
      temb: [B, T] time embedding.
      context: [B, S, cross_attention_dim] text states (unused without attention).
      residual: [B, H, W, out_channels] or None: added to the output of the last
        resnet(+transformer) pair, before the downsampler, so it reaches the skip connection
        too (diffusers' ``down_intrablock_additional_residuals``, the T2I-Adapter hook).
      deterministic: disables dropout.

    Returns:
      (h, skips): h [B, H', W', out_channels] (H' = H/2 with a downsampler), and one skip
      per resnet plus one for the downsampler, in order, for the up path.
    """
    skips = []
    for i in range(self.num_layers):
      x = self._resnet(i, x, temb, deterministic)
      if self.num_attention_heads is not None:
        x = self._attend(i, x, context, deterministic)
      if residual is not None and i == self.num_layers - 1:
        x = x + residual.astype(x.dtype)
      skips.append(x)
    if self.add_downsample:
      x = Downsample2D(self.out_channels, asymmetric_padding=self.downsample_padding == 0,
                       dtype=self.dtype, param_dtype=self.param_dtype, name="downsamplers_0")(x)
      skips.append(x)
    return x, tuple(skips)


class MidBlock(_UNetBlock):
  """resnets_0, then (attentions_i, resnets_{i+1}) for each layer; attention is required.

  x: [B, H, W, C], temb: [B, T], context: [B, S, C_ctx] -> [B, H, W, out_channels].
  """

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array,
               deterministic: bool) -> jax.Array:
    x = self._resnet(0, x, temb, deterministic)
    for i in range(self.num_layers):
      x = self._attend(i, x, context, deterministic)
      x = self._resnet(i + 1, x, temb, deterministic)
    return x


class UpBlock(_UNetBlock):
  """For each layer: concat the next skip, resnet (+ transformer); then an optional 2x
  upsampler.

  Attributes:
    add_upsample: end with ``upsamplers_0`` (all up blocks but the last).
  """
  add_upsample: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, skips: Sequence[jax.Array], temb: jax.Array,
               context: jax.Array, deterministic: bool) -> jax.Array:
    """Runs the block.

    Args:
      x: [B, H, W, C].
      skips: ``num_layers`` skip tensors [B, H, W, C_i], consumed last first (the order the
        down path produced them).
      temb, context, deterministic: as for :class:`DownBlock`.

    Returns:
      [B, H', W', out_channels], H' = 2H with an upsampler.
    """
    if len(skips) != self.num_layers:
      raise ValueError(f"{self.name} takes {self.num_layers} skip connections, got {len(skips)}")
    for i in range(self.num_layers):
      x = jnp.concatenate([x, skips[-1 - i].astype(x.dtype)], axis=-1)
      x = self._resnet(i, x, temb, deterministic)
      if self.num_attention_heads is not None:
        x = self._attend(i, x, context, deterministic)
    if self.add_upsample:
      x = Upsample2D(self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="upsamplers_0")(x)
    return x
