"""Conv2D's im2col lowering against the native ``lax.conv_general_dilated``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.models.conv import Conv2D, conv2d

CASES = [  # kernel_size, strides, padding
    (3, 1, 1),
    (3, 2, 1),
    (3, 2, ((0, 1), (0, 1))),  # The VAE encoder's downsampler.
    (3, 1, ((2, 0), (1, 3))),
    (1, 1, 0),
    (1, 2, 0),
]


def _operands(kernel_size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, 9, 8, 5), dtype=np.float32)  # Odd size: strides leave a rim.
  kernel = rng.standard_normal((kernel_size, kernel_size, 5, 7), dtype=np.float32)
  return jnp.asarray(x), jnp.asarray(kernel)


def _native(x, kernel, strides, padding):
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  return jax.lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("kernel_size,strides,padding", CASES)
def test_im2col_matches_lax_conv(kernel_size, strides, padding):
  x, kernel = _operands(kernel_size)
  np.testing.assert_allclose(conv2d(x, kernel, strides, padding, im2col=True),
                             _native(x, kernel, strides, padding), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel_size,strides,padding", CASES)
def test_im2col_gradients_match_lax_conv(kernel_size, strides, padding):
  x, kernel = _operands(kernel_size)
  # A nonlinear loss, so the output cotangent differs from element to element.
  grads = lambda conv: jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), (0, 1))(x, kernel)
  ours = grads(lambda x, k: conv2d(x, k, strides, padding, im2col=True))
  ref = grads(lambda x, k: _native(x, k, strides, padding))
  for name, a, b in zip(("input", "kernel"), ours, ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5, err_msg=f"gradient w.r.t. {name}")


def test_conv2d_module_lowerings_agree_and_share_parameters():
  x, _ = _operands(3)
  module = Conv2D(7, 3, strides=2, padding=1)
  params = module.init(jax.random.key(0), x)["params"]
  assert jax.tree.map(jnp.shape, params) == {"kernel": (3, 3, 5, 7), "bias": (7,)}
  params = {"kernel": params["kernel"], "bias": jnp.arange(7.0)}
  im2col, native = (module.clone(im2col=im2col).apply({"params": params}, x)
                    for im2col in (True, False))
  np.testing.assert_allclose(im2col, native, atol=1e-5, rtol=1e-5)


def test_conv2d_rejects_non_square_kernel():
  x, _ = _operands(3)
  with pytest.raises(ValueError, match="square"):
    conv2d(x, jnp.zeros((3, 1, 5, 7)))
