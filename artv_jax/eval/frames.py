"""Frame conventions shared by the feature-network metrics (FVD, CLIP similarity).

Frames arrive as uint8 in [0, 255] (decoded videos, what the video writer stores) or as floats
in [-1, 1] (the VAE's and the data pipeline's range); the dtype tells which. Both networks
then see the shorter side resized to their input size and the centre cropped, as the reference
FVD and CLIP pipelines do.
"""
import jax
import jax.numpy as jnp


def to_unit_interval(frames: jax.Array) -> jax.Array:
  """frames [...] uint8 in [0, 255] or float in [-1, 1] -> float32 in [0, 1] (clipped)."""
  if jnp.issubdtype(frames.dtype, jnp.integer):
    if frames.dtype != jnp.uint8:
      raise ValueError(f"integer frames must be uint8 in [0, 255], got {frames.dtype}")
    return frames.astype(jnp.float32) / 255.0
  return jnp.clip((frames.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def resize_center_crop(frames: jax.Array, size: int, method: str) -> jax.Array:
  """Resizes the shorter side to ``size`` and crops the centre square.

  Args:
    frames: [..., H, W, C].
    size: the output side.
    method: ``jax.image.resize`` method ('bilinear', 'cubic', ...). Upsampling matches
      torch's ``F.interpolate(..., align_corners=False)``; downsampling is antialiased.

  Returns:
    [..., size, size, C].
  """
  height, width = frames.shape[-3:-1]
  short = min(height, width)
  # The long side rounds up (ceil in integers), as the reference FVD preprocessing does.
  new_height, new_width = -(-height * size // short), -(-width * size // short)
  if (new_height, new_width) != (height, width):
    frames = jax.image.resize(frames, (*frames.shape[:-3], new_height, new_width,
                                       frames.shape[-1]), method)
  top, left = (new_height - size) // 2, (new_width - size) // 2
  return frames[..., top:top + size, left:left + size, :]
