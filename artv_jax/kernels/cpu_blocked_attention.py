"""Scaled dot-product attention for XLA:CPU: a query block at a time, hand-written gradient.

``jax.nn.dot_product_attention`` is slow to differentiate on XLA:CPU: its softmax makes
several passes over the [B, N, T, S] weights, and autodiff produces products contracting the
major axis of those weights, which XLA:CPU's fast matmul (YNNPACK) does not take.
:func:`blocked_attention` does the same math with a hand-written gradient whose products all
have the layout the fast matmul takes, normalises the softmax on the [T, D] output instead of
the [T, S] weights, and goes through the queries a block at a time (a loop XLA keeps rolled),
so the weights of one block stay in cache and the backward pass recomputes them from q and k
instead of reading them back, as flash attention does.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

# Largest [B, N, block, S] float32 weights of one query block: fits a core's L2 + its share
# of L3; bigger blocks spill, much smaller ones make too many small matmuls.
BLOCK_BYTES = 4 * 2**20


def blocked_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(D)) v, per head, without masking, computed in float32.

  Args:
    query: [B, T, N, D].
    key, value: [B, S, N, D].

  Returns:
    [B, T, N, D] in query's dtype.
  """
  batch, tokens, heads, _ = query.shape
  heads_first = lambda x: jnp.swapaxes(x.astype(jnp.float32), 1, 2)  # [B, N, T, D]
  scale = np.float32(1 / np.sqrt(query.shape[-1]))
  block = query_block_size(tokens, batch * heads * key.shape[1] * 4, BLOCK_BYTES)
  out = _attention(heads_first(query) * scale, heads_first(key), heads_first(value), block)
  return jnp.swapaxes(out, 1, 2).astype(query.dtype)


def query_block_size(tokens: int, bytes_per_query: int, budget: int) -> int:
  """The largest T / 2^k (a divisor of T) whose weights take at most `budget` bytes."""
  block = tokens
  while block * bytes_per_query > budget and block % 2 == 0:
    block //= 2
  return block


def _split_queries(x: jax.Array, block: int) -> jax.Array:
  """[B, N, T, D] -> [T / block, B, N, block, D]."""
  b, n, t, d = x.shape
  return jnp.moveaxis(x.reshape(b, n, t // block, block, d), 2, 0)


def _merge_queries(x: jax.Array) -> jax.Array:
  """[T / block, B, N, block, D] -> [B, N, T, D]."""
  blocks, b, n, block, d = x.shape
  return jnp.moveaxis(x, 0, 2).reshape(b, n, blocks * block, d)


def _row_reduce(x: jax.Array, combine) -> jax.Array:
  """Reduces the last axis (keeping it, of size 1) by halving it while it is long, combining
  the two halves elementwise: XLA:CPU lowers a long row reduction to a reduce-window that is
  slower than these elementwise halvings."""
  while x.shape[-1] > 8 and x.shape[-1] % 2 == 0:
    half = x.shape[-1] // 2
    x = combine(x[..., :half], x[..., half:])
  return functools.reduce(combine, [x[..., i:i + 1] for i in range(x.shape[-1])])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, block: int) -> jax.Array:
  """q: [B, N, T, D] (already scaled), k, v: [B, N, S, D] -> [B, N, T, D]."""
  return _attention_fwd(q, k, v, block)[0]


def _attention_fwd(q, k, v, block):
  def attend(q_block):
    logits = jnp.einsum("bntd,bnsd->bnts", q_block, k)
    # The row max only keeps exp() from overflowing: any per-row shift cancels in the softmax.
    row_max = _row_reduce(logits, jnp.maximum)
    weights = jnp.exp(logits - row_max)  # Unnormalised softmax.
    total = _row_reduce(weights, jnp.add)  # [B, N, block, 1]
    return jnp.einsum("bnts,bnsd->bntd", weights, v) / total, row_max, total

  out, row_max, total = jax.lax.map(attend, _split_queries(q, block))
  return _merge_queries(out), (q, k, v, out, row_max, total)


def _attention_bwd(block, residuals, d_out):
  q, k, v, out, row_max, total = residuals

  def backward(d_kv, xs):
    q_block, d_out_block, out_block, row_max_block, total_block = xs
    weights = jnp.exp(jnp.einsum("bntd,bnsd->bnts", q_block, k) - row_max_block)
    d_out_block = d_out_block / total_block  # The normalisation, on the small [T, D] side.
    # P = weights / total. dL/dP = d_out v^T; through the softmax, dL/dlogits = P * (dL/dP -
    # rowsum(dL/dP * P)) and rowsum(d_out v^T * P) = rowsum(d_out * out).
    d_logits = weights * (jnp.einsum("bntd,bnsd->bnts", d_out_block, v)
                          - jnp.sum(d_out_block * out_block, axis=-1, keepdims=True))
    d_q = jnp.einsum("bnts,bnsd->bntd", d_logits, k)
    # dk = d_logits^T q and dv = P^T d_out contract the major axis of the [T, S] matrices;
    # computed transposed (q^T d_logits, d_out^T weights) they contract its minor axis.
    # The barrier keeps XLA from folding the (small) transposes back into the products.
    q_t, d_out_t = jax.lax.optimization_barrier(
        (jnp.swapaxes(q_block, 2, 3), jnp.swapaxes(d_out_block, 2, 3)))
    d_k, d_v = d_kv
    d_k += jnp.einsum("bndt,bnts->bnds", q_t, d_logits)
    d_v += jnp.einsum("bndt,bnts->bnds", d_out_t, weights)
    return (d_k, d_v), d_q

  zeros = jnp.zeros(k.shape[:2] + k.shape[3:] + k.shape[2:3], k.dtype)  # [B, N, D, S]
  (d_k, d_v), d_q = jax.lax.scan(
      backward, (zeros, zeros),
      (_split_queries(q, block), _split_queries(d_out, block), out, row_max, total))
  return _merge_queries(d_q), jnp.swapaxes(d_k, 2, 3), jnp.swapaxes(d_v, 2, 3)


_attention.defvjp(_attention_fwd, _attention_bwd)
