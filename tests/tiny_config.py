"""The demo config shrunk for tests: a tiny pixel-space ART·V on the demo's 16px clips."""
import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  config.model.unet.update(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=2,
                           cross_attention_dim=16,
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
  config.model.text_encoder.update(hidden_size=16, intermediate_size=32, num_attention_heads=2)
  # A constant schedule keeps num_steps out of the compiled step, so runs of different
  # lengths share the persistent compilation cache.
  config.train.update(batch_size=8, num_steps=6, log_every=1, checkpoint_every=3,
                      warmup_steps=2, lr_schedule="constant", ema_decay=0.9)
  config.mesh.min_shard_size = 64  # so the tiny parameters really are sharded
  config.sample.update(num_frames=8, num_steps=2, chunk_frames=4)
  return config
