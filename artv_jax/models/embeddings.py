"""Sinusoidal timestep features and the MLP that turns them into the UNet's time embedding."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax import kernels


def timestep_features(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool,
                      freq_shift: float, max_period: float = 10000.0) -> jax.Array:
  """Transformer-style sinusoidal features of diffusion timesteps.

  Args:
    timesteps: [B] (float or int) diffusion timesteps.
    dim: feature size; an odd size gets one zero column.
    flip_sin_to_cos: order [cos, sin] instead of [sin, cos] (True for SD).
    freq_shift: shifts the frequency denominator (``half - freq_shift``; 1 for SD, 0 for
      the OpenAI layout).

  Returns:
    [B, dim] float32 features.
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  angles = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  features = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    features = jnp.pad(features, ((0, 0), (0, 1)))
  return features


class TimestepEmbedding(nn.Module):
  """linear_1 -> SiLU -> linear_2: [B, C_in] -> [B, features]."""
  features: int
  dense: str = "auto"  # lowering of the linear layers ('auto', 'xla', 'cpu'; kernels.dense)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda name: nn.Dense(self.features, dot_general=kernels.dense_dot_general(self.dense),
                                  dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    return dense("linear_2")(nn.silu(dense("linear_1")(x)))
