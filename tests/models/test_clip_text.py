"""Flax CLIP text encoder against transformers' CLIPTextModel."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from artv_jax.checkpoints.rename import convert_state_dict
from artv_jax.models.clip_text import CLIPTextModel

# Tiny stand-ins for SD1's OpenAI CLIP-L (quick_gelu) and SD2's OpenCLIP-H (gelu, one layer
# fewer in the diffusers config, other head count).
SD1_STYLE = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=16, hidden_act="quick_gelu")
SD2_STYLE = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                 num_attention_heads=2, max_position_embeddings=16, hidden_act="gelu")


def _torch_model(config: dict) -> transformers.CLIPTextModel:
  torch.manual_seed(0)
  model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**config)).eval()
  with torch.no_grad():  # Move every weight off its init (LayerNorms start at 1 and 0).
    for param in model.parameters():
      param.add_(0.1 * torch.randn_like(param))
  return model


def _convert(model: transformers.CLIPTextModel, flax_model: CLIPTextModel, length: int):
  shapes = jax.eval_shape(flax_model.init, jax.random.key(0),
                          jnp.zeros((1, length), jnp.int32))["params"]
  state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
  return convert_state_dict(state_dict, shapes, what="text_encoder")


def _ids(config: dict, shape, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, config["vocab_size"], shape, dtype=np.int32)


@pytest.mark.parametrize("config, length", [(SD1_STYLE, 16), (SD2_STYLE, 11)],
                         ids=["sd1_quick_gelu", "sd2_gelu"])
def test_matches_transformers(config, length):
  model = _torch_model(config)
  flax_model = CLIPTextModel.from_config(model.config.to_dict())
  params = _convert(model, flax_model, length)
  ids = _ids(config, (2, length))

  with torch.no_grad():
    want = model(input_ids=torch.from_numpy(ids).long()).last_hidden_state.numpy()
  got = np.asarray(flax_model.apply({"params": params}, jnp.asarray(ids)))

  assert got.shape == want.shape == (2, length, config["hidden_size"])
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_later_tokens_do_not_change_earlier_outputs():
  model = CLIPTextModel(**SD1_STYLE)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
  ids = _ids(SD1_STYLE, (2, 16))
  padded = ids.copy()
  padded[:, 6:] = 0  # A padded tail after the first 6 tokens.

  out = model.apply({"params": params}, ids)
  out_padded = model.apply({"params": params}, padded)

  np.testing.assert_allclose(out_padded[:, :6], out[:, :6], atol=1e-6)
  assert not np.allclose(out_padded[:, 6:], out[:, 6:], atol=1e-3)


def test_remat_gives_same_gradients():
  ids = jnp.asarray(_ids(SD2_STYLE, (2, 8)))
  params = CLIPTextModel(**SD2_STYLE).init(jax.random.key(0), ids)["params"]

  def grads(remat):
    loss = lambda p: jnp.sum(CLIPTextModel(**SD2_STYLE, remat=remat).apply({"params": p}, ids)**2)
    return jax.jit(jax.grad(loss))(params)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               grads(True), grads(False))


def test_bfloat16_compute_keeps_float32_params():
  ids = jnp.asarray(_ids(SD1_STYLE, (2, 16)))
  model = CLIPTextModel(**SD1_STYLE, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), ids)
  reference = CLIPTextModel(**SD1_STYLE).apply(variables, ids)

  out = model.apply(variables, ids)

  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), reference, atol=0.1)


@pytest.mark.parametrize("config, message", [
    ({"text_config": SD1_STYLE, "model_type": "clip"}, "text_config"),
    ({**SD1_STYLE, "model_type": "clip_vision_model"}, "model_type"),
    ({**SD1_STYLE, "hidden_act": "relu"}, "hidden_act"),
    ({**SD1_STYLE, "attention_dropout": 0.1}, "attention_dropout"),
], ids=["clip_config", "vision_config", "activation", "dropout"])
def test_from_config_rejects_unsupported(config, message):
  with pytest.raises(ValueError, match=message):
    CLIPTextModel.from_config(config)


def test_from_config_applies_overrides():
  model = CLIPTextModel.from_config({**SD2_STYLE, "dtype": "float32"}, dtype=jnp.bfloat16,
                                    remat=True)
  assert (model.dtype, model.remat, model.num_hidden_layers) == (jnp.bfloat16, True, 3)
