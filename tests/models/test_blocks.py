"""Parity of the shared building blocks with diffusers' PyTorch layers."""
import jax
import numpy as np
import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D as TorchResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel as TorchTransformer2D

from artv_jax.checkpoints.rename import convert_state_dict
from artv_jax.models.attention import Transformer2DModel
from artv_jax.models.resnet import ResnetBlock2D


def _perturbed_state_dict(module: torch.nn.Module) -> dict:
  torch.manual_seed(0)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return {k: v.numpy() for k, v in module.state_dict().items()}


def _to_nchw(x) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


def _assert_close(ours, ref):
  scale = max(1.0, float(np.abs(ref).max()))
  np.testing.assert_allclose(ours, ref, atol=1e-4 * scale, rtol=0)


@pytest.mark.parametrize("use_linear_projection", [False, True])
def test_transformer_2d_matches_diffusers(use_linear_projection):
  ref_model = TorchTransformer2D(num_attention_heads=2, attention_head_dim=8, in_channels=32,
                                 cross_attention_dim=24, norm_num_groups=32,
                                 use_linear_projection=use_linear_projection).eval()
  state_dict = _perturbed_state_dict(ref_model)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 4, 32), dtype=np.float32)
  context = rng.standard_normal((2, 5, 24), dtype=np.float32)
  with torch.no_grad():
    ref = ref_model(torch.from_numpy(_to_nchw(x)),
                    encoder_hidden_states=torch.from_numpy(context)).sample.numpy()

  model = Transformer2DModel(heads=2, dim_head=8, use_linear_projection=use_linear_projection)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, context)["params"]
  params = convert_state_dict(state_dict, shapes)
  _assert_close(_to_nchw(model.apply({"params": params}, x, context)), ref)


def test_resnet_block_matches_diffusers():
  ref_model = TorchResnetBlock2D(in_channels=32, out_channels=64, temb_channels=16).eval()
  state_dict = _perturbed_state_dict(ref_model)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 4, 32), dtype=np.float32)
  temb = rng.standard_normal((2, 16), dtype=np.float32)
  with torch.no_grad():
    ref = ref_model(torch.from_numpy(_to_nchw(x)), torch.from_numpy(temb)).numpy()

  model = ResnetBlock2D(64)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, temb)["params"]
  params = convert_state_dict(state_dict, shapes)
  _assert_close(_to_nchw(model.apply({"params": params}, x, temb)), ref)
