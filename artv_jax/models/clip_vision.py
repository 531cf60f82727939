"""CLIP's image tower and the two-tower CLIP model, in Flax (transformers' layout).

* :class:`CLIPVisionModel`: transformers' ``CLIPVisionModel``. A ViT: non-overlapping patches
  (a strided conv without bias) plus a learned class token and position embeddings, a
  LayerNorm (transformers spells it ``pre_layrnorm``), pre-LN transformer layers with
  bidirectional attention, and ``post_layernorm`` of the class token as the pooled output.
* :class:`CLIPVisionModelWithProjection`: the pooled output through ``visual_projection``
  (linear, no bias): the image embedding.
* :class:`CLIPModel`: both towers and both projections, as transformers' ``CLIPModel``; the
  text tower is :class:`artv_jax.models.clip_text.CLIPTextModel`, pooled at the end-of-text
  token. The image-text similarity of CLIP is the cosine of the two embeddings.

Parameter paths mirror the PyTorch state dicts (``vision_model.embeddings.class_embedding`` ->
``vision_model/embeddings/class_embedding``, ``visual_projection.weight`` ->
``visual_projection/kernel``), so :func:`artv_jax.checkpoints.rename.convert_state_dict` maps
them directly. transformers' ``logit_scale`` (the contrastive temperature) is not a parameter
here: similarities are plain cosines.
"""
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax.models.clip_text import CLIPEncoder, CLIPTextModel, activation

Dtype = Any
# transformers' configs before its PR #24773 carry eos_token_id=2; the end-of-text token is then
# found as the largest id in the sequence (it is the last entry of CLIP's vocabulary).
_LEGACY_EOS_TOKEN_ID = 2


class CLIPVisionEmbeddings(nn.Module):
  """Patch embeddings with a class token in front, plus learned position embeddings."""
  hidden_size: int
  image_size: int
  patch_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    """pixel_values: [B, S, S, C] (S = image_size) -> [B, 1 + (S/patch)^2, D]."""
    batch, height, width, _ = pixel_values.shape
    if (height, width) != (self.image_size, self.image_size):
      raise ValueError(f"images are {height}x{width}, the CLIP vision model takes "
                       f"{self.image_size}x{self.image_size}; resize them first "
                       f"(artv_jax.eval.clip_score.preprocess)")
    class_embedding = self.param("class_embedding", nn.initializers.normal(0.02),
                                 (self.hidden_size,), self.param_dtype)
    patches = nn.Conv(self.hidden_size, (self.patch_size,) * 2, (self.patch_size,) * 2,
                      padding="VALID", use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="patch_embedding")(pixel_values)
    patches = patches.reshape(batch, -1, self.hidden_size)  # Row-major, as torch's flatten.
    class_token = jnp.broadcast_to(class_embedding.astype(self.dtype),
                                   (batch, 1, self.hidden_size))
    x = jnp.concatenate([class_token, patches], axis=1)
    positions = nn.Embed(x.shape[1], self.hidden_size, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="position_embedding")(
                             jnp.arange(x.shape[1]))
    return x + positions


class CLIPVisionModel(nn.Module):
  """transformers' ``CLIPVisionModel``: images -> (last_hidden_state, pooled output).

  Field defaults are those of transformers' ``CLIPVisionConfig`` (ViT-B/32).
  """
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @classmethod
  def from_config(cls, config: Mapping[str, Any], **overrides) -> "CLIPVisionModel":
    """Builds the model from a transformers ``CLIPVisionConfig`` dict (its config.json).

    Args:
      config: fields it lacks take transformers' defaults.
      **overrides: module fields to set or replace, e.g. ``dtype=jnp.bfloat16``.

    Raises:
      ValueError: if ``config`` is not a CLIP vision config, or asks for a feature this port
        does not implement.
    """
    if "vision_config" in config:
      raise ValueError("config is a full CLIPConfig (it has 'vision_config'); pass "
                       "config['vision_config'], or use CLIPModel.from_config")
    model_type = config.get("model_type", "clip_vision_model")
    if model_type != "clip_vision_model":
      raise ValueError(f"config has model_type={model_type!r}; CLIPVisionModel.from_config "
                       f"needs a CLIPVisionConfig (model_type='clip_vision_model')")
    if config.get("num_channels", 3) != 3:
      raise ValueError(f"num_channels={config['num_channels']}: the port takes RGB images")
    if config.get("attention_dropout", 0.0):
      raise ValueError(f"attention_dropout={config['attention_dropout']} is not supported "
                       f"(the vision tower runs without dropout); set it to 0.0")
    activation(config.get("hidden_act", cls.hidden_act))  # Fail here, not at first call.
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "image_size", "patch_size", "hidden_act", "layer_norm_eps")
    kwargs = {name: config[name] for name in fields if name in config}
    return cls(**{**kwargs, **overrides})

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """pixel_values: [B, S, S, 3] (S = image_size), normalised with CLIP's mean and std ->
    (last_hidden_state [B, 1 + (S/patch_size)^2, D], pooled output [B, D])."""
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    x = CLIPVisionEmbeddings(self.hidden_size, self.image_size, self.patch_size,
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             name="embeddings")(pixel_values)
    x = CLIPEncoder(self.num_hidden_layers, self.num_attention_heads, self.intermediate_size,
                    self.hidden_act, self.layer_norm_eps, causal=False, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="encoder")(norm(name="pre_layrnorm")(x))
    return x, norm(name="post_layernorm")(x[:, 0])


class CLIPVisionModelWithProjection(nn.Module):
  """transformers' ``CLIPVisionModelWithProjection``: images [B, S, S, 3] -> image embeddings
  [B, projection_dim] (not normalised)."""
  vision_model: CLIPVisionModel
  projection_dim: int = 512
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @classmethod
  def from_config(cls, config: Mapping[str, Any],
                  **overrides) -> "CLIPVisionModelWithProjection":
    """From a ``CLIPVisionConfig`` dict with ``projection_dim``; ``overrides`` (dtype,
    param_dtype) apply to the whole model."""
    return cls(CLIPVisionModel.from_config(config, **overrides),
               config.get("projection_dim", cls.projection_dim), **overrides)

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    _, pooled = self.vision_model(pixel_values)
    return nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="visual_projection")(pooled)


class CLIPModel(nn.Module):
  """transformers' ``CLIPModel`` without ``logit_scale``: both towers and projections.

  Methods (``apply(..., method=...)``): :meth:`get_image_features`, :meth:`get_text_features`;
  ``__call__`` computes both (for ``init``). Embeddings are not normalised.

  Attributes:
    text_model: the text tower; its output is pooled at the end-of-text token.
    vision_model: the image tower.
    projection_dim: width of the joint embedding space.
    eos_token_id: the text config's end-of-text id (2 in legacy configs: see
      ``_LEGACY_EOS_TOKEN_ID``).
  """
  text_model: CLIPTextModel
  vision_model: CLIPVisionModel
  projection_dim: int = 512
  eos_token_id: int = 49407
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @classmethod
  def from_config(cls, config: Mapping[str, Any], **overrides) -> "CLIPModel":
    """Builds the model from a transformers ``CLIPConfig`` dict (its config.json).

    Args:
      config: with ``text_config``, ``vision_config`` and ``projection_dim``.
      **overrides: ``dtype`` / ``param_dtype``, applied to both towers.

    Raises:
      ValueError: if ``config`` is not a full CLIP config, or a tower asks for a feature the
        ports do not implement.
    """
    if config.get("model_type", "clip") != "clip" or "vision_config" not in config:
      raise ValueError(f"config (model_type={config.get('model_type')!r}) is not a full "
                       f"CLIPConfig with text_config and vision_config; CLIP similarity needs "
                       f"both towers, e.g. the folder of openai/clip-vit-large-patch14")
    text_config = config.get("text_config") or {}
    return cls(CLIPTextModel.from_config(text_config, **overrides),
               CLIPVisionModel.from_config(config["vision_config"], **overrides),
               config.get("projection_dim", cls.projection_dim),
               text_config.get("eos_token_id", cls.eos_token_id), **overrides)

  def setup(self):
    dense = functools.partial(nn.Dense, self.projection_dim, use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    self.visual_projection = dense()
    self.text_projection = dense()

  def get_image_features(self, pixel_values: jax.Array) -> jax.Array:
    """pixel_values: [B, S, S, 3], CLIP-normalised -> image embeddings [B, projection_dim]."""
    _, pooled = self.vision_model(pixel_values)
    return self.visual_projection(pooled)

  def get_text_features(self, input_ids: jax.Array) -> jax.Array:
    """input_ids: [B, L] int, each row holding an end-of-text token -> [B, projection_dim].

    Tokens after the end-of-text token (padding) do not change the result: the text tower is
    causal, so no attention mask is needed.
    """
    states = self.text_model(input_ids)  # [B, L, D]
    if self.eos_token_id == _LEGACY_EOS_TOKEN_ID:
      eos = jnp.argmax(input_ids, axis=-1)
    else:
      eos = jnp.argmax(input_ids == self.eos_token_id, axis=-1)  # First occurrence.
    pooled = jnp.take_along_axis(states, eos[:, None, None], axis=1)[:, 0]
    return self.text_projection(pooled)

  def __call__(self, input_ids: jax.Array,
               pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """-> (text embeddings [B_text, P], image embeddings [B_image, P])."""
    return self.get_text_features(input_ids), self.get_image_features(pixel_values)
