"""Flax UNet2DConditionModel against diffusers' PyTorch UNet2DConditionModel."""
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from artv_jax.checkpoints.rename import convert_state_dict
from artv_jax.models.unet import UNet2DConditionModel

# Tiny stand-ins for SD1 (1x1-conv projections, one head count for every block) and SD2
# (linear projections, per-block head counts, upcast attention, another text width). Between
# them every block kind appears, the CrossAttn ones with and without their down/upsampler.
# Per-block lists are asymmetric, so that taking them unreversed in the up blocks would show.
# SD2's stand-in also flips the timestep-feature switches, to cover those paths.
SD1_STYLE = dict(block_out_channels=(32, 64), layers_per_block=(1, 2), norm_num_groups=16,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 attention_head_dim=4, cross_attention_dim=32, sample_size=16)
SD2_STYLE = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 attention_head_dim=(2, 8), transformer_layers_per_block=(2, 1),
                 cross_attention_dim=24, use_linear_projection=True, upcast_attention=True,
                 flip_sin_to_cos=False, freq_shift=1, sample_size=8)
# A minimal layout (attention only in the first down block and the mid block), for the test
# that compiles backward passes.
TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            attention_head_dim=2, cross_attention_dim=8, sample_size=8)
BATCH, TOKENS = 2, 5


def _torch_unet(config: dict, **extra) -> diffusers.UNet2DConditionModel:
  torch.manual_seed(0)
  model = diffusers.UNet2DConditionModel(**config, **extra).eval()
  with torch.no_grad():  # Move every weight off its init (norms start at 1 and 0).
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  return model


def _inputs(config: dict, seed: int = 0):
  rng = np.random.default_rng(seed)
  size = config["sample_size"]
  sample = rng.standard_normal((BATCH, size, size, 4), dtype=np.float32)
  context = rng.standard_normal((BATCH, TOKENS, config["cross_attention_dim"]),
                                dtype=np.float32)
  return sample, np.array([17, 901]), context


def _param_shapes(model: UNet2DConditionModel, config: dict):
  sample, timesteps, context = _inputs(config)
  return jax.eval_shape(model.init, jax.random.key(0), sample, timesteps, context)["params"]


def _to_nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _run_torch(model, sample, timesteps, context, **kwargs) -> np.ndarray:
  with torch.no_grad():
    out = model(_to_nchw(sample), torch.as_tensor(timesteps), torch.from_numpy(context),
                **kwargs).sample
  return out.numpy().transpose(0, 2, 3, 1)


def _assert_close(got, want, rel=1e-4):
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=rel * np.abs(want).max())


def _random_params(model: UNet2DConditionModel, config: dict):
  # Random normal weights instead of model.init, whose RNG code takes long to compile on CPU.
  shapes = _param_shapes(model, config)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: 0.1 * rng.standard_normal(s.shape, dtype=np.float32), shapes)


def _convert(config: dict):
  """(torch model, our model, converted params) for a diffusers UNet config."""
  torch_model = _torch_unet(config)
  model = UNet2DConditionModel.from_config(dict(torch_model.config))
  state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  return torch_model, model, convert_state_dict(state_dict, _param_shapes(model, config),
                                                what="unet")


@pytest.fixture(scope="module")
def sd1():
  return _convert(SD1_STYLE)


@pytest.mark.parametrize("config", [SD1_STYLE, SD2_STYLE], ids=["sd1", "sd2"])
def test_matches_diffusers(config):
  torch_model, model, params = _convert(config)
  sample, timesteps, context = _inputs(config)
  if config is SD2_STYLE:
    timesteps = 321  # A scalar timestep is broadcast over the batch.

  want = _run_torch(torch_model, sample, timesteps, context)
  got = jax.jit(model.apply)({"params": params}, sample, timesteps, context)

  assert got.dtype == jnp.float32
  _assert_close(np.asarray(got), want)


def test_down_block_residuals_match_diffusers_intrablock_residuals(sd1):
  torch_model, model, params = sd1
  sample, timesteps, context = _inputs(SD1_STYLE)
  rng = np.random.default_rng(1)
  residuals = [rng.standard_normal(shape, dtype=np.float32)
               for shape in model.down_block_residual_shapes(BATCH, *sample.shape[1:3])]

  want = _run_torch(torch_model, sample, timesteps, context,
                    down_intrablock_additional_residuals=[_to_nchw(r) for r in residuals])
  got = jax.jit(model.apply)({"params": params}, sample, timesteps, context,
                             down_block_additional_residuals=residuals)

  _assert_close(np.asarray(got), want)
  assert not np.allclose(want, _run_torch(torch_model, sample, timesteps, context), atol=1e-2)


def test_xla_lowerings_match_diffusers(sd1):
  # The tests above run the backend's default lowerings; these are the other backends'.
  torch_model, model, params = sd1
  sample, timesteps, context = _inputs(SD1_STYLE)
  model = model.clone(attention="xla", dense="xla")

  want = _run_torch(torch_model, sample, timesteps, context)
  got = jax.jit(model.apply)({"params": params}, sample, timesteps, context)

  _assert_close(np.asarray(got), want)


def test_added_time_embedding_matches_diffusers_identity_class_embedding(sd1):
  # diffusers' class_embed_type="identity" adds class_labels to the time embedding after its
  # MLP, with no parameters of its own: the same place as our hook.
  torch_model, model, params = sd1
  sample, timesteps, context = _inputs(SD1_STYLE)
  torch_identity = _torch_unet(SD1_STYLE, class_embed_type="identity")
  torch_identity.load_state_dict(torch_model.state_dict())
  added = np.random.default_rng(2).standard_normal((BATCH, model.time_embed_dim),
                                                    dtype=np.float32)

  want = _run_torch(torch_identity, sample, timesteps, context,
                    class_labels=torch.from_numpy(added))
  got = jax.jit(model.apply)({"params": params}, sample, timesteps, context,
                             added_time_embedding=added)

  _assert_close(np.asarray(got), want)


def _tiny_model(**overrides) -> UNet2DConditionModel:
  return UNet2DConditionModel.from_config(TINY, **overrides)


@pytest.mark.slow  # Compiles three backward passes: ~35 s of CPU.
def test_remat_keeps_parameters_and_gradients():
  model = _tiny_model()
  sample, timesteps, context = _inputs(TINY)
  assert _param_shapes(_tiny_model(remat=True), TINY) == _param_shapes(model, TINY)
  rng = np.random.default_rng(1)
  # Gradients must also reach ART·V's hooks.
  hooks = dict(added_time_embedding=rng.standard_normal((BATCH, model.time_embed_dim),
                                                        dtype=np.float32),
               down_block_additional_residuals=[
                   rng.standard_normal(shape, dtype=np.float32) for shape in
                   model.down_block_residual_shapes(BATCH, *sample.shape[1:3])])
  inputs = (_random_params(model, TINY), hooks)

  def grads(remat, policy=""):
    loss = lambda p, h: jnp.sum(_tiny_model(remat=remat, remat_policy=policy).apply(
        {"params": p}, sample, timesteps, context, **h) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(*inputs)

  without = grads(False)
  for with_remat in grads(True), grads(True, "dots_with_no_batch_dims_saveable"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max())), with_remat, without)


def test_unknown_remat_policy_is_named():
  sample, timesteps, context = _inputs(TINY)
  model = _tiny_model(remat=True, remat_policy="save_nothing_please")
  with pytest.raises(ValueError, match="remat_policy 'save_nothing_please' is not a "
                                       "jax.checkpoint_policies name"):
    jax.eval_shape(model.init, jax.random.key(0), sample, timesteps, context)


def test_bfloat16_compute_is_close_to_float32():
  torch_model, _, params = _convert(SD2_STYLE)
  model = UNet2DConditionModel.from_config(dict(torch_model.config), dtype=jnp.bfloat16)
  sample, timesteps, context = _inputs(SD2_STYLE)

  want = _run_torch(torch_model, sample, timesteps, context)
  got = jax.jit(model.apply)({"params": params}, sample, timesteps, context)

  assert got.dtype == jnp.float32
  _assert_close(np.asarray(got), want, rel=5e-2)


# unet/config.json of SD 1.5 and SD 2.1 as published.
SD15_CONFIG = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
    "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"]}
SD21_CONFIG = {
    **SD15_CONFIG, "_diffusers_version": "0.10.0.dev0", "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024, "dual_cross_attention": False, "num_class_embeds": None,
    "only_cross_attention": False, "sample_size": 96, "use_linear_projection": True,
    "upcast_attention": True}


@pytest.mark.parametrize("config", [SD15_CONFIG, SD21_CONFIG], ids=["sd15", "sd21"])
def test_full_size_configs_take_diffusers_weights(config):
  # Shapes only: diffusers builds on the meta device, our side is traced by eval_shape, and
  # the state dict holds zero-strided stand-ins, so nothing of full size is allocated.
  with torch.device("meta"):
    torch_model = diffusers.UNet2DConditionModel.from_config(config)
  state_dict = {k: np.broadcast_to(np.float32(0), v.shape)
                for k, v in torch_model.state_dict().items()}
  model = UNet2DConditionModel.from_config(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 4)),
                          jnp.zeros((1,)), jnp.zeros((1, 77, config["cross_attention_dim"])))

  convert_state_dict(state_dict, shapes["params"], what="unet")  # Raises on any mismatch.


@pytest.mark.parametrize("field, value", [
    ("class_embed_type", "timestep"), ("dual_cross_attention", True),
    ("num_attention_heads", 8), ("center_input_sample", True),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"), ("some_new_field", 1)])
def test_from_config_rejects_unsupported_fields(field, value):
  with pytest.raises(ValueError, match=field):
    UNet2DConditionModel.from_config({**SD1_STYLE, field: value})


def test_residual_shapes_need_a_multiple_of_the_downsampling():
  model = UNet2DConditionModel(block_out_channels=(16, 32, 48),
                               down_block_types=("DownBlock2D",) * 3,
                               up_block_types=("UpBlock2D",) * 3)
  assert model.down_block_residual_shapes(3, 8, 12) == (
      (3, 8, 12, 16), (3, 4, 6, 32), (3, 2, 3, 48))
  with pytest.raises(ValueError, match="multiple of 4"):
    model.down_block_residual_shapes(1, 8, 10)
