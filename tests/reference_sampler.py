"""The ART·V sampler as a plain Python loop: the check of `sampling.sample_chunk`'s scan
bookkeeping (tests) and the Python-loop alternative it is timed against (benchmarks/sampler.py)."""
import bisect
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from artv_jax import sampling
from artv_jax.diffusion.schedule import Schedule
from artv_jax.models.artv import ARTV

_jitted_denoise_step = jax.jit(sampling.denoise_step, static_argnums=(0, 3))


def sample_reference(model: ARTV, params: Any, schedule: Schedule,
                     settings: sampling.SamplerSettings, prompts: sampling.PromptTable,
                     rng: jax.Array, num_frames: int, latent_shape: Sequence[int],
                     given_latents: Optional[jax.Array] = None) -> jax.Array:
  """The sampler as a plain Python loop over frames and over a jitted denoising step.

  Same randomness as `sampling.sample_chunk`; kept deliberately simple (a list of frames, Python
  prompt lookup) so that it checks the scan's bookkeeping, and times the Python-loop
  alternative in benchmarks/sampler.py.

  Returns:
    latents [num_frames, h, w, C], the given ones first.
  """
  starts = [int(s) for s in prompts.starts]
  frames = [] if given_latents is None else list(jnp.asarray(given_latents, jnp.float32))
  anchor = frames[0] if frames else jnp.zeros(tuple(latent_shape), jnp.float32)
  k = model.num_ref_frames
  timesteps, next_timesteps = settings.timesteps(schedule.num_train_steps)
  for i in range(len(frames), num_frames):
    noise_rng, aug_rng, step_rng = sampling.frame_rngs(rng, i)
    if frames:
      refs = jnp.stack([frames[max(len(frames) - 1 - j, 0)] for j in range(k)])
    else:
      refs = jnp.zeros((k,) + anchor.shape, jnp.float32)
    text = prompts.text[bisect.bisect_right(starts, i) - 1]
    inputs = sampling.frame_inputs(schedule, settings, text, prompts.null_text, refs, anchor,
                          jnp.asarray(not frames), aug_rng)
    x = jax.random.normal(noise_rng, anchor.shape, jnp.float32)
    solver_state = sampling.solver_init(settings, x)
    for n, (t, t_next) in enumerate(zip(timesteps, next_timesteps)):
      x, solver_state, _ = _jitted_denoise_step(model, params, schedule, settings, inputs, x,
                                                solver_state, jnp.int32(t), jnp.int32(t_next),
                                                jax.random.fold_in(step_rng, n))
    if not frames or (settings.reset_anchor_on_prompt_change and i in starts[1:]):
      anchor = x
    frames.append(x)
  return jnp.stack(frames)
