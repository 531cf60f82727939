"""The attention dispatcher: 'auto' per backend, config errors, what cuDNN takes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.kernels import attention
from artv_jax.kernels.attention import dot_product_attention
from artv_jax.kernels.cpu_blocked_attention import blocked_attention


def _qkv(batch=1, tokens=9, keys=5, heads=2, width=16):
  rng = np.random.default_rng(0)
  q = rng.standard_normal((batch, tokens, heads, width))
  k, v = (rng.standard_normal((batch, keys, heads, width)) for _ in range(2))
  return tuple(jnp.asarray(a, jnp.float32) for a in (q, k, v))


def test_auto_is_the_blocked_form_on_cpu_and_xla_elsewhere():
  assert attention.resolve_implementation("auto", "cpu") == "cpu_blocked"
  assert attention.resolve_implementation("auto", "gpu") == "xla"
  assert attention.resolve_implementation("auto", "tpu") == "xla"


def test_each_implementation_calls_its_kernel():
  assert jax.default_backend() == "cpu"  # 'auto' below is the blocked form.
  q, k, v = _qkv()
  np.testing.assert_array_equal(dot_product_attention(q, k, v), blocked_attention(q, k, v))
  np.testing.assert_array_equal(dot_product_attention(q, k, v, "cpu_blocked"),
                                blocked_attention(q, k, v))
  np.testing.assert_array_equal(dot_product_attention(q, k, v, "xla"),
                                jax.nn.dot_product_attention(q, k, v))


def test_cudnn_off_a_gpu_and_unknown_names_are_config_errors():
  with pytest.raises(ValueError, match="config.model.attention 'cudnn' needs a GPU"):
    attention.resolve_implementation("cudnn", "cpu")
  with pytest.raises(ValueError, match="config.model.attention 'flash' is not one of"):
    attention.resolve_implementation("flash", "gpu")
  assert attention.resolve_implementation("cudnn", "gpu") == "cudnn"


def test_cudnn_takes_half_precision_heads_up_to_128_wide():
  half = jnp.zeros((1, 4, 2, 64), jnp.bfloat16)
  assert attention.cudnn_supports(half, half)
  assert not attention.cudnn_supports(half.astype(jnp.float32), half.astype(jnp.float32))
  wide = jnp.zeros((1, 4, 1, 512), jnp.bfloat16)  # The VAE's one 512-wide head.
  assert not attention.cudnn_supports(wide, wide)
