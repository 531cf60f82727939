"""Classifier-free guidance combines."""
import jax
import numpy as np
import pytest

from artv_jax.diffusion import guidance


def _eps(n, seed=0, shape=(2, 4, 4, 3)):
  rng = np.random.default_rng(seed)
  return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def test_cfg_matches_the_diffusers_pipeline_formula():
  uncond, cond = _eps(2)
  # StableDiffusionPipeline: noise_pred_uncond + guidance_scale * (noise_pred_text - uncond).
  np.testing.assert_allclose(guidance.cfg(uncond, cond, 7.5), uncond + 7.5 * (cond - uncond),
                             rtol=1e-6)


@pytest.mark.parametrize("scale,which", [(0.0, 0), (1.0, 1)])
def test_cfg_endpoints_are_the_two_predictions(scale, which):
  eps = _eps(2, seed=1)
  np.testing.assert_allclose(guidance.cfg(*eps, scale), eps[which], atol=1e-6)


def test_dual_cfg_with_unit_scales_is_the_fully_conditional_prediction():
  none, ref, ref_text = _eps(3, seed=2)
  np.testing.assert_allclose(guidance.dual_cfg(none, ref, ref_text, 1.0, 1.0), ref_text,
                             atol=1e-6)


def test_dual_cfg_with_equal_scales_is_plain_cfg_on_both_conditions():
  none, ref, ref_text = _eps(3, seed=3)
  np.testing.assert_allclose(guidance.dual_cfg(none, ref, ref_text, 4.0, 4.0),
                             guidance.cfg(none, ref_text, 4.0), atol=1e-5)


def test_dual_cfg_text_direction_is_taken_with_references():
  none, ref, ref_text = _eps(3, seed=4)
  got = jax.jit(guidance.dual_cfg)(none, ref, ref_text, 1.5, 7.5)
  want = none + 1.5 * (ref - none) + 7.5 * (ref_text - ref)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
