"""The mask diagnostic: it traces the frame the sampler makes, and draws every step's mask."""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from artv_jax import sampling, video_writer
from artv_jax.eval import mask_trace
from tests.test_sampling import LATENT, SETTINGS, assert_close_to_video, tiny  # noqa: F401


def test_mask_trace_makes_the_sampler_s_frame_and_draws_each_step(tiny, tmp_path):
  model, params, schedule, table = tiny
  first, rng = jax.random.normal(jax.random.key(4), LATENT), jax.random.key(3)
  trace = mask_trace.mask_trace(model, params, schedule, SETTINGS, table, first, rng)
  carry = sampling.carry_from_latents(first[None], model.num_ref_frames, rng)
  _, latents, last_mask_means = sampling.sample_chunk(model, params, schedule, SETTINGS, table,
                                                      carry, jnp.int32(2), num_frames=1)
  assert_close_to_video(trace.latent, latents[0])
  assert trace.masks.shape == (SETTINGS.num_steps,) + LATENT[:2]
  np.testing.assert_allclose(trace.masks[-1].mean(), last_mask_means[0], rtol=1e-5)

  frame = video_writer.to_uint8(np.asarray(first))
  paths = mask_trace.write_mask_plots(trace, frame, frame, str(tmp_path / "mask"))
  steps = np.asarray(Image.open(paths["steps"]))
  tiles = SETTINGS.num_steps + 2  # reference, each step's mask, generated
  side = LATENT[0] * 4
  assert steps.shape == (side, tiles * side + (tiles - 1) * 4, 3)
  expected_mask = np.round(trace.masks[0][0, 0] * 255)  # top-left pixel of the first mask
  assert abs(int(steps[0, side + 4, 0]) - expected_mask) <= 1
  assert Image.open(paths["mean"]).size == (640, 400)
