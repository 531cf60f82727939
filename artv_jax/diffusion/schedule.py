"""The discrete variance-preserving noise schedule of Stable Diffusion, and its algebra.

A training step t in [0, T) has noise level ᾱ_t = prod_{s<=t} (1 - β_s) and

    x_t = α_t x0 + σ_t ε,    α_t = sqrt(ᾱ_t),  σ_t = sqrt(1 - ᾱ_t).

A network predicts either ε ('epsilon') or the velocity v = α_t ε − σ_t x0 ('v_prediction',
SD 2.x 768-v); :func:`predict_x0_and_eps` turns either into the pair (x0, ε) the samplers and
the masked loss work with, and :func:`prediction_target` turns a pair back.

Every function takes the timestep ``t`` as an int array (a scalar, or [B] for one timestep per
example) that may be traced, and broadcasts it over trailing NHWC axes of the data.
"""
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@struct.dataclass
class Schedule:
  """Noise schedule arrays; a pytree, so it can be passed into jitted functions.

  Attributes:
    betas: [T] float32 per-step noise variances β_t.
    alphas_cumprod: [T] float32 ᾱ_t.
    final_alpha_cumprod: [] float32 ᾱ used by DDIM after its last step (diffusers'
      ``set_alpha_to_one``: 1.0 if set, else ᾱ_0).
    prediction_type: what the network trained on this schedule predicts ('epsilon' or
      'v_prediction'); pass it on as the ``prediction_type=`` argument of the functions here.
  """
  betas: jax.Array
  alphas_cumprod: jax.Array
  final_alpha_cumprod: jax.Array
  prediction_type: str = struct.field(pytree_node=False, default="epsilon")

  @property
  def num_train_steps(self) -> int:
    return self.betas.shape[0]


def check_prediction_type(prediction_type: str) -> None:
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"prediction_type '{prediction_type}' is not supported; use one of "
                     f"{PREDICTION_TYPES}.")


def _cosine_betas(num_train_steps: int, max_beta: float = 0.999) -> np.ndarray:
  """Betas discretising the squared-cosine ᾱ(t) of improved DDPM (Nichol & Dhariwal)."""
  def alpha_bar(u):
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([
      min(1 - alpha_bar((i + 1) / num_train_steps) / alpha_bar(i / num_train_steps), max_beta)
      for i in range(num_train_steps)])


# Stable Diffusion 1.x/2.x's training schedule, as a diffusers scheduler config.
SD_SCHEDULER_CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                       "num_train_timesteps": 1000, "set_alpha_to_one": False,
                       "prediction_type": "epsilon"}


def make_schedule(beta_schedule: str = SD_SCHEDULER_CONFIG["beta_schedule"],
                  beta_start: float = SD_SCHEDULER_CONFIG["beta_start"],
                  beta_end: float = SD_SCHEDULER_CONFIG["beta_end"],
                  num_train_steps: int = SD_SCHEDULER_CONFIG["num_train_timesteps"],
                  *,
                  trained_betas=None,
                  set_alpha_to_one: bool = SD_SCHEDULER_CONFIG["set_alpha_to_one"],
                  prediction_type: str = SD_SCHEDULER_CONFIG["prediction_type"]) -> Schedule:
  """Builds a schedule; the defaults are Stable Diffusion 1.x/2.x's.

  The products are taken in float64 (as the original latent-diffusion code does) and stored as
  float32; they agree with diffusers' float32 cumprod to about 5e-7.
  """
  check_prediction_type(prediction_type)
  if trained_betas is not None:
    betas = np.asarray(trained_betas, np.float64)
  elif beta_schedule == "linear":
    betas = np.linspace(beta_start, beta_end, num_train_steps)
  elif beta_schedule == "scaled_linear":
    # Linear in sqrt(β): the latent-diffusion schedule.
    betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_steps) ** 2
  elif beta_schedule == "squaredcos_cap_v2":
    betas = _cosine_betas(num_train_steps)
  else:
    raise ValueError(f"beta_schedule '{beta_schedule}' is not supported; use one of "
                     f"{BETA_SCHEDULES} or pass trained_betas.")
  alphas_cumprod = np.cumprod(1.0 - betas)
  final_alpha_cumprod = 1.0 if set_alpha_to_one else alphas_cumprod[0]
  return Schedule(betas=jnp.asarray(betas, jnp.float32),
                  alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
                  final_alpha_cumprod=jnp.asarray(final_alpha_cumprod, jnp.float32),
                  prediction_type=prediction_type)


def schedule_from_config(config: Mapping[str, Any]) -> Schedule:
  """Builds the schedule a diffusers ``scheduler_config.json`` describes.

  Missing fields take diffusers' DDIMScheduler defaults (so ``from_config`` semantics match).
  Sampler settings in the file (timestep_spacing, steps_offset, clip_sample, ...) are not part
  of the schedule; the sampler reads them from its own config.

  Raises:
    ValueError: naming the field, for a beta schedule, prediction type or schedule feature
      (thresholding, zero-terminal-SNR rescaling) we do not implement.
  """
  if config.get("thresholding", False):
    raise ValueError("scheduler config sets thresholding=true (dynamic thresholding, meant for "
                     "pixel-space models); it is not supported: set it to false.")
  if config.get("rescale_betas_zero_snr", False):
    raise ValueError("scheduler config sets rescale_betas_zero_snr=true; zero-terminal-SNR "
                     "schedules are not supported: set it to false.")
  prediction_type = config.get("prediction_type", "epsilon")
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"scheduler config has prediction_type '{prediction_type}'; only "
                     f"{PREDICTION_TYPES} are supported.")
  beta_schedule = config.get("beta_schedule", "linear")
  if config.get("trained_betas") is None and beta_schedule not in BETA_SCHEDULES:
    raise ValueError(f"scheduler config has beta_schedule '{beta_schedule}'; only "
                     f"{BETA_SCHEDULES} are supported.")
  return make_schedule(beta_schedule,
                       config.get("beta_start", 0.0001),
                       config.get("beta_end", 0.02),
                       config.get("num_train_timesteps", 1000),
                       trained_betas=config.get("trained_betas"),
                       set_alpha_to_one=config.get("set_alpha_to_one", True),
                       prediction_type=prediction_type)


def expand_to(a: jax.Array, x: jax.Array) -> jax.Array:
  """Appends unit axes to a per-example array ([] or [B]) so it broadcasts against x."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def alpha_sigma(schedule: Schedule, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(α_t, σ_t) = (sqrt(ᾱ_t), sqrt(1 − ᾱ_t)), each shaped like t."""
  alpha_bar = schedule.alphas_cumprod[t]
  return jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Noises clean data to step t: α_t x0 + σ_t ε.

  Args:
    schedule: the noise schedule.
    x0: [B, H, W, C] clean data.
    t: [] or [B] int timesteps.
    noise: [B, H, W, C] standard normal ε.
  """
  alpha, sigma = alpha_sigma(schedule, t)
  return expand_to(alpha, x0) * x0 + expand_to(sigma, x0) * noise


def prediction_target(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array,
                      prediction_type: str) -> jax.Array:
  """What a network of the given type should output for x_t = q_sample(x0, t, noise).

  'epsilon': ε;  'v_prediction': v = α_t ε − σ_t x0.
  """
  check_prediction_type(prediction_type)
  if prediction_type == "epsilon":
    return noise
  alpha, sigma = alpha_sigma(schedule, t)
  return expand_to(alpha, x0) * noise - expand_to(sigma, x0) * x0


def predict_x0_and_eps(schedule: Schedule, output: jax.Array, x_t: jax.Array, t: jax.Array,
                       prediction_type: str) -> tuple[jax.Array, jax.Array]:
  """Converts a network output at step t into the predicted clean data and noise.

  Args:
    schedule: the noise schedule.
    output: [B, H, W, C] network output, ε or v according to prediction_type.
    x_t: [B, H, W, C] the noisy input the network saw.
    t: [] or [B] int timesteps.
    prediction_type: 'epsilon' or 'v_prediction'.

  Returns:
    (x0, eps), each [B, H, W, C].
  """
  check_prediction_type(prediction_type)
  alpha, sigma = alpha_sigma(schedule, t)
  alpha, sigma = expand_to(alpha, x_t), expand_to(sigma, x_t)
  if prediction_type == "epsilon":
    return (x_t - sigma * output) / alpha, output
  # x_t = α x0 + σ ε and v = α ε − σ x0 with α² + σ² = 1: a rotation, inverted by its transpose.
  return alpha * x_t - sigma * output, alpha * output + sigma * x_t
