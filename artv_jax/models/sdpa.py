"""Scaled dot-product attention, the core of every attention layer here, lowered per backend.

GPUs and TPUs take ``jax.nn.dot_product_attention``, which XLA can hand to a fused kernel
(cuDNN flash attention). On CPU, XLA runs that function's softmax as several passes over the
[B, N, T, S] weights plus layout copies of them in the backward pass; the form below does
the same math in fewer passes over that, the largest tensor of the layer (about 2x faster
forward + backward on the SD UNet's 1024-token self-attention).
"""
import jax
import jax.numpy as jnp
import numpy as np


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(D)) v, per head, without masking.

  Args:
    query: [B, T, N, D].
    key, value: [B, S, N, D].

  Returns:
    [B, T, N, D] in query's dtype. Logits and the softmax are float32 whatever the input
    dtype, as in ``jax.nn.dot_product_attention``.
  """
  if jax.default_backend() != "cpu":
    return jax.nn.dot_product_attention(query, key, value)
  scale = np.float32(1 / np.sqrt(query.shape[-1])).astype(query.dtype)
  logits = jnp.einsum("btnd,bsnd->bnts", query * scale, key,
                      preferred_element_type=jnp.float32)  # [B, N, T, S]
  # Any per-row constant cancels in the softmax; the row max keeps exp() from overflowing,
  # and held constant it costs no gradient.
  logits = logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
  weights = jnp.exp(logits)  # Unnormalised softmax.
  out = jnp.einsum("bnts,bsnd->btnd", weights.astype(value.dtype), value,
                   preferred_element_type=jnp.float32)  # [B, T, N, D]
  # Normalising the [B, T, N, D] output instead of the [B, N, T, S] weights.
  normaliser = jnp.swapaxes(weights.sum(axis=-1), 1, 2)[..., None]  # [B, T, N, 1]
  return (out / normaliser).astype(query.dtype)
