"""A small ART·V trained from scratch on the synthetic shapes data set, in pixel space.

Fast enough for 2 CPU cores; used by the README's first command:
  python -m artv_jax.main --config=configs/demo.py --workdir=workdir/demo --mode=train_and_sample
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  model = config.model
  model.latent_space = "pixels"  # 32x32x3 frames are the latents: no VAE to train
  model.tokenizer = "synthetic_shapes"  # closed-vocabulary tokenizer, written to the workdir
  model.unet = ml_collections.ConfigDict(dict(
      in_channels=3, out_channels=3, sample_size=32,
      block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
      # No attention at full resolution: 1024-token self-attention would dominate the step.
      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
      attention_head_dim=4, cross_attention_dim=64))
  model.text_encoder = ml_collections.ConfigDict(dict(
      hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
      max_position_embeddings=16, hidden_act="quick_gelu"))
  model.dtype = "float32"
  model.remat = False

  config.data.dataset = "synthetic_shapes"
  config.data.resolution = 32
  config.data.min_stride = 1
  config.data.max_stride = 2
  config.data.shuffle_buffer = 2_000
  # A quarter of the examples train the text-to-image mode that makes frame 0.
  config.diffusion.p_drop_refs = 0.25

  train = config.train
  train.batch_size = 8
  train.num_steps = 5_000  # about 12 minutes on 2 CPU cores
  train.learning_rate = 1e-3
  train.warmup_steps = 100
  train.lr_schedule = "cosine"
  train.weight_decay = 0.0
  train.ema_decay = 0.999
  train.log_every = 50
  train.checkpoint_every = 1_000

  sample = config.sample
  sample.num_frames = 240
  sample.num_steps = 20
  sample.chunk_frames = 40
  sample.text_scale = 3.0
  # Reference guidance above 1 extrapolates away from the unconditional image model, whose
  # difference from the copied reference is noise in this small model: 8 frames on from a
  # rendered frame, the background's RMS error was 0.12 at s_ref 1.0 and 0.44 at 1.5.
  sample.ref_scale = 1.0
  sample.clip_x0 = True  # pixels: the frames live in [-1, 1]
  sample.prompts = (
      (0, "a red circle moves right on a gray background"),
      (80, "a red circle moves down on a gray background"),
      (160, "a red circle moves left on a gray background"),
  )
  return config
