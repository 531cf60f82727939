"""Flax AutoencoderKL against diffusers' AutoencoderKL."""
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from artv_jax.checkpoints.rename import convert_state_dict
from artv_jax.models.vae import AutoencoderKL, DiagonalGaussian

# Tiny stand-ins for SD's VAE (4 levels, 2 resnets per level, 32 groups): one with two levels,
# one with SD's 3-level depth pattern, and one without the optional quant convs and attention.
TWO_LEVELS = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
SD_LIKE = dict(block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=8)
BARE = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
            use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)
SIZE = 16  # Image side.


def _torch_vae(config: dict) -> diffusers.AutoencoderKL:
  levels = len(config["block_out_channels"])
  torch.manual_seed(0)
  model = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels,
                                  up_block_types=("UpDecoderBlock2D",) * levels,
                                  latent_channels=4, **config).eval()
  with torch.no_grad():  # Move every weight off its init (norms start at 1 and 0).
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  return model


def _convert(model: diffusers.AutoencoderKL, vae: AutoencoderKL):
  shapes = jax.eval_shape(vae.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
  return convert_state_dict(state_dict, shapes, what="vae")


def _images(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(x).permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).numpy()


def _assert_close(got, want):
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("config", [TWO_LEVELS, SD_LIKE, BARE],
                         ids=["two_levels", "sd_like_three_levels", "no_quant_no_attention"])
def test_matches_diffusers(config):
  model = _torch_vae(config)
  vae = AutoencoderKL.from_config(dict(model.config))
  params = _convert(model, vae)
  images = _images()
  latent_size = SIZE // 2 ** (len(config["block_out_channels"]) - 1)
  z = np.random.default_rng(1).standard_normal((2, latent_size, latent_size, 4), np.float32)

  with torch.no_grad():
    posterior = model.encode(_nchw(images)).latent_dist
    decoded = model.decode(_nchw(z)).sample
  got_posterior = vae.apply({"params": params}, images, method="encode")
  got_decoded = vae.apply({"params": params}, z, method="decode")

  _assert_close(np.asarray(got_posterior.mean), _nhwc(posterior.mean))
  _assert_close(np.asarray(got_posterior.logvar), _nhwc(posterior.logvar))
  _assert_close(np.asarray(got_decoded), _nhwc(decoded))


def test_sample_is_mean_plus_std_times_noise():
  moments = np.random.default_rng(0).standard_normal((2, 4, 4, 8), np.float32)
  posterior = DiagonalGaussian.from_moments(jnp.asarray(moments))

  # The posterior crosses jit as an argument; one jit so both draws share one compilation.
  sample, noise = jax.jit(lambda d, rng: (d.sample(rng), jax.random.normal(rng, d.mean.shape)))(
      posterior, jax.random.key(1))

  np.testing.assert_allclose(sample, posterior.mean + posterior.std * noise, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(posterior.mode(), posterior.mean)


def test_logvar_is_clipped():
  moments = jnp.concatenate([jnp.zeros((1, 2, 2, 3)), jnp.array([-50.0, 0.0, 50.0])
                             * jnp.ones((1, 2, 2, 3))], axis=-1)

  logvar = DiagonalGaussian.from_moments(moments).logvar

  np.testing.assert_array_equal(logvar[0, 0, 0], [-30.0, 0.0, 20.0])


def test_low_precision_compute_keeps_float32_params_and_outputs():
  vae = AutoencoderKL(**TWO_LEVELS, dtype=jnp.bfloat16)
  images = jnp.zeros((1, SIZE, SIZE, 3))
  params = jax.eval_shape(vae.init, jax.random.key(0), images)["params"]
  z = jnp.zeros((1, SIZE // 2, SIZE // 2, 4))

  posterior = jax.eval_shape(lambda p: vae.apply({"params": p}, images, method="encode"), params)
  decoded = jax.eval_shape(lambda p: vae.apply({"params": p}, z, method="decode"), params)

  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  assert posterior.mean.dtype == posterior.logvar.dtype == jnp.float32
  assert decoded.dtype == jnp.float32 and decoded.shape == (1, SIZE, SIZE, 3)


def test_from_config_reads_scaling_and_shift_factors():
  config = dict(_torch_vae(TWO_LEVELS).config)

  sd = AutoencoderKL.from_config(config)
  shifted = AutoencoderKL.from_config({**config, "scaling_factor": 0.3611,
                                       "shift_factor": 0.1159})

  assert (sd.scaling_factor, sd.shift_factor) == (0.18215, None)
  assert (shifted.scaling_factor, shifted.shift_factor) == (0.3611, 0.1159)


@pytest.mark.parametrize("change, named", [
    (dict(act_fn="gelu"), "act_fn"),
    (dict(down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D")), "down_block_types"),
    (dict(latents_mean=(0.0,) * 4), "latents_mean"),
    (dict(_class_name="AutoencoderTiny"), "AutoencoderTiny"),
])
def test_from_config_rejects_unsupported_features(change, named):
  config = {**TWO_LEVELS, "down_block_types": ("DownEncoderBlock2D",) * 2, **change}

  with pytest.raises(ValueError, match=named):
    AutoencoderKL.from_config(config)
