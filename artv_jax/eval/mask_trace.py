"""Where the mask lets ART·V draw, step by step: the diagnostic of masked diffusion (METHOD §2).

:func:`mask_trace` makes one frame after a given one (image-to-video under the given prompt),
with the sampler's own guidance and denoising step, and keeps the mask M of the guided (R, c)
branch at every step. :func:`write_mask_plots` draws them: one row of tiles (the reference
frame, M at each step from white = generate to black = copy the reference, the generated frame)
and the mean of M per step as a line plot.

A model that learned the method opens M over the object's old and new places and keeps it
shut on the static background; a mask that stays shut at the high-noise steps, where the
object's place is decided, means the network copies the reference there, whatever the prompt.
"""
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from artv_jax import paths, sampling, video_writer
from artv_jax.diffusion.schedule import Schedule
from artv_jax.eval import report
from artv_jax.models.artv import ARTV

_TILE = 4  # Upscaling of each tile: 32x32 frames become 128x128.
_GAP = 4  # White pixels between tiles.


class MaskTrace(NamedTuple):
  timesteps: np.ndarray  # [N] int, the denoising steps' t
  masks: np.ndarray  # [N, h, w] float in [0, 1], M of the guided branch at each step
  latent: np.ndarray  # [h, w, C] the generated frame's latent


_denoise = jax.jit(sampling.denoise_step, static_argnums=(0, 3))


def mask_trace(model: ARTV, params: Any, schedule: Schedule,
               settings: sampling.SamplerSettings, prompts: sampling.PromptTable,
               first_latent: jax.Array, rng: jax.Array) -> MaskTrace:
  """Frame 1 after ``first_latent`` [h, w, C] under ``prompts.text[0]``, with M of each step.

  The same computation as frame 1 of :func:`sampling.sample_chunk` from that frame (same
  randomness for the same ``rng``), one step at a time.
  """
  carry = sampling.carry_from_latents(first_latent[None], model.num_ref_frames, rng)
  noise_rng, aug_rng, step_rng = sampling.frame_rngs(carry.rng, carry.frame)
  inputs = sampling.frame_inputs(schedule, settings, prompts.text[0], prompts.null_text,
                                 carry.refs, carry.anchor, jnp.asarray(False), aug_rng)
  x = jax.random.normal(noise_rng, carry.anchor.shape, jnp.float32)
  solver_state = sampling.solver_init(settings, x)
  timesteps, next_timesteps = settings.timesteps(schedule.num_train_steps)
  masks = []
  for k, (t, t_next) in enumerate(zip(timesteps, next_timesteps)):
    x, solver_state, mask = _denoise(model, params, schedule, settings, inputs, x, solver_state,
                                     jnp.int32(t), jnp.int32(t_next),
                                     jax.random.fold_in(step_rng, k))
    masks.append(np.asarray(mask[..., 0]))
  return MaskTrace(np.asarray(timesteps), np.stack(masks), np.asarray(x))


def write_mask_plots(trace: MaskTrace, reference: np.ndarray, generated: np.ndarray,
                     prefix: paths.PathLike, title: str = "") -> dict[str, str]:
  """Writes ``prefix``_steps.png (reference, M per step, generated) and ``prefix``_mean.png.

  Args:
    trace: from :func:`mask_trace`.
    reference, generated: [H, W, 3] uint8 frames (decoded); masks are resized to their size.
    prefix: path without extension, local or a URI.
  """
  height, width = reference.shape[:2]

  def tile(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:  # a mask: grey levels, nearest-neighbour to the frame's size
      rows = np.arange(height) * image.shape[0] // height
      cols = np.arange(width) * image.shape[1] // width
      image = np.repeat(np.round(image[rows][:, cols] * 255).astype(np.uint8)[..., None], 3, -1)
    return video_writer.upscale(image[None], _TILE)[0]

  tiles = [tile(reference)] + [tile(m) for m in trace.masks] + [tile(generated)]
  side = height * _TILE
  row = np.full((width * _TILE, len(tiles) * (side + _GAP) - _GAP, 3), 255, np.uint8)
  for i, image in enumerate(tiles):
    row[:, i * (side + _GAP):i * (side + _GAP) + side] = image
  prefix = os.fspath(prefix)
  files = {"steps": prefix + "_steps.png", "mean": prefix + "_mean.png"}
  with paths.atomic_output(files["steps"]) as local:
    Image.fromarray(row).save(local)
  report.line_plot(files["mean"], {"mean M": trace.masks.mean(axis=(1, 2))},
                   title=title or "mask per denoising step",
                   xlabel=f"step (t = {trace.timesteps[0]} ... {trace.timesteps[-1]})",
                   ylabel="mean M")
  return files
