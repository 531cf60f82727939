"""Image-to-video: animate a still image with a text description (text + image).

  python -m artv_jax.main --config=configs/i2v.py --workdir=runs/artv --mode=sample \
      --config.model.pretrained=converted/sd21_base --config.sample.init=photo.png
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.sample.init = "image.png"  # the first frame (centre-cropped to data.resolution)
  config.sample.num_frames = 64
  config.sample.prompts = ((0, "waves roll onto the beach"),)
  return config
