"""Sample a trained run: restore its checkpoint and write a video with the scan sampler.

Used by ``python -m artv_jax.main --mode=sample``. The mode follows ``config.sample.init``:
empty is text-to-video; an image file is image-to-video (text + image); a video file is the
continuation of that video (its last frames become the references, its first the anchor).
"""
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from artv_jax import sampling, train
from artv_jax.data import video_io


def restore_params(config: ml_collections.ConfigDict, workdir: str):
  """(trainer, ART·V params of the latest checkpoint: the EMA if ``sample.use_ema``)."""
  trainer = train.make_trainer(config, workdir)
  manager = train.checkpoint_manager(workdir, config)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
        f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: train first "
        "(--mode=train or --mode=train_and_sample) with the same --workdir.")
  state = train.restore_state(manager, trainer, step)
  logging.info("Sampling from the checkpoint of step %d.", step)
  return trainer, state.ema_params if config.sample.use_ema else state.params


def load_init_frames(config: ml_collections.ConfigDict):
  """The frames a video starts from ([N, H, W, 3] uint8), or None for text-to-video."""
  path = config.sample.init
  if not path:
    return None
  size = config.data.resolution
  try:
    frames, _ = video_io.read_video(path, height=size, width=size)
  except video_io.VideoReadError as e:
    raise FileNotFoundError(f"config.sample.init: {e}") from e
  return frames


def video_inputs(trainer: train.Trainer, config: ml_collections.ConfigDict) -> dict:
  """The arguments of ``sampling.generate_video`` fixed by the trained run's networks:
  {'encode_text', 'codec', 'latent_shape'}."""
  models = trainer.models
  text_params = models.frozen_params["text_encoder"]
  encode_text = jax.jit(lambda ids: models.text_encoder.apply({"params": text_params}, ids))
  size = train.latent_size(models, config.data.resolution)
  return {"encode_text": lambda prompts: encode_text(train.tokenize(models.tokenizer, prompts)),
          "codec": sampling.latent_codec(models.vae, models.frozen_params.get("vae")),
          "latent_shape": (size, size, models.artv.latent_channels)}


def sample_from_workdir(config: ml_collections.ConfigDict, workdir: str) -> sampling.VideoResult:
  """Writes WORKDIR/samples/{video.mp4, video.gif, contact_sheet.png, sample.json}."""
  trainer, params = restore_params(config, workdir)
  result = sampling.generate_video(
      trainer.models.artv, params, trainer.models.schedule, config.sample,
      os.path.join(workdir, "samples"), seed=config.seed,
      given_frames=load_init_frames(config), **video_inputs(trainer, config))
  logging.info("Wrote %s", result)
  return result
