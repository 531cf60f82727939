"""DDIM sampling (Song et al., 2021), step for step as diffusers' DDIMScheduler.

One step from timestep t to the less noisy t_prev, with (x̂0, ε̂) predicted at t:

    x_{t_prev} = α_prev x̂0 + sqrt(1 − ᾱ_prev − s²) ε̂ + s z,
    s = η sqrt((1 − ᾱ_prev) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_prev)),

η = 0 deterministic (DDIM), η = 1 the DDPM posterior variance. A negative t_prev stands for
"after the last step", where ᾱ_prev is the schedule's final_alpha_cumprod.
"""
import jax
import jax.numpy as jnp
import numpy as np

from artv_jax.diffusion.schedule import Schedule, expand_to, predict_x0_and_eps

SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(num_train_steps: int, num_inference_steps: int, spacing: str = "leading",
                   steps_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The timesteps of an N-step DDIM run and the timestep each step moves to.

  Matches diffusers' ``DDIMScheduler.set_timesteps`` (timesteps) and ``step`` (which always moves
  to t − T // N; negative after the last step). ``steps_offset`` applies to 'leading' only, as in
  diffusers. Spacings follow "Common Diffusion Noise Schedules and Sample Steps are Flawed",
  table 2: 'leading' (SD's default) starts at about T − T/N, 'trailing' at T − 1.

  Returns:
    (timesteps, prev_timesteps): each [N] int32, in sampling order (decreasing).
  """
  n, big_t = num_inference_steps, num_train_steps
  if not 0 < n <= big_t:
    raise ValueError(f"num_inference_steps={n} must be in [1, num_train_steps={big_t}].")
  if spacing == "leading":
    timesteps = np.arange(n)[::-1] * (big_t // n) + steps_offset
  elif spacing == "trailing":
    timesteps = np.round(np.arange(big_t, 0, -big_t / n)) - 1
  elif spacing == "linspace":
    timesteps = np.round(np.linspace(0, big_t - 1, n))[::-1]
  else:
    raise ValueError(f"timestep spacing '{spacing}' is not supported; use one of {SPACINGS}.")
  timesteps = timesteps.astype(np.int32)
  return timesteps, timesteps - big_t // n


def ddim_step(schedule: Schedule,
              model_output: jax.Array,
              t: jax.Array,
              t_prev: jax.Array,
              x_t: jax.Array,
              *,
              prediction_type: str,
              eta: float | jax.Array = 0.0,
              noise: jax.Array | None = None,
              clip_sample: bool = False,
              clip_sample_range: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """One DDIM step from x_t at timestep t to timestep t_prev.

  Args:
    schedule: the noise schedule.
    model_output: [B, H, W, C] network output at (x_t, t), ε or v per prediction_type.
    t: [] or [B] int current timestep.
    t_prev: [] or [B] int timestep to move to; negative after the last step.
    x_t: [B, H, W, C] current sample.
    prediction_type: 'epsilon' or 'v_prediction'.
    eta: stochasticity η (0: deterministic DDIM).
    noise: [B, H, W, C] standard normal z; required unless eta is the number 0.
    clip_sample: clip x̂0 to ±clip_sample_range (diffusers' clip_sample; ε̂ is left as
      predicted, as diffusers does by default).
    clip_sample_range: the clip bound.

  Returns:
    (x_prev, x0): the sample at t_prev and the x̂0 predicted at t, each like x_t.
  """
  if noise is None and not (isinstance(eta, (int, float)) and eta == 0):
    raise ValueError("ddim_step with eta != 0 needs noise=: pass a standard normal array "
                     "shaped like x_t.")
  x0, eps = predict_x0_and_eps(schedule, model_output, x_t, t, prediction_type)
  if clip_sample:
    x0 = jnp.clip(x0, -clip_sample_range, clip_sample_range)
  alpha_bar = schedule.alphas_cumprod[t]
  alpha_bar_prev = jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)],
                             schedule.final_alpha_cumprod)
  variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
  std = eta * jnp.sqrt(variance)
  x_prev = (expand_to(jnp.sqrt(alpha_bar_prev), x0) * x0
            + expand_to(jnp.sqrt(1 - alpha_bar_prev - std ** 2), eps) * eps)
  if noise is not None:
    x_prev = x_prev + expand_to(std, noise) * noise
  return x_prev.astype(x_t.dtype), x0
