"""Ablation: plain auto-regressive diffusion, the previous frame as the only condition.

No reference noise augmentation, no mask (M = 1: the network re-generates every pixel), no
anchor frame; otherwise configs/demo.py. See configs/ablations/__init__.py.
"""
import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  config.model.use_anchor = False
  config.model.use_mask = False
  config.model.use_ref_noise_embedding = False
  config.diffusion.max_ref_noise_level = 0
  config.sample.ref_noise_level = 0  # trained on clean references: sample with clean ones
  return config
