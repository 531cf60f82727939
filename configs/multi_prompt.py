"""A long video composed from several prompts, the anchor reset at each scene change.

  python -m artv_jax.main --config=configs/multi_prompt.py --workdir=runs/artv --mode=sample \
      --config.model.pretrained=converted/sd21_base
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.sample.num_frames = 192
  config.sample.reset_anchor_on_prompt_change = True  # scene changes: new anchor per prompt
  config.sample.prompts = (
      (0, "a red ball rolls to the right across a wooden floor"),
      (64, "the red ball bounces up and down"),
      (128, "the red ball rolls to the left"),
  )
  return config
