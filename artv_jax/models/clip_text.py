"""The CLIP text encoder of Stable Diffusion: transformers' ``CLIPTextModel`` in Flax.

A pre-LayerNorm transformer over token + learned position embeddings, with causal self-attention
and a final LayerNorm. The output is ``last_hidden_state`` [B, L, D], which the UNet
cross-attends to.

SD1 and SD2 differ only by config:

* SD1 (OpenAI CLIP ViT-L/14): ``hidden_act='quick_gelu'``, 12 layers, D = 768; SD1 conditions on
  the last layer's output after the final LayerNorm.
* SD2 (OpenCLIP ViT-H/14): ``hidden_act='gelu'``, D = 1024; SD2 conditions on the *penultimate*
  layer's output followed by the final LayerNorm. Diffusers-format SD2 checkpoints store the
  text encoder with its last layer already removed (``num_hidden_layers=23`` of 24), so the
  same forward pass gives the penultimate layer + final LayerNorm with no special case here.

Module names mirror the transformers state dict without its ``text_model.`` prefix
(``embeddings.token_embedding.weight`` -> ``embeddings/token_embedding/embedding``,
``encoder.layers.0.self_attn.q_proj.weight`` -> ``encoder/layers_0/self_attn/q_proj/kernel``,
``final_layer_norm.weight`` -> ``final_layer_norm/scale``), so
:func:`artv_jax.checkpoints.rename.convert_state_dict` maps it directly.
"""
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's sigmoid approximation of GELU."""
  return x * jax.nn.sigmoid(1.702 * x)


# transformers' 'gelu' is torch's default, exact (erf) GELU, not the tanh approximation.
_ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function transformers' ``hidden_act`` string names."""
  if name not in _ACTIVATIONS:
    raise ValueError(f"hidden_act={name!r} is not supported by the CLIP text encoder; "
                     f"use one of {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


class CLIPTextEmbeddings(nn.Module):
  """Token embedding plus learned absolute position embedding."""
  vocab_size: int
  hidden_size: int
  max_position_embeddings: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    """input_ids: [B, L] int -> embeddings [B, L, D]."""
    length = input_ids.shape[1]
    if length > self.max_position_embeddings:
      raise ValueError(f"input_ids has {length} tokens but the text encoder has only "
                       f"max_position_embeddings={self.max_position_embeddings} positions; "
                       f"tokenize with max_length={self.max_position_embeddings}")
    embed = functools.partial(nn.Embed, features=self.hidden_size, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    tokens = embed(self.vocab_size, name="token_embedding")(input_ids)  # [B, L, D]
    positions = embed(self.max_position_embeddings, name="position_embedding")(
        jnp.arange(length))  # [L, D]
    return tokens + positions


class CLIPAttention(nn.Module):
  """Multi-head self-attention: causal in the text tower, over all tokens in the image tower."""
  num_heads: int
  causal: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D] -> [B, L, D]."""
    batch, length, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"hidden_size={width} is not divisible by "
                       f"num_attention_heads={self.num_heads}")
    dense = functools.partial(nn.Dense, width, dtype=self.dtype, param_dtype=self.param_dtype)
    heads = (batch, length, self.num_heads, width // self.num_heads)
    q = dense(name="q_proj")(x).reshape(heads)  # [B, L, heads, head_dim]
    k = dense(name="k_proj")(x).reshape(heads)
    v = dense(name="v_proj")(x).reshape(heads)
    # Default scale 1/sqrt(head_dim), as CLIP; XLA may pick a fused kernel.
    out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
    return dense(name="out_proj")(out.reshape(x.shape))


class CLIPMLP(nn.Module):
  """Two-layer feed-forward block."""
  intermediate_size: int
  hidden_act: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D] -> [B, L, D]."""
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    h = activation(self.hidden_act)(dense(self.intermediate_size, name="fc1")(x))
    return dense(x.shape[-1], name="fc2")(h)


class CLIPEncoderLayer(nn.Module):
  """Pre-LN transformer layer: x + attn(LN(x)), then x + mlp(LN(x))."""
  num_attention_heads: int
  intermediate_size: int
  hidden_act: str
  layer_norm_eps: float
  causal: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D] -> [B, L, D]."""
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    attn = CLIPAttention(self.num_attention_heads, self.causal, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="self_attn")
    mlp = CLIPMLP(self.intermediate_size, self.hidden_act, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="mlp")
    x = x + attn(norm(name="layer_norm1")(x))
    return x + mlp(norm(name="layer_norm2")(x))


class CLIPEncoder(nn.Module):
  """A stack of ``num_hidden_layers`` encoder layers, each optionally rematerialised.

  ``causal=False`` gives the image tower's encoder (attention over all tokens).
  """
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  hidden_act: str
  layer_norm_eps: float
  causal: bool = True
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D] -> [B, L, D]."""
    layer = nn.remat(CLIPEncoderLayer) if self.remat else CLIPEncoderLayer
    for i in range(self.num_hidden_layers):
      x = layer(self.num_attention_heads, self.intermediate_size, self.hidden_act,
                self.layer_norm_eps, self.causal, dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"layers_{i}")(x)
    return x


class CLIPTextModel(nn.Module):
  """transformers' ``CLIPTextModel``: input_ids [B, L] -> last_hidden_state [B, L, D].

  Field defaults are those of transformers' ``CLIPTextConfig``. Build from a checkpoint's
  ``text_encoder/config.json`` with :meth:`from_config`; the weights come from the converter.
  For SD2, ``num_hidden_layers`` is one less than OpenCLIP's (see the module docstring), so
  the output is the penultimate layer followed by ``final_layer_norm``, as diffusers uses it.

  Attributes:
    remat: rematerialise each encoder layer in the backward pass (saves activation memory).
    dtype: compute dtype; the output has this dtype.
    param_dtype: dtype of the parameters.
  """
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @classmethod
  def from_config(cls, config: Mapping[str, Any], **overrides) -> "CLIPTextModel":
    """Builds the model from a transformers ``CLIPTextConfig`` dict (its config.json).

    Args:
      config: ``CLIPTextModel.config.to_dict()`` or the parsed ``text_encoder/config.json``;
        fields it lacks take transformers' defaults.
      **overrides: module fields to set or replace, e.g. ``dtype=jnp.bfloat16, remat=True``.

    Raises:
      ValueError: if ``config`` is not a CLIP text config, or asks for a feature this port
        does not implement.
    """
    if "text_config" in config:
      raise ValueError("config is a full CLIPConfig (it has 'text_config'); pass "
                       "config['text_config'], the config of the text tower alone")
    model_type = config.get("model_type", "clip_text_model")
    if model_type != "clip_text_model":
      raise ValueError(f"config has model_type={model_type!r}; CLIPTextModel.from_config "
                       f"needs a CLIPTextConfig (model_type='clip_text_model')")
    if config.get("attention_dropout", 0.0):
      raise ValueError(f"attention_dropout={config['attention_dropout']} is not supported "
                       f"(the text encoder runs without dropout); set it to 0.0")
    activation(config.get("hidden_act", cls.hidden_act))  # Fail here, not at first call.
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps")
    kwargs = {name: config[name] for name in fields if name in config}
    return cls(**{**kwargs, **overrides})

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    """input_ids: [B, L] int32 -> last_hidden_state [B, L, hidden_size] (after final LN)."""
    x = CLIPTextEmbeddings(self.vocab_size, self.hidden_size, self.max_position_embeddings,
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           name="embeddings")(input_ids)
    x = CLIPEncoder(self.num_hidden_layers, self.num_attention_heads, self.intermediate_size,
                    self.hidden_act, self.layer_norm_eps, remat=self.remat, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="encoder")(x)
    return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="final_layer_norm")(x)
