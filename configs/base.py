"""ART·V, the paper's setup (METHOD.md "Defaults"): SD 2.1-base fine-tuned at 256x256.

Usage: python -m artv_jax.main --config=configs/base.py --workdir=DIR \
           --config.model.pretrained=/path/to/converted_sd21_base
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = model = ml_collections.ConfigDict()
  # Output dir of `python -m artv_jax.convert` (SD 2.1-base). Empty: build the networks below
  # from scratch (demo / tests).
  model.pretrained = ""
  model.latent_space = "vae"  # 'vae' (SD latents) or 'pixels' (frames are the latents; demo)
  # Network configs (diffusers config.json fields), used only when model.pretrained is empty.
  model.unet = ml_collections.ConfigDict()
  model.text_encoder = ml_collections.ConfigDict()
  model.vae = ml_collections.ConfigDict()
  model.tokenizer = ""  # folder with a CLIP tokenizer; empty: the converted checkpoint's
  model.num_ref_frames = 1  # K previous frames used as references (up to 3)
  model.use_anchor = True  # condition on the first frame too (METHOD §3)
  model.use_mask = True  # masked diffusion (METHOD §2); False: plain AR diffusion
  model.use_ref_noise_embedding = True  # embed the reference noise level s into the time emb
  model.reference_pathway = "adapter"  # 'adapter' (T2I-Adapter style) or 'concat' (conv_in)
  model.adapter_width_divisor = 4  # adapter channels = UNet block channels // this
  # Pooled text states added to the time embedding (zero-initialised): a global text pathway
  # beside cross-attention, for models trained from scratch.
  model.use_text_time_embedding = False
  # Noise schedule: fields set here (not empty, not 0) replace the pretrained scheduler's; a
  # model from scratch starts from SD's (scaled_linear 0.00085-0.012, epsilon).
  model.scheduler = ml_collections.ConfigDict(dict(
      beta_schedule="", beta_start=0.0, beta_end=0.0, prediction_type=""))
  model.mask_bias_init = 4.0  # initial mask logit: sigmoid(4) = 0.98, start as the image model
  model.dtype = "bfloat16"  # compute dtype; parameters stay float32
  model.remat = True  # gradient checkpointing of every UNet block
  # With remat, a jax.checkpoint_policies name of the values kept inside a block (empty: none).
  model.remat_policy = ""
  # Attention lowering: 'auto' (the fastest measured on the backend), 'xla', 'cudnn' (GPU
  # flash attention) or 'cpu_blocked' (kernels/cpu_blocked_attention.py).
  model.attention = "auto"
  # Dense-layer lowering: 'auto' (the fastest measured on the backend: 'cpu' on CPU), 'xla'
  # (flax's own) or 'cpu' (weight gradient on XLA:CPU's fast matmul; kernels/cpu_dense.py).
  model.dense = "auto"

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.max_ref_noise_level = 200  # s_max of reference noise augmentation (of 1000)
  diffusion.p_drop_text = 0.1  # CFG: drop only the text
  diffusion.p_drop_refs = 0.1  # CFG: drop only references + anchor
  diffusion.p_drop_both = 0.05  # CFG: drop both (pure unconditional)
  # Weight of the network's own (unmasked) loss beside the masked one; 0 is the paper's loss.
  diffusion.unmasked_loss_weight = 0.0

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "webvid"  # 'webvid' (TFDS builder over CSV + videos) or 'synthetic_shapes'
  data.data_dir = ""  # TFDS data_dir
  data.manual_dir = ""  # webvid: folder with the CSV and the videos
  # webvid: build in this many parts (by video id), part i by process i % processes, all in
  # parallel; read as one data set. Changing it builds the parts anew.
  data.webvid_parts = 1
  data.variant = ""  # synthetic_shapes: a predefined clip mix ('demo'); empty: the standard one
  data.resolution = 256  # frames are resized (center crop) to this square size
  data.min_stride = 1  # frame stride sampled in [min_stride, max_stride]: the motion step
  data.max_stride = 4
  data.max_anchor_strides = 0  # most strides from anchor to target; 0: the clip's length
  # Processes decoding clips and sampling tuples (per JAX process); 0: in the trainer's process.
  # A checkpoint resumes only with the count it was saved with.
  data.worker_count = 4
  # Output (--out) of python -m artv_jax.data.precompute: frames as VAE posterior moments and
  # captions as text states, encoded once by model.pretrained. Empty: encoded at every step.
  data.precomputed_dir = ""

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 64  # global batch, over all hosts and devices
  train.grad_accum_steps = 1  # micro-batches per optimiser step
  train.num_steps = 100_000
  train.learning_rate = 1e-5  # full UNet; use 1e-4 with trainable='new_and_attention'
  train.warmup_steps = 1_000
  train.lr_schedule = "constant"  # 'constant' or 'cosine' (after warmup)
  train.weight_decay = 1e-2
  train.adam_b2 = 0.999
  train.grad_clip_norm = 1.0
  train.ema_decay = 0.9999  # 0 disables the EMA
  train.trainable = "unet"  # 'unet' (+ new parts) or 'new_and_attention'
  train.log_every = 50
  train.checkpoint_every = 1_000
  train.keep_checkpoints = 3

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # -1: all devices not used by fsdp
  mesh.fsdp = 1  # parameter/optimiser sharding axis
  mesh.min_shard_size = 2**14  # tensors with fewer elements stay replicated
  # dtype the fsdp all-gather of the parameters moves: 'float32' (the master weights) or
  # 'compute' (cast to model.dtype first: half the bytes in bf16, gradients reduced in it).
  mesh.gather_dtype = "float32"

  config.sample = sample = ml_collections.ConfigDict()
  sample.num_frames = 64
  sample.num_steps = 50  # DDIM steps per frame
  sample.sampler = "ddim"  # 'ddim' or 'dpm_solver'
  sample.eta = 0.0
  sample.text_scale = 7.5  # s_txt of dual classifier-free guidance
  sample.ref_scale = 1.5  # s_ref
  sample.ref_noise_level = 50  # s at sampling time
  sample.clip_x0 = False  # clip x̂0 to [-1, 1] at each step (pixel-space models)
  sample.chunk_frames = 16  # frames per compiled call (memory is flat in video length)
  # 'trailing' (from t = T-1: best with few steps), 'leading' or 'linspace' (diffusers' names)
  sample.timestep_spacing = "trailing"
  sample.upscale = 0  # nearest-neighbour factor of the written frames; 0: to at least 128 px
  sample.contact_sheet_every = 0  # every Nth frame in contact_sheet.png; 0: about 48 tiles
  sample.reset_anchor_on_prompt_change = False
  sample.use_ema = True
  sample.init = ""  # image file (image-to-video) or video file (continuation); empty: T2V
  sample.run_name = ""  # folder under WORKDIR/samples for this run; empty: the next number
  sample.resume = False  # continue run_name (or the highest number) from its last chunk
  # 'RUN@FRAME': a new run starting from run RUN's video at chunk boundary FRAME, new prompts
  sample.branch_from = ""
  # (start frame, prompt) pairs; the first must start at 0.
  sample.prompts = (
      (0, "a corgi running on the beach"),
  )
  # The schedule as text, which the command line can give: 'PROMPT' or 'FRAME:PROMPT;...';
  # replaces sample.prompts where set.
  sample.prompts_text = ""
  sample.fps = 8

  # --mode=eval (artv_jax/evaluate.py): held-out prompts of the synthetic shapes data set.
  config.eval = evaluation = ml_collections.ConfigDict()
  evaluation.num_frames = 256  # frames per video; drift is reported at frames 64/256/1024
  evaluation.num_segments = 4  # prompts per video, the motion turning at each new one
  evaluation.num_videos = 10  # held-out schedules to generate (at most 10, one per triple)
  evaluation.i3d = ""  # converted I3D (eval/convert_feature_nets.py) for FVD; empty: no FVD
  evaluation.clip = ""  # converted CLIP for CLIP similarity; empty: skipped
  return config
