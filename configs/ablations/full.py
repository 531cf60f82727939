"""Ablation: masked diffusion + the anchor frame = full ART·V, exactly configs/demo.py."""
import ml_collections

from configs.ablations import masked


def get_config() -> ml_collections.ConfigDict:
  config = masked.get_config()
  config.model.use_anchor = True
  return config
