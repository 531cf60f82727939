"""CLIP similarity between generated frames and their prompt.

Each frame and its prompt are embedded by CLIP's image and text towers (both projected into the
joint space) and compared by the cosine of the embeddings, in [-1, 1], higher meaning the frame
shows the prompt better. A video's score is the mean over its frames ("CLIPSIM" of text-to-video
papers; some report it times 100, CLIPScore of Hessel et al. is 2.5 * max(cos, 0)). Like FVD,
the value depends on the CLIP model (ViT-L/14 is usual): compare only numbers computed with the
same converted weights.

Input pipeline, as transformers' CLIPImageProcessor: shorter side resized to the model's image
size (bicubic; antialiased when shrinking, so not bit-identical to PIL), centre crop,
normalisation with CLIP's mean and std. Prompts are tokenized with the converted checkpoint's
tokenizer, padded/truncated to the text tower's length.

    net = load_feature_net(config.eval.clip)       # the converted CLIPModel
    scores = clip_similarity(net, frames, prompts)  # [N]: frame i against prompts[i]
"""
import functools
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from artv_jax.eval.convert_feature_nets import FeatureNet
from artv_jax.eval.frames import resize_center_crop, to_unit_interval
from artv_jax.models.clip_vision import CLIPModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's RGB normalisation.
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(frames: jax.Array, size: int) -> jax.Array:
  """The image tower's input: frames [..., H, W, 3] uint8 in [0, 255] or float in [-1, 1] ->
  [..., size, size, 3], shorter side resized (bicubic), centre cropped, CLIP-normalised."""
  frames = resize_center_crop(to_unit_interval(frames), size, "cubic")
  return (frames - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def tokenize(net: FeatureNet, prompts: Sequence[str]) -> np.ndarray:
  """prompts -> input_ids [len(prompts), L] int32, L = the text tower's positions."""
  length = net.model.text_model.max_position_embeddings
  return np.asarray(net.tokenizer(list(prompts), padding="max_length", max_length=length,
                                  truncation=True)["input_ids"], np.int32)


@functools.partial(jax.jit, static_argnames="model")
def _image_embeddings(model: CLIPModel, variables, frames):
  pixels = preprocess(frames, model.vision_model.image_size)
  embeddings = model.apply(variables, pixels, method=CLIPModel.get_image_features)
  return embeddings / jnp.linalg.norm(embeddings, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames="model")
def _text_embeddings(model: CLIPModel, variables, input_ids):
  embeddings = model.apply(variables, input_ids, method=CLIPModel.get_text_features)
  return embeddings / jnp.linalg.norm(embeddings, axis=-1, keepdims=True)


def clip_similarity(net: FeatureNet, frames: np.ndarray, prompts: Union[str, Sequence[str]],
                    *, batch_size: int = 64) -> np.ndarray:
  """Cosine similarity in CLIP space between each frame and its prompt.

  Args:
    net: the converted CLIP model (``load_feature_net``).
    frames: [N, H, W, 3] uint8 in [0, 255] or float in [-1, 1].
    prompts: one prompt for every frame, or N prompts (frame i is compared with prompts[i];
      a multi-prompt video passes the prompt active at each frame). Each distinct prompt is
      embedded once.
    batch_size: frames embedded per compiled call.

  Returns:
    [N] float32 in [-1, 1].
  """
  if net.kind != "clip":
    raise ValueError(f"CLIP similarity needs the CLIP feature network, got a {net.kind!r} "
                     f"one; convert it with python -m artv_jax.eval.convert_feature_nets "
                     f"--kind=clip")
  prompts = [prompts] * len(frames) if isinstance(prompts, str) else list(prompts)
  if len(prompts) != len(frames):
    raise ValueError(f"{len(frames)} frames but {len(prompts)} prompts; pass one prompt or "
                     f"one per frame")
  unique, which = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
  text = np.asarray(_text_embeddings(net.model, net.variables, tokenize(net, unique)))
  images = np.concatenate([
      np.asarray(_image_embeddings(net.model, net.variables, frames[start:start + batch_size]))
      for start in range(0, len(frames), batch_size)])  # [N, P]
  return np.sum(images * text[which.reshape(-1)], axis=-1)
