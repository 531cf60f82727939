"""Scaled dot-product attention, the core of every attention layer here, lowered per backend.

GPUs and TPUs take ``jax.nn.dot_product_attention``, which XLA can hand to a fused kernel
(cuDNN flash attention). On CPU that function is slow to differentiate: its softmax makes
several passes over the [B, N, T, S] weights, and autodiff produces products contracting
the major axis of those weights, which XLA:CPU's fast matmul (YNNPACK) does not take, so they
fall back to a matmul several times slower. :func:`dot_product_attention` does the same
math with a hand-written gradient whose products all have the layout the fast matmul takes,
and normalises the softmax on the [T, D] output instead of the [T, S] weights. Forward +
backward of 1024-token self-attention (2 x 2 heads of 32) on one core: 31 ms, against 112 ms
for ``jax.nn.dot_product_attention`` and 23 ms for PyTorch's fused flash-attention kernel,
which never writes the [T, S] weights to memory.
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
    [B, T, N, D] in query's dtype. On CPU the computation is float32 whatever the inputs.
  """
  if jax.default_backend() != "cpu":
    return jax.nn.dot_product_attention(query, key, value)
  heads_first = lambda x: jnp.swapaxes(x.astype(jnp.float32), 1, 2)  # [B, N, T, D]
  scale = np.float32(1 / np.sqrt(query.shape[-1]))
  out = _attention(heads_first(query) * scale, heads_first(key), heads_first(value))
  return jnp.swapaxes(out, 1, 2).astype(query.dtype)


@jax.custom_vjp
def _attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """q: [B, N, T, D] (already scaled), k, v: [B, N, S, D] -> [B, N, T, D]."""
  return _attention_fwd(q, k, v)[0]


def _attention_fwd(q, k, v):
  logits = jnp.einsum("bntd,bnsd->bnts", q, k)
  # The row max only keeps exp() from overflowing: any per-row shift cancels in the softmax.
  weights = jnp.exp(logits - logits.max(axis=-1, keepdims=True))  # Unnormalised softmax.
  total = weights.sum(axis=-1, keepdims=True)  # [B, N, T, 1]
  out = jnp.einsum("bnts,bnsd->bntd", weights, v) / total
  return out, (q, k, v, out, weights, total)


def _attention_bwd(residuals, d_out):
  q, k, v, out, weights, total = residuals
  d_out = d_out / total  # The normalisation, applied to the small [T, D] side.
  # P = weights / total. dL/dP = d_out v^T; through the softmax, dL/dlogits = P * (dL/dP -
  # rowsum(dL/dP * P)) and rowsum(d_out v^T * P) = rowsum(d_out * out).
  d_logits = weights * (jnp.einsum("bntd,bnsd->bnts", d_out, v)
                        - jnp.sum(d_out * out, axis=-1, keepdims=True))
  d_q = jnp.einsum("bnts,bnsd->bntd", d_logits, k)
  # dk = d_logits^T q and dv = P^T d_out contract the major axis of the [T, S] matrices;
  # computed transposed (q^T d_logits, d_out^T weights) they contract its minor axis.
  d_k = jnp.einsum("bndt,bnts->bnds", jnp.swapaxes(q, 2, 3), d_logits)
  d_v = jnp.einsum("bndt,bnts->bnds", jnp.swapaxes(d_out, 2, 3), weights)
  return d_q, jnp.swapaxes(d_k, 2, 3), jnp.swapaxes(d_v, 2, 3)


_attention.defvjp(_attention_fwd, _attention_bwd)
