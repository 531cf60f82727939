"""The blocked CPU attention against ``jax.nn.dot_product_attention``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.kernels import cpu_blocked_attention
from artv_jax.kernels.cpu_blocked_attention import blocked_attention

SHAPES = [  # batch, query tokens, key tokens, heads, head width
    (2, 7, 7, 3, 8),  # Self-attention.
    (1, 9, 5, 2, 16),  # Cross-attention: fewer keys than queries.
    (2, 32, 32, 2, 8),  # Split into query blocks by `blocked` below.
]


@pytest.fixture(params=[False, True], ids=["whole", "blocked"])
def blocked(request, monkeypatch):
  if request.param:  # Blocks of 8 queries for the last shape (32 keys x 2 x 2 x 4 bytes each).
    monkeypatch.setattr(cpu_blocked_attention, "BLOCK_BYTES", 8 * 32 * 2 * 2 * 4)
  return request.param


def test_query_block_size_halves_until_the_weights_fit():
  assert cpu_blocked_attention.query_block_size(1024, 16 * 1024, 4 * 2**20) == 256
  assert cpu_blocked_attention.query_block_size(256, 16 * 256, 4 * 2**20) == 256  # Fits whole.
  assert cpu_blocked_attention.query_block_size(12, 1000, 1000) == 3  # Stops at an odd block.


def _qkv(batch, tokens, keys, heads, width, dtype=np.float32):
  rng = np.random.default_rng(0)
  q = 3 * rng.standard_normal((batch, tokens, heads, width))  # Peaked softmax rows.
  k, v = (rng.standard_normal((batch, keys, heads, width)) for _ in range(2))
  return tuple(jnp.asarray(a, dtype) for a in (q, k, v))


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_jax_nn(shape, blocked):
  q, k, v = _qkv(*shape)
  np.testing.assert_allclose(blocked_attention(q, k, v),
                             jax.nn.dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_jax_nn(shape, blocked):
  q, k, v = _qkv(*shape)
  # A nonlinear loss, so the output cotangent differs from element to element.
  grads = lambda attend: jax.grad(lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v))),
                                  (0, 1, 2))(q, k, v)
  for name, ours, ref in zip("qkv", grads(blocked_attention),
                             grads(jax.nn.dot_product_attention)):
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-4, err_msg=f"gradient w.r.t. {name}")


def test_bfloat16_in_bfloat16_out_close_to_float32():
  q, k, v = _qkv(*SHAPES[0], dtype=jnp.bfloat16)
  out = blocked_attention(q, k, v)
  assert out.dtype == jnp.bfloat16
  ref = jax.nn.dot_product_attention(*(t.astype(jnp.float32) for t in (q, k, v)))
  np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=2e-2)


def test_large_logits_do_not_overflow():
  q, k, v = _qkv(*SHAPES[0])
  out = blocked_attention(100 * q, k, v)  # Logits in the thousands: exp() would overflow.
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(out, jax.nn.dot_product_attention(100 * q, k, v), atol=1e-4)
