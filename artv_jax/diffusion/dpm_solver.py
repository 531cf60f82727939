"""DPM-Solver++(2M) (Lu et al., 2022): a deterministic second-order multistep sampler.

It integrates the diffusion ODE in log-SNR time λ = log(α/σ) with the data prediction x̂0.
From timestep s0 to t, with h = λ_t − λ_s0 and the previous step's prediction at s1:

    x_t = (σ_t/σ_s0) x_s0 − α_t (e^{−h} − 1) (D0 + D1/2),
    D0 = x̂0(s0),  D1 = (x̂0(s0) − x̂0(s1)) · h / (λ_s0 − λ_s1).

The first step has no history and the last (to σ = 0, the clean sample) is numerically safer
first order (D1 = 0): diffusers' DPMSolverMultistepScheduler with solver_order=2,
algorithm_type='dpmsolver++', solver_type='midpoint', lower_order_final=True,
final_sigmas_type='zero'. The previous prediction travels in :class:`DPMSolverState`, so a
whole run is one ``lax.scan``.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from artv_jax.diffusion.schedule import Schedule, alpha_sigma, expand_to, predict_x0_and_eps

SPACINGS = ("linspace", "leading", "trailing")


@struct.dataclass
class DPMSolverState:
  """What a DPM-Solver++(2M) step needs from the step before it.

  Attributes:
    x0: [B, H, W, C] the previous step's data prediction x̂0 (unused before the first step).
    t: [] int timestep at which x0 was predicted; negative before the first step.
  """
  x0: jax.Array
  t: jax.Array


def dpm_solver_init(x_t: jax.Array) -> DPMSolverState:
  """The state before the first step (no history: that step is first order)."""
  return DPMSolverState(x0=jnp.zeros_like(x_t), t=jnp.array(-1, jnp.int32))


def dpm_solver_timesteps(num_train_steps: int, num_inference_steps: int,
                         spacing: str = "linspace",
                         steps_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The timesteps of an N-step run and the timestep each step moves to.

  Matches diffusers' ``DPMSolverMultistepScheduler.set_timesteps`` (default spacing
  'linspace'; ``steps_offset`` applies to 'leading' only). Unlike DDIM, each step moves to the
  next timestep of the list, and the last one to the clean sample (marked -1).

  Returns:
    (timesteps, next_timesteps): each [N] int32, in sampling order (decreasing).
  """
  n, big_t = num_inference_steps, num_train_steps
  if not 0 < n <= big_t:
    raise ValueError(f"num_inference_steps={n} must be in [1, num_train_steps={big_t}].")
  # 'linspace' and 'leading' place N + 1 points down to 0 and drop the 0, which the final step
  # to σ = 0 replaces.
  if spacing == "linspace":
    timesteps = np.round(np.linspace(0, big_t - 1, n + 1))[::-1][:-1]
  elif spacing == "leading":
    timesteps = np.arange(n + 1)[::-1][:-1] * (big_t // (n + 1)) + steps_offset
  elif spacing == "trailing":
    timesteps = np.round(np.arange(big_t, 0, -big_t / n)) - 1
  else:
    raise ValueError(f"timestep spacing '{spacing}' is not supported; use one of {SPACINGS}.")
  timesteps = timesteps.astype(np.int32)
  return timesteps, np.append(timesteps[1:], -1).astype(np.int32)


def _alpha_sigma_or_clean(schedule: Schedule, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(α_t, σ_t), with a negative t meaning the clean sample (α = 1, σ = 0)."""
  alpha, sigma = alpha_sigma(schedule, jnp.maximum(t, 0))
  return jnp.where(t >= 0, alpha, 1.0), jnp.where(t >= 0, sigma, 0.0)


def dpm_solver_step(schedule: Schedule,
                    state: DPMSolverState,
                    model_output: jax.Array,
                    t: jax.Array,
                    t_next: jax.Array,
                    x_t: jax.Array,
                    *,
                    prediction_type: str,
                    clip_sample: bool = False) -> tuple[jax.Array, DPMSolverState]:
  """One DPM-Solver++(2M) step from x_t at timestep t to t_next.

  Args:
    schedule: the noise schedule.
    state: the previous step's prediction (``dpm_solver_init`` before the first step).
    model_output: [B, H, W, C] network output at (x_t, t), ε or v per prediction_type.
    t: [] int current timestep.
    t_next: [] int timestep to move to; negative for the clean sample (the last step).
    x_t: [B, H, W, C] current sample.
    prediction_type: 'epsilon' or 'v_prediction'.
    clip_sample: clip x̂0 to [-1, 1] (for models of pixels; diffusers' nearest option is
      its dynamic ``thresholding``).

  Returns:
    (x_next, state): the sample at t_next, and the state for the next step.
  """
  x0, _ = predict_x0_and_eps(schedule, model_output, x_t, t, prediction_type)
  if clip_sample:
    x0 = jnp.clip(x0, -1.0, 1.0)
  alpha_s0, sigma_s0 = alpha_sigma(schedule, t)
  alpha_t, sigma_t = _alpha_sigma_or_clean(schedule, t_next)
  alpha_s1, sigma_s1 = _alpha_sigma_or_clean(schedule, state.t)
  second_order = (state.t >= 0) & (t_next >= 0)
  # e^{-h} = (σ_t/α_t)/(σ_s0/α_s0) stays finite at σ_t = 0, where λ_t = +inf.
  exp_neg_h = (sigma_t * alpha_s0) / (alpha_t * sigma_s0)
  # λ = log(α/σ) enters only through h / h_0 in second-order steps; elsewhere σ_t or σ_s1 may be 0,
  # so take the log of a harmless 1 there and keep every value finite.
  def lambda_(alpha, sigma):
    return jnp.log(jnp.where(second_order, alpha / sigma, 1.0))
  lambda_s0 = lambda_(alpha_s0, sigma_s0)
  h = lambda_(alpha_t, sigma_t) - lambda_s0
  h_0 = lambda_s0 - lambda_(alpha_s1, sigma_s1)
  d1_weight = jnp.where(second_order, 0.5 * h / h_0, 0.0)
  d = x0 + d1_weight * (x0 - state.x0)
  x_next = (expand_to(sigma_t / sigma_s0, x_t) * x_t
            - expand_to(alpha_t * (exp_neg_h - 1.0), d) * d)
  return x_next.astype(x_t.dtype), DPMSolverState(x0=x0, t=jnp.asarray(t, jnp.int32))
