"""The Stable Diffusion VAE: diffusers' ``AutoencoderKL`` in Flax.

Images [B, H, W, 3] in [-1, 1] are encoded into a diagonal Gaussian over latents
[B, H/f, W/f, latent_channels] (f = 2 ** (len(block_out_channels) - 1), 8 for SD), and latents
are decoded back to images. The diffusion model works on *scaled* latents; the scaling is the
caller's job (see :class:`AutoencoderKL`).

Module names mirror the diffusers state dict (``encoder.down_blocks.0.resnets.1.conv1.weight``
-> ``encoder/down_blocks_0/resnets_1/conv1/kernel``, ``decoder.mid_block.attentions.0.to_out.0
.weight`` -> ``decoder/mid_block/attentions_0/to_out_0/kernel``), so
:func:`artv_jax.checkpoints.rename.convert_state_dict` maps it directly. Old checkpoints name the
mid-block attention ``query/key/value/proj_attn`` (diffusers renames them when it loads them);
the converter must rename those before calling ``convert_state_dict``.
"""
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from artv_jax.models.attention import Attention
from artv_jax.models.conv import Conv2D
from artv_jax.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

Dtype = Any

# Every norm of the VAE uses this epsilon (diffusers hard-codes it for the VAE blocks).
_EPS = 1e-6


@flax.struct.dataclass
class DiagonalGaussian:
  """The VAE posterior q(z | x): independent Gaussians per latent element.

  A pytree, so it can be returned from (and passed into) jitted functions.

  Attributes:
    mean: [B, h, w, C] float32.
    logvar: [B, h, w, C] float32, clipped to [-30, 20] as diffusers does.
  """
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
    """moments: [B, h, w, 2C], mean channels first then log-variance channels."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean=mean, logvar=jnp.clip(logvar, -30.0, 20.0))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, rng: jax.Array) -> jax.Array:
    """A draw z = mean + std * noise, noise ~ N(0, I): [B, h, w, C]."""
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean


def _group_norm(groups: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.GroupNorm:
  # use_fast_variance=False: E[(x - mean)^2] like torch, not E[x^2] - mean^2.
  return nn.GroupNorm(groups, epsilon=_EPS, use_fast_variance=False, dtype=dtype,
                      param_dtype=param_dtype, name=name)


class AttentionBlock(nn.Module):
  """Single-head self-attention over the H*W positions, with a GroupNorm before and a residual.

  x: [B, H, W, C] -> [B, H, W, C]. The norm and the projections live in one parameter scope
  (``group_norm``, ``to_q``, ``to_k``, ``to_v``, ``to_out_0``) as in diffusers' state dict.
  """
  channels: int
  groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.group_norm = _group_norm(self.groups, "group_norm", self.dtype, self.param_dtype)
    # One head as wide as the channels; the softmax in float32 as diffusers' VAE does.
    self.attention = Attention(self.channels, heads=1, dim_head=self.channels, qkv_bias=True,
                               upcast=True, dtype=self.dtype, param_dtype=self.param_dtype)
    nn.share_scope(self, self.attention)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    tokens = self.group_norm(x).reshape(b, h * w, c)
    return x + self.attention(tokens).reshape(b, h, w, c)


class MidBlock(nn.Module):
  """resnet, attention (optional), resnet at the lowest resolution: [B, h, w, C] -> same."""
  channels: int
  groups: int
  add_attention: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    resnet = lambda name: ResnetBlock2D(self.channels, self.groups, _EPS, name=name, **kw)
    x = resnet("resnets_0")(x)
    if self.add_attention:
      x = AttentionBlock(self.channels, self.groups, name="attentions_0", **kw)(x)
    return resnet("resnets_1")(x)


class ResnetStage(nn.Module):
  """One resolution of the encoder or decoder (diffusers' DownEncoderBlock2D /
  UpDecoderBlock2D): ``num_layers`` resnets, then the resampler, if any.

  [B, H, W, C_in] -> [B, H', W', out_channels], H' = H / 2 (resample 'down': stride-2 conv),
  2H ('up': nearest upsampling and a conv) or H (None).
  """
  out_channels: int
  num_layers: int
  groups: int
  resample: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.num_layers):
      x = ResnetBlock2D(self.out_channels, self.groups, _EPS, name=f"resnets_{i}", **kw)(x)
    if self.resample == "down":
      x = Downsample2D(self.out_channels, asymmetric_padding=True, name="downsamplers_0", **kw)(x)
    elif self.resample == "up":
      x = Upsample2D(self.out_channels, name="upsamplers_0", **kw)(x)
    return x


class Encoder(nn.Module):
  """Images [B, H, W, C_in] -> latent moments [B, H/f, W/f, 2 * latent_channels] (double_z) or
  [B, H/f, W/f, latent_channels], f = 2 ** (len(block_out_channels) - 1)."""
  latent_channels: int
  block_out_channels: Sequence[int]
  layers_per_block: int
  groups: int
  add_attention: bool = True
  double_z: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels = self.block_out_channels
    x = Conv2D(channels[0], 3, padding=1, name="conv_in", **kw)(x)
    for i, out_channels in enumerate(channels):
      x = ResnetStage(out_channels, self.layers_per_block, self.groups,
                      resample="down" if i < len(channels) - 1 else None,
                      name=f"down_blocks_{i}", **kw)(x)
    x = MidBlock(channels[-1], self.groups, self.add_attention, name="mid_block", **kw)(x)
    x = nn.silu(_group_norm(self.groups, "conv_norm_out", **kw)(x))
    out_channels = 2 * self.latent_channels if self.double_z else self.latent_channels
    return Conv2D(out_channels, 3, padding=1, name="conv_out", **kw)(x)


class Decoder(nn.Module):
  """Latents [B, h, w, C_latent] -> images [B, h*f, w*f, out_channels]; the up blocks walk
  ``block_out_channels`` in reverse, each with ``layers_per_block + 1`` resnets."""
  out_channels: int
  block_out_channels: Sequence[int]
  layers_per_block: int
  groups: int
  add_attention: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels = tuple(reversed(self.block_out_channels))
    x = Conv2D(channels[0], 3, padding=1, name="conv_in", **kw)(z)
    x = MidBlock(channels[0], self.groups, self.add_attention, name="mid_block", **kw)(x)
    for i, out_channels in enumerate(channels):
      x = ResnetStage(out_channels, self.layers_per_block + 1, self.groups,
                      resample="up" if i < len(channels) - 1 else None, name=f"up_blocks_{i}",
                      **kw)(x)
    x = nn.silu(_group_norm(self.groups, "conv_norm_out", **kw)(x))
    return Conv2D(self.out_channels, 3, padding=1, name="conv_out", **kw)(x)


class AutoencoderKL(nn.Module):
  """The KL-regularised autoencoder of Stable Diffusion.

  Build it from diffusers' ``vae/config.json`` with :meth:`from_config`; the weights come from
  the converter. Use it through ``apply``::

    posterior = vae.apply({"params": p}, images, method="encode")   # DiagonalGaussian
    latents = (posterior.sample(rng) - (vae.shift_factor or 0.0)) * vae.scaling_factor
    images = vae.apply({"params": p}, latents / vae.scaling_factor + (vae.shift_factor or 0.0),
                       method="decode")

  ``encode`` and ``decode`` work on *unscaled* latents: the caller multiplies by
  ``scaling_factor`` (after subtracting ``shift_factor``, if set) before diffusion, and undoes
  it before ``decode``.

  Attributes:
    scaling_factor: latent scale that gives the diffusion model unit-variance inputs
      (0.18215 for SD1 and SD2). Not applied by this module.
    shift_factor: latent offset subtracted before scaling; None for SD1/SD2. Not applied by
      this module.
    use_quant_conv, use_post_quant_conv: whether the 1x1 convs between encoder/decoder and the
      latent exist.
    mid_block_add_attention: whether the encoder and decoder mid-blocks have self-attention.
    dtype: compute dtype. Outputs (posterior and images) are float32 whatever it is.
    param_dtype: dtype of the parameters.
  """
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Sequence[int] = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  shift_factor: Optional[float] = None
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @classmethod
  def from_config(cls, config: Mapping[str, Any], **overrides) -> "AutoencoderKL":
    """Builds the model from a diffusers ``AutoencoderKL`` config dict (its config.json).

    Fields the config lacks take diffusers' defaults. ``sample_size`` (tiling only) and
    ``force_upcast`` (a pipeline hint; choose ``dtype`` yourself) are ignored.

    Args:
      config: ``AutoencoderKL.config`` or the parsed ``vae/config.json``.
      **overrides: module fields to set or replace, e.g. ``dtype=jnp.bfloat16``.

    Raises:
      ValueError: if ``config`` is not an AutoencoderKL config, or asks for a feature this port
        does not implement.
    """
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
      raise ValueError(f"config is for {class_name!r}; AutoencoderKL.from_config needs a "
                       f"diffusers AutoencoderKL config (vae/config.json of an SD checkpoint)")
    act_fn = config.get("act_fn", "silu")
    if act_fn != "silu":
      raise ValueError(f"act_fn={act_fn!r} is not supported by the VAE port; only 'silu' is")
    num_levels = len(config.get("block_out_channels", cls.block_out_channels))
    for key, block in (("down_block_types", "DownEncoderBlock2D"),
                       ("up_block_types", "UpDecoderBlock2D")):
      types = tuple(config.get(key, (block,) * num_levels))
      if types != (block,) * num_levels:
        raise ValueError(f"{key}={types} is not supported; the VAE port builds "
                         f"{num_levels} x {block!r} (one per block_out_channels entry)")
    for key in ("latents_mean", "latents_std"):
      if config.get(key) is not None:
        raise ValueError(f"{key} is set, but this port only normalises latents with "
                         f"scaling_factor/shift_factor; set {key} to None")
    fields = ("in_channels", "out_channels", "layers_per_block", "latent_channels",
              "norm_num_groups", "scaling_factor", "shift_factor", "use_quant_conv",
              "use_post_quant_conv", "mid_block_add_attention")
    kwargs = {name: config[name] for name in fields if name in config}
    if "block_out_channels" in config:
      kwargs["block_out_channels"] = tuple(config["block_out_channels"])  # Hashable field.
    return cls(**{**kwargs, **overrides})

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels = tuple(self.block_out_channels)
    self.encoder = Encoder(self.latent_channels, channels, self.layers_per_block,
                           self.norm_num_groups, self.mid_block_add_attention, **kw)
    self.decoder = Decoder(self.out_channels, channels, self.layers_per_block,
                           self.norm_num_groups, self.mid_block_add_attention, **kw)
    if self.use_quant_conv:
      self.quant_conv = Conv2D(2 * self.latent_channels, 1, **kw)
    if self.use_post_quant_conv:
      self.post_quant_conv = Conv2D(self.latent_channels, 1, **kw)

  def encode(self, images: jax.Array) -> DiagonalGaussian:
    """images: [B, H, W, in_channels] in [-1, 1] -> posterior over [B, H/f, W/f, C_latent]."""
    moments = self.encoder(images)
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    return DiagonalGaussian.from_moments(moments.astype(jnp.float32))

  def decode(self, z: jax.Array) -> jax.Array:
    """z: [B, h, w, C_latent], unscaled (divide by scaling_factor first) -> images
    [B, h*f, w*f, out_channels] float32, roughly in [-1, 1]."""
    if self.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, images: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
    """Reconstruction [B, H, W, out_channels]: decodes a posterior sample when ``rng`` is given,
    else the posterior mean. Mostly for ``init``, which must touch every parameter."""
    posterior = self.encode(images)
    z = posterior.mode() if rng is None else posterior.sample(rng)
    return self.decode(z)
