"""CLIP similarity through the converter CLI, against transformers' CLIPModel."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from artv_jax.eval import clip_score, convert_feature_nets
from artv_jax.eval.convert_feature_nets import FeatureNet, load_feature_net
from tests.checkpoints import tiny_sd

IMAGE_SIZE = 16
PROMPTS = tiny_sd.PROMPTS  # Covered by tiny_sd's tokenizer.


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  """(transformers CLIPModel, tokenizer, its saved folder) with random, perturbed weights."""
  folder = tmp_path_factory.mktemp("clip") / "clip"
  tokenizer_dir = tiny_sd.write_tokenizer(folder.parent / "tokenizer", "<|endoftext|>")
  tokenizer = transformers.CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
  text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
              num_hidden_layers=2, num_attention_heads=2,
              max_position_embeddings=tiny_sd.MAX_LENGTH, bos_token_id=tokenizer.bos_token_id,
              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
  vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8)
  torch.manual_seed(0)
  model = transformers.CLIPModel(transformers.CLIPConfig(
      text_config=text, vision_config=vision, projection_dim=8)).eval()
  with torch.no_grad():  # Move every weight off its init (LayerNorms start at 1 and 0).
    for param in model.parameters():
      param.add_(0.1 * torch.randn_like(param))
  model.save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  return model, tokenizer, folder


@pytest.fixture(scope="module")
def converted(tiny_clip, tmp_path_factory):
  """The directory written by the CLI from the tiny model's folder."""
  _, _, folder = tiny_clip
  dst = tmp_path_factory.mktemp("converted") / "clip"
  assert convert_feature_nets.main(["--kind=clip", f"--src={folder}", f"--dst={dst}"]) == 0
  return dst


def _frames(count: int, seed: int = 0, size: int = 24) -> np.ndarray:
  """uint8 frames [N, size, size + 8, 3]: not square and not the model's size."""
  return np.random.default_rng(seed).integers(0, 256, (count, size, size + 8, 3), np.uint8)


def test_similarity_matches_transformers_cosine(tiny_clip, converted):
  model, tokenizer, _ = tiny_clip
  net = load_feature_net(converted)
  frames = _frames(3)
  prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]

  got = clip_score.clip_similarity(net, frames, prompts, batch_size=2)

  pixels = np.array(clip_score.preprocess(frames, IMAGE_SIZE))  # Same input pixels.
  ids = tokenizer(prompts, padding="max_length", max_length=tiny_sd.MAX_LENGTH,
                  return_tensors="pt").input_ids
  with torch.no_grad():
    out = model(input_ids=ids, pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
  want = torch.sum(out.image_embeds * out.text_embeds, dim=-1).numpy()  # Both normalised.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_one_prompt_applies_to_every_frame(converted):
  net = load_feature_net(converted)
  frames = _frames(2, seed=1)

  np.testing.assert_allclose(clip_score.clip_similarity(net, frames, PROMPTS[1]),
                             clip_score.clip_similarity(net, frames, [PROMPTS[1]] * 2),
                             atol=1e-6)


def test_converted_directory_records_the_model(converted, tiny_clip):
  model, _, _ = tiny_clip
  spec = json.loads((converted / convert_feature_nets.CONFIG_FILE).read_text())
  conversion = json.loads((converted / convert_feature_nets.CONVERSION_FILE).read_text())

  assert spec["kind"] == "clip"
  assert spec["model"]["projection_dim"] == model.config.projection_dim
  assert conversion["left_out"] == ["logit_scale"]


def test_preprocess_crops_the_centre_and_normalises():
  # A frame at the model's size inside a wider one: its centre crop is the inner frame.
  inner = np.random.default_rng(2).uniform(-1, 1, (IMAGE_SIZE, IMAGE_SIZE, 3))
  wide = np.concatenate([np.full((IMAGE_SIZE, 4, 3), -1.0), inner,
                         np.full((IMAGE_SIZE, 4, 3), 1.0)], axis=1).astype(np.float32)

  got = clip_score.preprocess(jnp.asarray(wide), IMAGE_SIZE)

  want = ((inner + 1) / 2 - np.asarray(clip_score.CLIP_MEAN)) / np.asarray(clip_score.CLIP_STD)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_prompt_count_must_match_frames(converted):
  with pytest.raises(ValueError, match="one per frame"):
    clip_score.clip_similarity(load_feature_net(converted), _frames(3), PROMPTS)


def test_i3d_network_is_refused():
  with pytest.raises(ValueError, match="--kind=clip"):
    clip_score.clip_similarity(FeatureNet("i3d", None, None, {}), _frames(1), PROMPTS[0])


def test_cli_rejects_a_folder_without_config(tmp_path):
  assert convert_feature_nets.main(["--kind=clip", f"--src={tmp_path}",
                                    f"--dst={tmp_path / 'out'}"]) == 2
