"""The ART·V network (METHOD.md §1-3): the SD UNet plus a light reference pathway and a mask head.

    refs [B, K, h, w, 4] + anchor [B, h, w, 4]
        └─ reference pathway ─┬─ 'adapter': ReferenceAdapter -> one feature map per down block,
                              │             added to the UNet's down-block outputs
                              └─ 'concat':  channel-concatenated to the UNet input (conv_in widened)
    ref noise level s [B] ─ sinusoid ─ MLP (last layer zero) ─> added to the time embedding
    text [B, S, D] ─ mean over tokens ─ MLP (last layer zero) ─> added too (optional)
    UNet(x_t, t, text) ─ conv_out with one extra channel m ─> (ε_θ or v_θ, M = sigmoid(m))

Every new parameter starts as a no-op (zero output convs, zero input weights, zero last layer of
the noise-level MLP, mask bias high), so at step 0 ART·V is the pretrained text-to-image UNet:
exactly, when the references are dropped (``keep_refs`` False), which is how the first frame of
a text-to-video sample is made. The masked combination with the reference frame is pure math:
:func:`artv_jax.diffusion.masked_loss.masked_prediction`.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from artv_jax import kernels
from artv_jax.models.conv import Conv2D
from artv_jax.models.embeddings import timestep_features
from artv_jax.models.unet import UNet2DConditionModel

REFERENCE_PATHWAYS = ("adapter", "concat")


class ReferenceAdapter(nn.Module):
  """T2I-Adapter-style encoder of the reference frames.

  x: [B, h, w, C_cond] (references and anchor, concatenated on channels) -> one feature map per
  UNet down block i, [B, h / 2^i, w / 2^i, out_channels[i]], through zero-initialised 1x1 convs.

  Attributes:
    out_channels: the UNet's block_out_channels.
    width_divisor: the adapter runs at out_channels[i] // width_divisor channels.
  """
  out_channels: Sequence[int]
  width_divisor: int = 4
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    widths = [max(c // self.width_divisor, 8) for c in self.out_channels]
    h = Conv2D(widths[0], 3, padding=1, name="conv_in", **kw)(x)
    features = []
    for i, (width, channels) in enumerate(zip(widths, self.out_channels)):
      if i > 0:
        h = Conv2D(width, 3, strides=2, padding=1, name=f"downsamplers_{i}", **kw)(h)
      # Norm-free residual block, as T2I-Adapter's light blocks: the references' absolute
      # intensities are the signal.
      r = Conv2D(width, 3, padding=1, name=f"blocks_{i}_conv1", **kw)(nn.silu(h))
      h = h + Conv2D(width, 3, padding=1, name=f"blocks_{i}_conv2", **kw)(nn.silu(r))
      features.append(Conv2D(channels, 1, kernel_init=nn.initializers.zeros,
                             name=f"zero_convs_{i}", **kw)(h))
    return features


class ARTV(nn.Module):
  """ART·V: next-frame denoiser conditioned on text, previous frame(s) and the anchor frame.

  Attributes:
    unet: the (pretrained) SD UNet, configured with ``out_channels = latent + 1`` when
      ``use_mask`` and, for the 'concat' pathway, with ``in_channels`` widened by
      :func:`artv_unet`.
    latent_channels: channels of a frame latent (4 for SD).
    num_ref_frames: K previous frames used as references.
    use_anchor: also condition on the anchor (first) frame.
    use_mask: predict the mask M; if False, M ≡ 1 (plain auto-regressive diffusion).
    use_ref_noise_embedding: embed the reference noise level s into the time embedding.
    reference_pathway: 'adapter' or 'concat'.
    adapter_width_divisor: see ReferenceAdapter.
    use_text_time_embedding: add the text states, averaged over tokens, to the time embedding
      (diffusers' addition_embed_type='text' does the same with attention pooling): a global
      text pathway beside cross-attention, for small models trained from scratch (the demo).
      Not part of SD: off for pretrained UNets.
  """
  unet: UNet2DConditionModel
  latent_channels: int = 4
  num_ref_frames: int = 1
  use_anchor: bool = True
  use_mask: bool = True
  use_ref_noise_embedding: bool = True
  reference_pathway: str = "adapter"
  adapter_width_divisor: int = 4
  use_text_time_embedding: bool = False

  @nn.compact
  def __call__(self, x_t: jax.Array, t: jax.Array, text: jax.Array, refs: jax.Array,
               anchor: jax.Array, ref_noise_level: jax.Array, keep_refs: jax.Array,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """Predicts the denoiser output and the mask.

    Args:
      x_t: [B, h, w, C] noisy latent of the frame being generated.
      t: [B] int diffusion timesteps.
      text: [B, S, D] text encoder states.
      refs: [B, K, h, w, C] (noise-augmented) latents of the previous frames, nearest first.
      anchor: [B, h, w, C] (noise-augmented) latent of the anchor frame.
      ref_noise_level: [B] int noise level s of the references.
      keep_refs: [B] bool; False drops references and anchor (the T2I / CFG-null branch).

    Returns:
      (output [B, h, w, C] float32 ε_θ or v_θ, mask [B, h, w, 1] float32 in [0, 1]).
    """
    if self.reference_pathway not in REFERENCE_PATHWAYS:
      raise ValueError(f"reference_pathway '{self.reference_pathway}' is not one of "
                       f"{REFERENCE_PATHWAYS}.")
    unet = self.unet
    keep = keep_refs.astype(unet.dtype)
    b, h, w, c = x_t.shape
    cond = refs[:, :self.num_ref_frames].transpose(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    if self.use_anchor:
      cond = jnp.concatenate([cond, anchor], axis=-1)
    cond = cond.astype(unet.dtype) * keep[:, None, None, None]

    residuals, added_temb = None, None
    if self.reference_pathway == "adapter":
      residuals = ReferenceAdapter(unet.block_out_channels, self.adapter_width_divisor,
                                   dtype=unet.dtype, param_dtype=unet.param_dtype,
                                   name="adapter")(cond)
      residuals = [r * keep[:, None, None, None] for r in residuals]
    else:
      x_t = jnp.concatenate([x_t.astype(unet.dtype), cond], axis=-1)
    if self.use_ref_noise_embedding:
      s = timestep_features(ref_noise_level, unet.block_out_channels[0],
                            flip_sin_to_cos=unet.flip_sin_to_cos, freq_shift=unet.freq_shift)
      added_temb = self._time_embedding_mlp(s, "ref_noise_embedding") * keep[:, None]
    if self.use_text_time_embedding:
      pooled = jnp.mean(text.astype(unet.dtype), axis=1)  # [B, D]
      u = self._time_embedding_mlp(pooled, "text_time_embedding")
      added_temb = u if added_temb is None else added_temb + u

    out = unet(x_t, t, text, added_time_embedding=added_temb,
               down_block_additional_residuals=residuals, deterministic=deterministic)
    out = out.astype(jnp.float32)
    output = out[..., :self.latent_channels]
    if not self.use_mask:
      return output, jnp.ones((b, h, w, 1), jnp.float32)
    mask = jax.nn.sigmoid(out[..., self.latent_channels:self.latent_channels + 1])
    keep = keep_refs[:, None, None, None]
    return output, jnp.where(keep, mask, 1.0)

  def _time_embedding_mlp(self, x: jax.Array, name: str) -> jax.Array:
    """[B, F] -> [B, time_embed_dim]: Dense, SiLU, Dense with a zero kernel (a no-op at
    start). Called from ``__call__``, so its layers ``{name}_linear_{1,2}`` belong to ART·V;
    they take the UNet's dense lowering."""
    unet = self.unet
    kw = dict(dot_general=kernels.dense_dot_general(unet.dense), dtype=unet.dtype,
              param_dtype=unet.param_dtype)
    h = nn.silu(nn.Dense(unet.time_embed_dim, name=f"{name}_linear_1", **kw)(x))
    return nn.Dense(unet.time_embed_dim, kernel_init=nn.initializers.zeros,
                    name=f"{name}_linear_2", **kw)(h)

  @property
  def cond_channels(self) -> int:
    """Channels of the reference-pathway input (K references and the anchor)."""
    return self.latent_channels * (self.num_ref_frames + int(self.use_anchor))


def artv_unet(unet: UNet2DConditionModel, *, num_ref_frames: int, use_anchor: bool,
              use_mask: bool, reference_pathway: str) -> UNet2DConditionModel:
  """The SD UNet reshaped for ART·V: one more output channel (the mask logit) and, for the
  'concat' pathway, the reference channels appended to the input."""
  latent = unet.out_channels
  in_channels = unet.in_channels
  if reference_pathway == "concat":
    in_channels += latent * (num_ref_frames + int(use_anchor))
  return unet.clone(in_channels=in_channels, out_channels=latent + int(use_mask))


def init_artv_params(model: ARTV, rng: jax.Array, latent_hw: tuple[int, int], text_len: int,
                     *, mask_bias: float = 4.0,
                     pretrained_unet: Optional[Any] = None) -> dict:
  """Initial ART·V parameters: new parts as no-ops, the UNet from ``pretrained_unet`` if given.

  The pretrained UNet's widened layers are grafted: conv_in's new input channels get zero
  weights, conv_out's extra (mask) channel a zero kernel and bias ``mask_bias`` (M ≈ 1 at start:
  sigmoid(4) = 0.98, so training starts from the image model's behaviour).

  Args:
    model: the ARTV module.
    rng: PRNG key.
    latent_hw: (h, w) latent size to initialise with.
    text_len: S, tokens of the text states.
    mask_bias: initial mask logit.
    pretrained_unet: params of the SD UNet (as converted by artv_jax.convert), or None to train
      from scratch.

  Returns:
    The params tree {'unet': ..., 'adapter': ..., ...}.
  """
  h, w = latent_hw
  c = model.latent_channels
  unet = model.unet
  args = (jnp.zeros((1, h, w, c)), jnp.zeros((1,), jnp.int32),
          jnp.zeros((1, text_len, unet.cross_attention_dim)),
          jnp.zeros((1, model.num_ref_frames, h, w, c)), jnp.zeros((1, h, w, c)),
          jnp.zeros((1,), jnp.int32), jnp.ones((1,), bool))
  params = jax.jit(model.init)(rng, *args)["params"]
  flat = traverse_util.flatten_dict(params)
  if pretrained_unet is not None:
    for path, old in traverse_util.flatten_dict(pretrained_unet).items():
      new = flat.get(("unet",) + path)
      if new is None:
        raise ValueError(f"pretrained UNet has parameter '{'/'.join(path)}' which the ART·V "
                         "UNet lacks: were they built from the same config?")
      if new.shape != old.shape:
        # A widened conv_in / conv_out: pretrained part in place, new part zero.
        old = jnp.zeros(new.shape, new.dtype).at[tuple(slice(0, n) for n in old.shape)].set(old)
      flat[("unet",) + path] = jnp.asarray(old, new.dtype)
  if model.use_mask:
    kernel, bias = ("unet", "conv_out", "kernel"), ("unet", "conv_out", "bias")
    flat[kernel] = flat[kernel].at[..., c:].set(0.0)
    flat[bias] = flat[bias].at[c:].set(mask_bias)
  return traverse_util.unflatten_dict(flat)
