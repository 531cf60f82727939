"""The Stable Diffusion (1.x and 2.x) denoising UNet, a port of diffusers'
``UNet2DConditionModel``.

    sample [B, H, W, in] -> conv_in -> down blocks (skips) -> mid block -> up blocks (skips
    consumed in reverse) -> GroupNorm, SiLU, conv_out -> [B, H, W, out]

Every resnet sees the time embedding (sinusoidal features of the timestep through an MLP);
the transformers of the CrossAttn* blocks attend to the text states. ART·V adds two hooks
(see ``__call__``): an embedding added to the time embedding, and one feature map per down
block added inside that block (T2I-Adapter style).

Parameter paths mirror the diffusers state dict (``down_blocks_0/resnets_1/conv1/kernel``),
so :func:`artv_jax.checkpoints.rename.convert_state_dict` ports the weights.
"""
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax.models.conv import Conv2D
from artv_jax.models.embeddings import TimestepEmbedding, timestep_features
from artv_jax.models.unet_blocks import DownBlock, MidBlock, UpBlock

IntOrPerBlock = Union[int, Sequence[int]]

_DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # -> has attention
_UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}

# diffusers config fields this port reads, under the module field they fill.
_CONFIG_FIELDS = {
    "in_channels": "in_channels", "out_channels": "out_channels",
    "down_block_types": "down_block_types", "up_block_types": "up_block_types",
    "block_out_channels": "block_out_channels", "layers_per_block": "layers_per_block",
    # diffusers' historical misnomer: for SD configs `attention_head_dim` is the number of
    # heads per block (its `num_attention_heads` defaults to it; see diffusers issue 2011).
    "attention_head_dim": "num_attention_heads",
    "transformer_layers_per_block": "transformer_layers_per_block",
    "cross_attention_dim": "cross_attention_dim",
    "use_linear_projection": "use_linear_projection", "upcast_attention": "upcast_attention",
    "flip_sin_to_cos": "flip_sin_to_cos", "freq_shift": "freq_shift",
    "time_embedding_dim": "time_embedding_dim", "norm_num_groups": "norm_num_groups",
    "norm_eps": "norm_eps", "downsample_padding": "downsample_padding",
    "conv_in_kernel": "conv_in_kernel", "conv_out_kernel": "conv_out_kernel",
    "dropout": "dropout",
}
# Fields that carry no architecture here.
_IGNORED_FIELDS = {"sample_size", "addition_embed_type_num_heads"}
# diffusers features this port does not implement: field -> the values that mean "off".
_UNSUPPORTED_UNLESS = {
    "center_input_sample": (False,),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "mid_block_scale_factor": (1,),
    "act_fn": ("silu", "swish"),
    "reverse_transformer_layers_per_block": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "dual_cross_attention": (False,),
    "class_embed_type": (None,),
    "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,),
    "num_class_embeds": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1,),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "projection_class_embeddings_input_dim": (None,),
    "attention_type": ("default",),
    "class_embeddings_concat": (False,),
    "cross_attention_norm": (None,),
}


def _is_off(value: Any, off_values: tuple) -> bool:
  if isinstance(value, (list, tuple)):  # Per-block lists (only_cross_attention).
    return all(_is_off(v, off_values) for v in value)
  return value in off_values


def _per_block(value: IntOrPerBlock, num_blocks: int, field: str) -> tuple[int, ...]:
  values = (value,) * num_blocks if isinstance(value, int) else tuple(value)
  if len(values) != num_blocks or not all(isinstance(v, int) for v in values):
    raise ValueError(f"{field}={value!r}: give one int, or one int per block "
                     f"({num_blocks} blocks in block_out_channels)")
  return values


def _has_attention(block_types: Sequence[str], known: Mapping[str, bool],
                   field: str) -> tuple[bool, ...]:
  unknown = [t for t in block_types if t not in known]
  if unknown:
    raise ValueError(f"{field} has unsupported block types {unknown}; supported: {list(known)}")
  return tuple(known[t] for t in block_types)


class UNet2DConditionModel(nn.Module):
  """The SD UNet: [B, H, W, in_channels] noisy latents -> [B, H, W, out_channels].

  Build it from a diffusers ``unet/config.json`` with :meth:`from_config`; the fields and
  defaults are diffusers', except ``num_attention_heads``, which holds what SD configs call
  ``attention_head_dim``.

  Attributes:
    down_block_types, up_block_types: ``CrossAttn{Down,Up}Block2D`` (resnets + transformers)
      or ``{Down,Up}Block2D`` (resnets only), one per resolution.
    block_out_channels: channels of each down block (up blocks mirror them).
    layers_per_block: resnets per down block, an int or one per block; up blocks have one more.
    num_attention_heads: heads of each down block's transformers (int or per block); the up
      blocks take the list reversed, the mid block its last entry. Head width is
      ``channels // heads``.
    transformer_layers_per_block: BasicTransformerBlocks per transformer (int or per block).
    cross_attention_dim: width of the text states (768 for SD1, 1024 for SD2).
    use_linear_projection: linear proj_in/proj_out in the transformers (SD2) instead of 1x1
      convs (SD1).
    upcast_attention: attention in float32 even under a lower compute dtype (SD2.1).
    flip_sin_to_cos, freq_shift: layout of the sinusoidal timestep features.
    time_embedding_dim: width of the time embedding; None means 4 * block_out_channels[0].
    norm_num_groups, norm_eps: GroupNorm of the resnets and of conv_norm_out.
    downsample_padding: 1 pads the stride-2 convs on every side, 0 only bottom/right.
    conv_in_kernel, conv_out_kernel: kernel sizes of the first and last convs.
    dropout: dropout rate inside the resnets (active when ``deterministic=False``).
    remat: rematerialise each down/mid/up block in the backward pass (gradient
      checkpointing: less activation memory, one more forward); parameters are unchanged.
    remat_policy: with ``remat``, the name of a ``jax.checkpoint_policies`` policy saying
      which values inside a block are kept rather than recomputed (e.g.
      'dots_with_no_batch_dims_saveable'); empty keeps only the blocks' inputs.
    attention: lowering of every attention core ('auto', 'xla', 'cudnn', 'cpu_blocked';
      :mod:`artv_jax.kernels.attention`).
    dense: lowering of every linear layer ('auto', 'xla', 'cpu'; :mod:`artv_jax.kernels.dense`).
    dtype: compute dtype (e.g. ``jnp.bfloat16``); the output is always float32.
    param_dtype: dtype of the parameters.
  """
  in_channels: int = 4
  out_channels: int = 4
  down_block_types: Sequence[str] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                     "CrossAttnDownBlock2D", "DownBlock2D")
  up_block_types: Sequence[str] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                   "CrossAttnUpBlock2D")
  block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
  layers_per_block: IntOrPerBlock = 2
  num_attention_heads: IntOrPerBlock = 8
  transformer_layers_per_block: IntOrPerBlock = 1
  cross_attention_dim: int = 1280
  use_linear_projection: bool = False
  upcast_attention: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: int = 0
  time_embedding_dim: Optional[int] = None
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  downsample_padding: int = 1
  conv_in_kernel: int = 3
  conv_out_kernel: int = 3
  dropout: float = 0.0
  remat: bool = False
  remat_policy: str = ""
  attention: str = "auto"
  dense: str = "auto"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @classmethod
  def from_config(cls, config: Mapping[str, Any], **overrides) -> "UNet2DConditionModel":
    """Builds the UNet from a diffusers ``UNet2DConditionModel`` config dict.

    Args:
      config: ``unet.config`` of a diffusers model or the parsed ``unet/config.json``;
        missing fields take diffusers' defaults, ``_``-prefixed metadata is ignored.
      **overrides: module fields to set or replace, e.g. ``dtype=jnp.bfloat16, remat=True``,
        or ``out_channels=5`` for a model with an extra output channel.

    Raises:
      ValueError: naming the field, if the config asks for a feature this port does not
        implement (class embeddings, dual cross-attention, ...), gives ``num_attention_heads``
        (diffusers rejects it too), or has a field this port does not know.
    """
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if config.get("num_attention_heads") is not None:
      raise ValueError(
          f"num_attention_heads={config['num_attention_heads']!r}: diffusers' "
          f"UNet2DConditionModel rejects this field (for SD configs the head count is given "
          f"by attention_head_dim); put the head count in attention_head_dim and drop it")
    config.pop("num_attention_heads", None)
    for field, off_values in _UNSUPPORTED_UNLESS.items():
      if field in config and not _is_off(config[field], off_values):
        raise ValueError(f"UNet config field {field}={config[field]!r} is not supported by "
                         f"this port (supported: {' or '.join(map(repr, off_values))})")
    unknown = set(config) - set(_CONFIG_FIELDS) - _IGNORED_FIELDS - set(_UNSUPPORTED_UNLESS)
    if unknown:
      raise ValueError(f"UNet config has fields this port does not know: {sorted(unknown)}; "
                       f"if they are at their defaults (no effect), drop them from the config")
    if "norm_num_groups" in config and config["norm_num_groups"] is None:
      raise ValueError("norm_num_groups=None (no conv_norm_out) is not supported; "
                       "SD UNets use 32")
    cross = config.get("cross_attention_dim", cls.cross_attention_dim)
    if not isinstance(cross, int):  # One width per block: the text states are shared.
      if len(set(cross)) != 1:
        raise ValueError(f"cross_attention_dim={cross!r}: different widths per block are not "
                         f"supported (all blocks attend to the same text states)")
      config["cross_attention_dim"] = cross[0]
    kwargs = {_CONFIG_FIELDS[k]: tuple(v) if isinstance(v, list) else v
              for k, v in config.items() if k in _CONFIG_FIELDS}
    model = cls(**{**kwargs, **overrides})
    model._layout()  # Fail here on inconsistent per-block settings, not at the first call.
    return model

  @property
  def time_embed_dim(self) -> int:
    """Width T of the time embedding (and of ``added_time_embedding``)."""
    return self.time_embedding_dim or 4 * self.block_out_channels[0]

  def down_block_residual_shapes(self, batch: int, height: int,
                                 width: int) -> tuple[tuple[int, int, int, int], ...]:
    """Shapes of the ``down_block_additional_residuals`` for latents [batch, height, width, C]:
    block i takes ``[batch, height / 2**i, width / 2**i, block_out_channels[i]]``."""
    self._check_size(height, width)
    return tuple((batch, height >> i, width >> i, channels)
                 for i, channels in enumerate(self.block_out_channels))

  def _check_size(self, height: int, width: int):
    factor = 2 ** (len(self.block_out_channels) - 1)
    if height % factor or width % factor:
      raise ValueError(f"latent size {height}x{width} is not a multiple of {factor}, the "
                       f"UNet's total downsampling; crop or pad the latents")

  def _layout(self):
    """Per-block settings: (heads, layers, transformer layers, down/up block has attention)."""
    num_blocks = len(self.block_out_channels)
    down_attention = _has_attention(self.down_block_types, _DOWN_TYPES, "down_block_types")
    up_attention = _has_attention(self.up_block_types, _UP_TYPES, "up_block_types")
    if not len(down_attention) == len(up_attention) == num_blocks:
      raise ValueError(f"down_block_types ({len(down_attention)}), up_block_types "
                       f"({len(up_attention)}) and block_out_channels ({num_blocks}) must "
                       f"have one entry per resolution each")
    return (_per_block(self.num_attention_heads, num_blocks, "num_attention_heads"),
            _per_block(self.layers_per_block, num_blocks, "layers_per_block"),
            _per_block(self.transformer_layers_per_block, num_blocks,
                       "transformer_layers_per_block"),
            down_attention, up_attention)

  def _block(self, cls, deterministic_argnum: int):
    if not self.remat:
      return cls
    policy = None
    if self.remat_policy:
      policy = getattr(jax.checkpoint_policies, self.remat_policy, None)
      if policy is None:
        raise ValueError(f"remat_policy '{self.remat_policy}' is not a jax.checkpoint_policies "
                         f"name (e.g. 'dots_with_no_batch_dims_saveable', 'dots_saveable').")
    # deterministic is a Python bool deciding dropout: static under remat.
    return nn.remat(cls, static_argnums=(deterministic_argnum,), policy=policy)

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps: jax.Array,
               encoder_hidden_states: jax.Array, *,
               added_time_embedding: Optional[jax.Array] = None,
               down_block_additional_residuals: Optional[Sequence[jax.Array]] = None,
               deterministic: bool = True) -> jax.Array:
    """Predicts the diffusion target (epsilon or v, as trained) for noisy latents.

    Args:
      sample: [B, H, W, in_channels] noisy latents; H and W multiples of
        2**(len(block_out_channels) - 1).
      timesteps: [B] or a scalar (broadcast), int or float diffusion timesteps.
      encoder_hidden_states: [B, S, cross_attention_dim] text states.
      added_time_embedding: [B, time_embed_dim] or None: added to the time embedding after
        its MLP, before it reaches any block (ART·V's reference-noise-level embedding).
      down_block_additional_residuals: None, or one tensor per down block, shaped as
        :meth:`down_block_residual_shapes` says ([B, H/2**i, W/2**i, block_out_channels[i]]);
        tensor i is added to down block i's hidden state after its last resnet(+transformer)
        pair, before its downsampler, so it also enters that skip connection. This is
        diffusers' ``down_intrablock_additional_residuals`` (T2I-Adapter); for a plain
        DownBlock2D that has a downsampler diffusers adds it after the downsampler instead
        (its SD configs have none there, so the two agree on SD layouts).
      deterministic: False enables dropout (needs a 'dropout' rng) when ``dropout > 0``.

    Returns:
      [B, H, W, out_channels] float32.
    """
    num_blocks = len(self.block_out_channels)
    heads, layers, transformer_layers, down_attention, up_attention = self._layout()
    batch, height, width, channels = sample.shape
    if channels != self.in_channels:
      raise ValueError(f"sample has {channels} channels, the UNet takes {self.in_channels} "
                       f"(NHWC layout expected)")
    if encoder_hidden_states.shape[-1] != self.cross_attention_dim:
      raise ValueError(f"encoder_hidden_states have width {encoder_hidden_states.shape[-1]}, "
                       f"the UNet's cross_attention_dim is {self.cross_attention_dim}")
    residual_shapes = self.down_block_residual_shapes(batch, height, width)
    residuals = down_block_additional_residuals
    if residuals is None:
      residuals = (None,) * num_blocks
    elif tuple(tuple(r.shape) for r in residuals) != residual_shapes:
      raise ValueError(f"down_block_additional_residuals have shapes "
                       f"{[tuple(r.shape) for r in residuals]}, expected {residual_shapes}")

    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    block_kw = dict(use_linear_projection=self.use_linear_projection,
                    upcast_attention=self.upcast_attention, norm_groups=self.norm_num_groups,
                    norm_eps=self.norm_eps, dropout=self.dropout, attention=self.attention,
                    dense=self.dense, **kw)

    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
    features = timestep_features(timesteps, self.block_out_channels[0],
                                 flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift)
    temb = TimestepEmbedding(self.time_embed_dim, dense=self.dense, name="time_embedding",
                             **kw)(features)
    if added_time_embedding is not None:
      if added_time_embedding.shape != temb.shape:
        raise ValueError(f"added_time_embedding has shape {added_time_embedding.shape}, "
                         f"expected {temb.shape} ([B, time_embed_dim])")
      temb = temb + added_time_embedding.astype(temb.dtype)
    context = encoder_hidden_states.astype(self.dtype)

    x = Conv2D(self.block_out_channels[0], self.conv_in_kernel,
               padding=(self.conv_in_kernel - 1) // 2, name="conv_in", **kw)(sample)
    skips = [x]
    down_block = self._block(DownBlock, 5)
    for i, channels in enumerate(self.block_out_channels):
      x, block_skips = down_block(
          channels, num_layers=layers[i],
          num_attention_heads=heads[i] if down_attention[i] else None,
          transformer_layers=transformer_layers[i], add_downsample=i < num_blocks - 1,
          downsample_padding=self.downsample_padding, name=f"down_blocks_{i}", **block_kw)(
              x, temb, context, residuals[i], deterministic)
      skips.extend(block_skips)

    x = self._block(MidBlock, 4)(
        self.block_out_channels[-1], num_layers=1, num_attention_heads=heads[-1],
        transformer_layers=transformer_layers[-1], name="mid_block", **block_kw)(
            x, temb, context, deterministic)

    up_block = self._block(UpBlock, 5)
    for i, channels in enumerate(reversed(self.block_out_channels)):
      j = num_blocks - 1 - i  # The down block at this resolution.
      block_skips, skips = tuple(skips[-(layers[j] + 1):]), skips[:-(layers[j] + 1)]
      x = up_block(
          channels, num_layers=layers[j] + 1,
          num_attention_heads=heads[j] if up_attention[i] else None,
          transformer_layers=transformer_layers[j], add_upsample=i < num_blocks - 1,
          name=f"up_blocks_{i}", **block_kw)(x, block_skips, temb, context, deterministic)

    x = nn.GroupNorm(self.norm_num_groups, epsilon=self.norm_eps, use_fast_variance=False,
                     name="conv_norm_out", **kw)(x)
    x = Conv2D(self.out_channels, self.conv_out_kernel, padding=(self.conv_out_kernel - 1) // 2,
               name="conv_out", **kw)(nn.silu(x))
    return x.astype(jnp.float32)
