"""Ablation: plain auto-regressive + reference noise augmentation (levels as in the demo)."""
import ml_collections

from configs import demo
from configs.ablations import plain_ar


def get_config() -> ml_collections.ConfigDict:
  config = plain_ar.get_config()
  full = demo.get_config()
  config.model.use_ref_noise_embedding = full.model.use_ref_noise_embedding
  config.diffusion.max_ref_noise_level = full.diffusion.max_ref_noise_level
  config.sample.ref_noise_level = full.sample.ref_noise_level
  return config
