"""Flax CLIP vision tower and two-tower CLIPModel against transformers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from artv_jax.checkpoints.rename import convert_state_dict
from artv_jax.eval.convert_feature_nets import clip_variables
from artv_jax.models.clip_vision import CLIPModel, CLIPVisionModelWithProjection

# Tiny stand-ins for OpenAI's ViT (quick_gelu) and OpenCLIP's (gelu).
OPENAI_STYLE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, image_size=32, patch_size=8, hidden_act="quick_gelu",
                    projection_dim=16)
OPENCLIP_STYLE = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=1,
                      num_attention_heads=2, image_size=24, patch_size=6, hidden_act="gelu",
                      projection_dim=8)
TEXT = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=12, bos_token_id=48)
EOS = 49  # The last id of the vocabulary, as CLIP's <|endoftext|>.


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
  torch.manual_seed(1)
  with torch.no_grad():  # Move every weight off its init (LayerNorms start at 1 and 0).
    for param in model.parameters():
      param.add_(0.1 * torch.randn_like(param))
  return model.eval()


def _images(size: int, count: int = 2, seed: int = 0) -> np.ndarray:
  """[N, S, S, 3] standing in for CLIP-normalised pixels."""
  return np.random.default_rng(seed).normal(size=(count, size, size, 3)).astype(np.float32)


def _ids(length: int, eos_at, seed: int = 0) -> np.ndarray:
  """Token ids [B, L]: bos, random tokens, eos at ``eos_at[b]``, then eos padding."""
  ids = np.random.default_rng(seed).integers(0, 48, (len(eos_at), length), dtype=np.int32)
  ids[:, 0] = TEXT["bos_token_id"]
  for row, position in enumerate(eos_at):
    ids[row, position:] = EOS
  return ids


def _assert_close(got, want):
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("config", [OPENAI_STYLE, OPENCLIP_STYLE], ids=["quick_gelu", "gelu"])
def test_vision_with_projection_matches_transformers(config):
  torch.manual_seed(0)
  model = _perturbed(transformers.CLIPVisionModelWithProjection(
      transformers.CLIPVisionConfig(**config)))
  flax_model = CLIPVisionModelWithProjection.from_config(model.config.to_dict())
  shapes = jax.eval_shape(flax_model.init, jax.random.key(0),
                          jnp.zeros((1, config["image_size"], config["image_size"], 3)))
  params = convert_state_dict({k: v.numpy() for k, v in model.state_dict().items()},
                              shapes["params"], what="clip_vision")
  images = _images(config["image_size"])

  with torch.no_grad():
    want = model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2)).image_embeds
  got = flax_model.apply({"params": params}, images)

  _assert_close(np.asarray(got), want.numpy())


@pytest.mark.parametrize("eos_token_id", [EOS, 2], ids=["eos_id", "legacy_argmax"])
def test_clip_model_text_features_match_transformers(eos_token_id):
  torch.manual_seed(0)
  config = transformers.CLIPConfig(text_config={**TEXT, "eos_token_id": eos_token_id},
                                   vision_config=OPENAI_STYLE, projection_dim=16)
  model = _perturbed(transformers.CLIPModel(config))
  flax_model = CLIPModel.from_config(config.to_dict())
  variables, _ = clip_variables({k: v.numpy() for k, v in model.state_dict().items()},
                                flax_model)
  ids = _ids(12, eos_at=[5, 11])  # One row padded after its end, one full.

  with torch.no_grad():
    want = model.get_text_features(input_ids=torch.from_numpy(ids).long()).pooler_output
  got = flax_model.apply(variables, ids, method=CLIPModel.get_text_features)

  _assert_close(np.asarray(got), want.numpy())


def test_clip_model_image_features_match_transformers():
  torch.manual_seed(0)
  config = transformers.CLIPConfig(text_config=TEXT, vision_config=OPENCLIP_STYLE,
                                   projection_dim=8)
  model = _perturbed(transformers.CLIPModel(config))
  flax_model = CLIPModel.from_config(config.to_dict())
  variables, left_out = clip_variables({k: v.numpy() for k, v in model.state_dict().items()},
                                       flax_model)
  images = _images(OPENCLIP_STYLE["image_size"])

  with torch.no_grad():
    want = model.get_image_features(
        pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2)).pooler_output
  got = flax_model.apply(variables, images, method=CLIPModel.get_image_features)

  _assert_close(np.asarray(got), want.numpy())
  assert left_out == ["logit_scale"]


def test_wrong_image_size_is_an_error():
  model = CLIPVisionModelWithProjection.from_config(OPENAI_STYLE)

  with pytest.raises(ValueError, match="32x32"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


@pytest.mark.parametrize("config, message", [
    ({"model_type": "clip", "vision_config": OPENAI_STYLE}, "vision_config"),
    ({**OPENAI_STYLE, "model_type": "clip_text_model"}, "model_type"),
    ({**OPENAI_STYLE, "num_channels": 1}, "num_channels"),
    ({**OPENAI_STYLE, "attention_dropout": 0.1}, "attention_dropout"),
    ({**OPENAI_STYLE, "hidden_act": "relu"}, "hidden_act"),
], ids=["clip_config", "text_config", "channels", "dropout", "activation"])
def test_vision_from_config_rejects_unsupported(config, message):
  with pytest.raises(ValueError, match=message):
    CLIPVisionModelWithProjection.from_config(config)


def test_clip_model_from_config_needs_both_towers():
  with pytest.raises(ValueError, match="both towers"):
    CLIPModel.from_config({**OPENAI_STYLE, "model_type": "clip_vision_model"})
