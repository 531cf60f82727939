"""Attention layers of the UNet and VAE: multi-head attention, the GEGLU feed-forward, the
transformer block (self-attn, cross-attn to text, feed-forward) and its 2-D wrapper."""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax import kernels
from artv_jax.models.conv import Conv2D


class Attention(nn.Module):
  """Multi-head attention through :func:`artv_jax.kernels.dot_product_attention`.

  x: [B, T, C], context: [B, S, C_ctx] or None (self-attention) -> [B, T, query_dim].

  Attributes:
    query_dim: channels of x and of the output.
    heads, dim_head: the projection is ``heads * dim_head`` wide.
    qkv_bias: whether to_q/to_k/to_v have biases (False in the UNet, True in the VAE).
    upcast: compute attention in float32 even when ``dtype`` is lower (SD2's
      ``upcast_attention``; always on for the VAE).
    implementation: lowering of the attention core ('auto', 'xla', 'cudnn', 'cpu_blocked';
      :mod:`artv_jax.kernels.attention`).
    dense: lowering of the projections ('auto', 'xla', 'cpu'; :mod:`artv_jax.kernels.dense`).
  """
  query_dim: int
  heads: int
  dim_head: int
  qkv_bias: bool = False
  upcast: bool = False
  implementation: str = "auto"
  dense: str = "auto"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: Optional[jax.Array] = None) -> jax.Array:
    context = x if context is None else context
    inner = self.heads * self.dim_head
    dense = lambda features, bias, name: nn.Dense(
        features, use_bias=bias, dot_general=kernels.dense_dot_general(self.dense),
        dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    split_heads = lambda t: t.reshape(t.shape[:2] + (self.heads, self.dim_head))
    q = split_heads(dense(inner, self.qkv_bias, "to_q")(x))  # [B, T, N, D]
    k = split_heads(dense(inner, self.qkv_bias, "to_k")(context))  # [B, S, N, D]
    v = split_heads(dense(inner, self.qkv_bias, "to_v")(context))
    if self.upcast:
      q, k, v = (t.astype(jnp.float32) for t in (q, k, v))
    out = kernels.dot_product_attention(q, k, v, self.implementation).astype(self.dtype)
    out = out.reshape(out.shape[:2] + (inner,))
    return dense(self.query_dim, True, "to_out_0")(out)


class GEGLU(nn.Module):
  """proj to 2x features, then value * gelu(gate): [B, T, C] -> [B, T, features]."""
  features: int
  dense: str = "auto"  # lowering of proj (Attention.dense)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    proj = nn.Dense(2 * self.features, dot_general=kernels.dense_dot_general(self.dense),
                    dtype=self.dtype, param_dtype=self.param_dtype, name="proj")
    value, gate = jnp.split(proj(x), 2, axis=-1)
    return value * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """GEGLU (net.0) -> dropout (net.1) -> linear (net.2): [B, T, C] -> [B, T, C]."""
  dim: int
  mult: int = 4
  dropout: float = 0.0
  dense: str = "auto"  # lowering of the linear layers (Attention.dense)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = GEGLU(self.dim * self.mult, dense=self.dense, name="net_0", **kw)(x)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(self.dim, dot_general=kernels.dense_dot_general(self.dense), name="net_2",
                    **kw)(h)


class BasicTransformerBlock(nn.Module):
  """Pre-LN self-attention, cross-attention to the text, feed-forward; each residual.

  x: [B, T, C], context: [B, S, C_ctx] -> [B, T, C].
  """
  dim: int
  heads: int
  dim_head: int
  upcast_attention: bool = False
  dropout: float = 0.0
  attention: str = "auto"  # lowering of the attention core (Attention.implementation)
  dense: str = "auto"  # lowering of the linear layers (Attention.dense)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, deterministic: bool = True) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attention = lambda name: Attention(self.dim, self.heads, self.dim_head,
                                       upcast=self.upcast_attention,
                                       implementation=self.attention, dense=self.dense,
                                       name=name, **kw)
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, name=name, **kw)
    x = x + attention("attn1")(norm("norm1")(x))
    x = x + attention("attn2")(norm("norm2")(x), context)
    return x + FeedForward(self.dim, dropout=self.dropout, dense=self.dense, name="ff", **kw)(
        norm("norm3")(x), deterministic)


class Transformer2DModel(nn.Module):
  """GroupNorm, proj_in, transformer blocks over the H*W tokens, proj_out, residual.

  x: [B, H, W, C], context: [B, S, C_ctx] -> [B, H, W, C]. ``use_linear_projection``
  selects linear (SD2) or 1x1-conv (SD1) projections; the two are the same map, but the
  checkpoint stores them differently.
  """
  heads: int
  dim_head: int
  num_layers: int = 1
  use_linear_projection: bool = False
  upcast_attention: bool = False
  norm_groups: int = 32
  dropout: float = 0.0
  attention: str = "auto"  # lowering of the attention core (Attention.implementation)
  dense: str = "auto"  # lowering of the linear layers (Attention.dense)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, deterministic: bool = True) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, h, w, c = x.shape
    inner = self.heads * self.dim_head
    proj = lambda features, name: (
        nn.Dense(features, dot_general=kernels.dense_dot_general(self.dense), name=name, **kw)
        if self.use_linear_projection
        else Conv2D(features, 1, name=name, **kw))
    residual = x
    x = nn.GroupNorm(self.norm_groups, epsilon=1e-6, use_fast_variance=False, name="norm",
                     **kw)(x)
    x = proj(inner, "proj_in")(x).reshape(b, h * w, inner)
    for i in range(self.num_layers):
      x = BasicTransformerBlock(inner, self.heads, self.dim_head, self.upcast_attention,
                                self.dropout, self.attention, self.dense,
                                name=f"transformer_blocks_{i}", **kw)(x, context, deterministic)
    x = proj(c, "proj_out")(x.reshape(b, h, w, inner))
    return x + residual
