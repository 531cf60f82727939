"""DDIM against diffusers' DDIMScheduler, fed the same model outputs and noise."""
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from artv_jax.diffusion import ddim
from artv_jax.diffusion import schedule as sched
from tests.diffusion.stand_in_model import fake_model

NUM_STEPS = 10
SHAPE = (2, 4, 4, 3)  # [B, H, W, C]


def _scheduler(**overrides):
  """SD 2.1's scheduler config, with overrides."""
  config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                clip_sample=False, set_alpha_to_one=False, steps_offset=1)
  return diffusers.DDIMScheduler(**{**config, **overrides})


def _reference_sample(scheduler, x, noises, eta):
  """diffusers' loop in float64 (its alphas stay float32, as in any diffusers run)."""
  scheduler.set_timesteps(NUM_STEPS)
  x = torch.from_numpy(x.astype(np.float64))
  for i, t in enumerate(scheduler.timesteps):
    out = torch.from_numpy(fake_model(x.numpy(), int(t), np))
    x = scheduler.step(out, t, x, eta=eta,
                       variance_noise=torch.from_numpy(noises[i].astype(np.float64))).prev_sample
  return x.numpy()


def _our_sample(schedule, x, noises, *, spacing, steps_offset, prediction_type, eta,
                clip_sample=False):
  timesteps, prev_timesteps = ddim.ddim_timesteps(schedule.num_train_steps, NUM_STEPS,
                                                  spacing, steps_offset)

  @jax.jit
  def sample(schedule, x, noises):
    def body(x, step):
      t, t_prev, noise = step
      out = fake_model(x, t, jnp)
      x, _ = ddim.ddim_step(schedule, out, t, t_prev, x, prediction_type=prediction_type,
                            eta=eta, noise=noise, clip_sample=clip_sample)
      return x, None
    return jax.lax.scan(body, x, (timesteps, prev_timesteps, noises))[0]

  return sample(schedule, jnp.asarray(x), jnp.asarray(noises))


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(SHAPE).astype(np.float32),
          rng.standard_normal((NUM_STEPS,) + SHAPE).astype(np.float32))


@pytest.mark.parametrize("spacing", ddim.SPACINGS)
@pytest.mark.parametrize("num_steps,steps_offset", [(10, 0), (50, 1), (7, 1), (1000, 0)])
def test_timesteps_match_diffusers(spacing, num_steps, steps_offset):
  ref = _scheduler(timestep_spacing=spacing, steps_offset=steps_offset)
  ref.set_timesteps(num_steps)
  timesteps, prev_timesteps = ddim.ddim_timesteps(1000, num_steps, spacing, steps_offset)
  np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())
  # diffusers' step() moves from t to t − T // N.
  np.testing.assert_array_equal(prev_timesteps, ref.timesteps.numpy() - 1000 // num_steps)


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction_type", sched.PREDICTION_TYPES)
def test_sampling_matches_diffusers(prediction_type, spacing, eta):
  ref = _scheduler(prediction_type=prediction_type, timestep_spacing=spacing)
  schedule = sched.schedule_from_config(dict(ref.config))
  x, noises = _inputs()
  want = _reference_sample(ref, x, noises, eta)
  got = _our_sample(schedule, x, noises, spacing=spacing, steps_offset=1,
                    prediction_type=prediction_type, eta=eta)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_clip_sample_and_alpha_one_match_diffusers():
  ref = _scheduler(timestep_spacing="linspace", clip_sample=True, set_alpha_to_one=True)
  schedule = sched.schedule_from_config(dict(ref.config))
  x, noises = _inputs(1)
  want = _reference_sample(ref, x, noises, eta=0.0)
  got = _our_sample(schedule, x, noises, spacing="linspace", steps_offset=1,
                    prediction_type="epsilon", eta=0.0, clip_sample=True)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_step_returns_the_x0_prediction():
  schedule = sched.make_schedule()
  x, _ = _inputs(2)
  out = fake_model(x, 500, np)
  _, x0 = ddim.ddim_step(schedule, out, 500, 400, x, prediction_type="epsilon")
  want, _ = sched.predict_x0_and_eps(schedule, out, x, 500, "epsilon")
  np.testing.assert_allclose(x0, want)


def test_eta_without_noise_is_rejected():
  schedule = sched.make_schedule()
  x, _ = _inputs()
  with pytest.raises(ValueError, match="noise"):
    ddim.ddim_step(schedule, x, 500, 400, x, prediction_type="epsilon", eta=0.5)


def test_unknown_spacing_is_rejected():
  with pytest.raises(ValueError, match="spacing 'karras'"):
    ddim.ddim_timesteps(1000, 10, "karras")
