"""Ablation: reference noise augmentation + masked diffusion, still without the anchor."""
import ml_collections

from configs.ablations import ref_noise


def get_config() -> ml_collections.ConfigDict:
  config = ref_noise.get_config()
  config.model.use_mask = True
  return config
