"""Conv2D against ``torch.nn.functional.conv2d``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

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


def _torch_conv(x, kernel, strides, padding) -> np.ndarray:
  """The same convolution in PyTorch (NCHW, OIHW), padded explicitly: [B, H', W', C_out]."""
  (top, bottom), (left, right) = ((padding,) * 2,) * 2 if isinstance(padding, int) else padding
  x = torch.nn.functional.pad(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)),
                              (left, right, top, bottom))
  weight = torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())
  return torch.nn.functional.conv2d(x, weight, stride=strides).numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("kernel_size,strides,padding", CASES)
def test_conv2d_matches_torch(kernel_size, strides, padding):
  x, kernel = _operands(kernel_size)
  np.testing.assert_allclose(conv2d(x, kernel, strides, padding),
                             _torch_conv(x, kernel, strides, padding), atol=1e-5, rtol=1e-5)


def test_conv2d_module_has_torch_parameter_names_and_adds_the_bias():
  x, _ = _operands(3)
  module = Conv2D(7, 3, strides=2, padding=1)
  params = module.init(jax.random.key(0), x)["params"]
  assert jax.tree.map(jnp.shape, params) == {"kernel": (3, 3, 5, 7), "bias": (7,)}
  bias = jnp.arange(7.0)
  out = module.apply({"params": {"kernel": params["kernel"], "bias": bias}}, x)
  np.testing.assert_allclose(out, conv2d(x, params["kernel"], 2, 1) + bias, atol=1e-6)


def test_conv2d_rejects_non_square_kernel():
  x, _ = _operands(3)
  with pytest.raises(ValueError, match="square"):
    conv2d(x, jnp.zeros((3, 1, 5, 7)))
