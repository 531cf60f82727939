"""DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler on the same model outputs."""
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from artv_jax.diffusion import ddim
from artv_jax.diffusion import dpm_solver
from artv_jax.diffusion import schedule as sched
from tests.diffusion.stand_in_model import fake_model

SHAPE = (2, 4, 4, 3)  # [B, H, W, C]


def _scheduler(**overrides):
  """SD's betas with diffusers' DPM-Solver++(2M) defaults, with overrides."""
  config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                solver_order=2, algorithm_type="dpmsolver++", lower_order_final=True)
  return diffusers.DPMSolverMultistepScheduler(**{**config, **overrides})


def _reference_sample(scheduler, x, num_steps):
  scheduler.set_timesteps(num_steps)
  x = torch.from_numpy(x)
  for t in scheduler.timesteps:
    out = torch.from_numpy(fake_model(x.numpy(), int(t), np))
    x = scheduler.step(out, t, x).prev_sample
  return x.numpy()


def _our_sample(schedule, x, num_steps, prediction_type):
  timesteps, next_timesteps = dpm_solver.dpm_solver_timesteps(schedule.num_train_steps,
                                                              num_steps)

  @jax.jit
  def sample(schedule, x):
    def body(carry, step):
      x, state = carry
      t, t_next = step
      out = fake_model(x, t, jnp)
      return dpm_solver.dpm_solver_step(schedule, state, out, t, t_next, x,
                                        prediction_type=prediction_type), None
    carry = (x, dpm_solver.dpm_solver_init(x))
    return jax.lax.scan(body, carry, (timesteps, next_timesteps))[0][0]

  return sample(schedule, jnp.asarray(x))


def _noise(seed=0):
  return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


@pytest.mark.parametrize("spacing", dpm_solver.SPACINGS)
@pytest.mark.parametrize("num_steps,steps_offset", [(10, 0), (25, 1), (7, 1)])
def test_timesteps_match_diffusers(spacing, num_steps, steps_offset):
  ref = _scheduler(timestep_spacing=spacing, steps_offset=steps_offset)
  ref.set_timesteps(num_steps)
  timesteps, next_timesteps = dpm_solver.dpm_solver_timesteps(1000, num_steps, spacing,
                                                              steps_offset)
  np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())
  np.testing.assert_array_equal(next_timesteps[:-1], timesteps[1:])
  assert next_timesteps[-1] < 0  # The last step goes to the clean sample (σ = 0).


# 20 steps: diffusers' lower_order_final rules change at 15.
@pytest.mark.parametrize("prediction_type,num_steps", [
    ("epsilon", 10), ("v_prediction", 10), ("epsilon", 20)])
def test_sampling_matches_diffusers(prediction_type, num_steps):
  ref = _scheduler(prediction_type=prediction_type)
  schedule = sched.schedule_from_config(dict(ref.config))
  x = _noise()
  want = _reference_sample(ref, x, num_steps)
  got = _our_sample(schedule, x, num_steps, prediction_type)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_first_step_is_a_ddim_step():
  schedule = sched.make_schedule(set_alpha_to_one=True)
  x = jnp.asarray(_noise(1))
  out = fake_model(x, 999, jnp)
  got, state = dpm_solver.dpm_solver_step(schedule, dpm_solver.dpm_solver_init(x), out, 999, 899,
                                          x, prediction_type="epsilon")
  want, x0 = ddim.ddim_step(schedule, out, 999, 899, x, prediction_type="epsilon")
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(state.x0, x0, atol=1e-6)
  assert int(state.t) == 999


def test_last_step_returns_the_x0_prediction():
  schedule = sched.make_schedule()
  x = jnp.asarray(_noise(2))
  out = fake_model(x, 100, jnp)
  state = dpm_solver.DPMSolverState(x0=jnp.zeros_like(x), t=jnp.array(200))
  got, _ = dpm_solver.dpm_solver_step(schedule, state, out, 100, -1, x, prediction_type="epsilon")
  want, _ = sched.predict_x0_and_eps(schedule, out, x, 100, "epsilon")
  np.testing.assert_allclose(got, want, atol=1e-6)
