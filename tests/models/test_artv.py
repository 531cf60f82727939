"""ART·V network: starts as the pretrained SD UNet, and its switches change what it sees."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel as TorchUNet

from artv_jax.checkpoints.rename import convert_state_dict
from artv_jax.models.artv import ARTV, artv_unet, init_artv_params
from artv_jax.models.unet import UNet2DConditionModel

UNET_CONFIG = dict(
    in_channels=4, out_channels=4, sample_size=8, block_out_channels=(16, 32),
    layers_per_block=1, norm_num_groups=8, attention_head_dim=2, cross_attention_dim=16,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TEXT_LEN = 5


@pytest.fixture(scope="module")
def converted_unet():
  """A diffusers UNet with random weights, converted with our tool's rules."""
  torch.manual_seed(0)
  torch_unet = TorchUNet(**UNET_CONFIG).eval()
  with torch.no_grad():
    for p in torch_unet.parameters():
      p.add_(0.05 * torch.randn_like(p))
  unet = UNet2DConditionModel.from_config(torch_unet.config)
  shapes = jax.eval_shape(unet.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)),
                          jnp.zeros((1,), jnp.int32), jnp.zeros((1, TEXT_LEN, 16)))["params"]
  params = convert_state_dict({k: v.numpy() for k, v in torch_unet.state_dict().items()},
                              shapes)
  return unet, params


def _inputs(batch=2, k=1):
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  x_t = jax.random.normal(keys[0], (batch, 8, 8, 4))
  text = jax.random.normal(keys[1], (batch, TEXT_LEN, 16))
  refs = jax.random.normal(keys[2], (batch, k, 8, 8, 4))
  anchor = jax.random.normal(keys[3], (batch, 8, 8, 4))
  t = jnp.array([10, 700][:batch])
  levels = jnp.array([0, 150][:batch])
  return x_t, t, text, refs, anchor, levels


def _artv(unet, pathway="adapter", use_text_time_embedding=False, **kw):
  options = dict(num_ref_frames=1, use_anchor=True, use_mask=True)
  options.update(kw)
  return ARTV(unet=artv_unet(unet, reference_pathway=pathway, **options),
              reference_pathway=pathway, use_text_time_embedding=use_text_time_embedding,
              **options)


@pytest.mark.parametrize("pathway", ["adapter", "concat"])
def test_init_with_dropped_references_equals_pretrained_unet(converted_unet, pathway):
  unet, unet_params = converted_unet
  model = _artv(unet, pathway)
  params = init_artv_params(model, jax.random.PRNGKey(2), (8, 8), TEXT_LEN,
                            pretrained_unet=unet_params)
  x_t, t, text, refs, anchor, levels = _inputs()
  output, mask = model.apply({"params": params}, x_t, t, text, refs, anchor, levels,
                             jnp.array([False, False]))
  expected = unet.apply({"params": unet_params}, x_t, t, text)
  np.testing.assert_allclose(output, expected, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(mask, 1.0)


def test_init_with_references_is_still_the_image_model_and_mask_starts_high(converted_unet):
  unet, unet_params = converted_unet
  model = _artv(unet)
  params = init_artv_params(model, jax.random.PRNGKey(2), (8, 8), TEXT_LEN,
                            pretrained_unet=unet_params, mask_bias=4.0)
  x_t, t, text, refs, anchor, levels = _inputs()
  output, mask = model.apply({"params": params}, x_t, t, text, refs, anchor, levels,
                             jnp.array([True, True]))
  expected = unet.apply({"params": unet_params}, x_t, t, text)
  np.testing.assert_allclose(output, expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(mask, jax.nn.sigmoid(4.0), rtol=1e-6)


def test_trained_reference_pathway_reads_the_references(converted_unet):
  unet, unet_params = converted_unet
  model = _artv(unet)
  params = init_artv_params(model, jax.random.PRNGKey(2), (8, 8), TEXT_LEN,
                            pretrained_unet=unet_params)
  # Perturb the zero-initialised convs, as training would.
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.1 if "zero_convs" in jax.tree_util.keystr(path) else p, params)
  x_t, t, text, refs, anchor, levels = _inputs()
  keep = jnp.array([True, True])
  out_a, _ = model.apply({"params": params}, x_t, t, text, refs, anchor, levels, keep)
  out_b, _ = model.apply({"params": params}, x_t, t, text, refs + 1.0, anchor, levels, keep)
  out_c, _ = model.apply({"params": params}, x_t, t, text, refs, anchor + 1.0, levels, keep)
  assert np.abs(out_a - out_b).max() > 1e-3
  assert np.abs(out_a - out_c).max() > 1e-3


def test_anchor_off_ignores_the_anchor_and_mask_off_returns_ones(converted_unet):
  unet, _ = converted_unet
  model = _artv(unet, use_anchor=False, use_mask=False)
  params = init_artv_params(model, jax.random.PRNGKey(2), (8, 8), TEXT_LEN)
  params = jax.tree.map(lambda p: p + 0.05, params)
  x_t, t, text, refs, anchor, levels = _inputs()
  keep = jnp.array([True, True])
  out_a, mask = model.apply({"params": params}, x_t, t, text, refs, anchor, levels, keep)
  out_b, _ = model.apply({"params": params}, x_t, t, text, refs, anchor + 1.0, levels, keep)
  np.testing.assert_array_equal(out_a, out_b)
  np.testing.assert_array_equal(mask, 1.0)
  assert params["unet"]["conv_out"]["kernel"].shape[-1] == 4


def test_several_reference_frames_widen_the_pathway(converted_unet):
  unet, unet_params = converted_unet
  model = _artv(unet, "concat", num_ref_frames=3)
  params = init_artv_params(model, jax.random.PRNGKey(2), (8, 8), TEXT_LEN,
                            pretrained_unet=unet_params)
  # 4 latent + 3 reference + 1 anchor frames of 4 channels; new input weights are zero.
  kernel = params["unet"]["conv_in"]["kernel"]
  assert kernel.shape[2] == 4 * 5
  np.testing.assert_array_equal(kernel[:, :, 4:], 0.0)
  np.testing.assert_array_equal(kernel[:, :, :4], unet_params["conv_in"]["kernel"])
  x_t, t, text, refs, anchor, levels = _inputs(k=3)
  output, _ = model.apply({"params": params}, x_t, t, text, refs, anchor, levels,
                          jnp.array([True, False]))
  assert output.shape == x_t.shape


def test_pretrained_unet_from_another_config_is_rejected(converted_unet):
  unet, unet_params = converted_unet
  model = _artv(unet)
  params = dict(unet_params, extra_layer={"kernel": jnp.zeros((2, 2))})
  with pytest.raises(ValueError, match="extra_layer"):
    init_artv_params(model, jax.random.PRNGKey(2), (8, 8), TEXT_LEN, pretrained_unet=params)


def test_text_time_embedding_starts_as_a_no_op_and_reads_the_text(converted_unet):
  unet, unet_params = converted_unet
  plain = _artv(unet)
  model = _artv(unet, use_text_time_embedding=True)
  params = init_artv_params(model, jax.random.PRNGKey(2), (8, 8), TEXT_LEN,
                            pretrained_unet=unet_params)
  x_t, t, text, refs, anchor, levels = _inputs()
  keep = jnp.array([True, False])
  without = {k: v for k, v in params.items() if not k.startswith("text_time_embedding")}
  out, _ = model.apply({"params": params}, x_t, t, text, refs, anchor, levels, keep)
  out_plain, _ = plain.apply({"params": without}, x_t, t, text, refs, anchor, levels, keep)
  np.testing.assert_array_equal(out, out_plain)
  # Trained, the pooled text reaches the time embedding: the output moves with it.
  params["text_time_embedding_linear_2"]["kernel"] += 0.1
  moved, _ = model.apply({"params": params}, x_t, t, text, refs, anchor, levels, keep)
  assert np.abs(moved - out).max() > 1e-3
