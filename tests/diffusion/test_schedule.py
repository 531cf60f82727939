"""The schedule and its algebra against diffusers' DDIMScheduler."""
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from artv_jax.diffusion import schedule as sched

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012)


def _reference(beta_schedule="scaled_linear", **kwargs):
  betas = SD_BETAS if beta_schedule == "scaled_linear" else {}
  return diffusers.DDIMScheduler(beta_schedule=beta_schedule, **betas, **kwargs)


def _data(seed=0, shape=(3, 4, 4, 2)):
  rng = np.random.default_rng(seed)
  return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(
      np.float32)


@pytest.mark.parametrize("beta_schedule", sched.BETA_SCHEDULES)
def test_alphas_cumprod_match_diffusers(beta_schedule):
  ref = _reference(beta_schedule)
  ours = sched.schedule_from_config(dict(ref.config))
  np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=0, atol=1e-6)
  np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_final_alpha_cumprod_follows_set_alpha_to_one(set_alpha_to_one):
  ref = _reference(set_alpha_to_one=set_alpha_to_one)
  ours = sched.schedule_from_config(dict(ref.config))
  np.testing.assert_allclose(ours.final_alpha_cumprod, ref.final_alpha_cumprod.numpy(), atol=1e-6)


def test_q_sample_matches_add_noise_under_jit():
  ref = _reference()
  ours = sched.make_schedule()
  x0, noise = _data()
  t = np.array([0, 411, 999], np.int32)
  got = jax.jit(sched.q_sample)(ours, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
  want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t).long())
  np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)


def test_v_target_matches_get_velocity():
  ref = _reference()
  ours = sched.make_schedule()
  x0, noise = _data(1)
  t = np.array([5, 500, 998], np.int32)
  got = sched.prediction_target(ours, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise),
                                "v_prediction")
  want = ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t).long())
  np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)


def test_epsilon_target_is_the_noise():
  x0, noise = _data(2)
  got = sched.prediction_target(sched.make_schedule(), x0, jnp.array([3, 4, 5]), noise, "epsilon")
  np.testing.assert_array_equal(got, noise)


@pytest.mark.parametrize("prediction_type", sched.PREDICTION_TYPES)
def test_predict_x0_and_eps_inverts_the_target(prediction_type):
  schedule = sched.make_schedule()
  x0, noise = map(jnp.asarray, _data(3))
  t = jnp.array([1, 250, 990])
  x_t = sched.q_sample(schedule, x0, t, noise)
  target = sched.prediction_target(schedule, x0, t, noise, prediction_type)
  got_x0, got_eps = jax.jit(sched.predict_x0_and_eps, static_argnums=4)(
      schedule, target, x_t, t, prediction_type)
  # x0 = (x_t − σ ε)/α amplifies float32 rounding by 1/α ≈ 15 at t = 990.
  np.testing.assert_allclose(got_x0, x0, atol=2e-5)
  np.testing.assert_allclose(got_eps, noise, atol=2e-5)


def test_scalar_timestep_broadcasts_over_batch():
  schedule = sched.make_schedule()
  x0, noise = _data(4)
  np.testing.assert_allclose(sched.q_sample(schedule, x0, jnp.array(300), noise),
                             sched.q_sample(schedule, x0, jnp.full((3,), 300), noise))


def test_schedule_from_config_reads_sd2_v_config():
  config = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "clip_sample": False, "num_train_timesteps": 1000,
            "prediction_type": "v_prediction", "set_alpha_to_one": False, "steps_offset": 1,
            "skip_prk_steps": True, "trained_betas": None}
  ref = diffusers.DDIMScheduler.from_config(config)
  ours = sched.schedule_from_config(config)
  assert ours.prediction_type == "v_prediction"
  assert ours.num_train_steps == 1000
  np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=0, atol=1e-6)
  np.testing.assert_allclose(ours.final_alpha_cumprod, ref.final_alpha_cumprod.numpy(), atol=1e-6)


@pytest.mark.parametrize("field,value", [
    ("beta_schedule", "sigmoid"),
    ("prediction_type", "sample"),
    ("thresholding", True),
    ("rescale_betas_zero_snr", True),
])
def test_schedule_from_config_rejects_unsupported(field, value):
  with pytest.raises(ValueError, match=field):
    sched.schedule_from_config({field: value})
