"""Text-to-video sampling with the paper's setup: frame 0 from the model itself (pure T2I).

  python -m artv_jax.main --config=configs/t2v.py --workdir=runs/artv --mode=sample \
      --config.model.pretrained=converted/sd21_base
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.sample.num_frames = 128
  config.sample.prompts = ((0, "a red sports car driving along a coastal road at sunset"),)
  return config
