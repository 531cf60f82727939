"""The networks of a run, from its config: frozen text encoder and VAE, the ART·V network
around the SD UNet, the tokenizer and the noise schedule.

Converted SD weights (``model.pretrained``) or a model from scratch; shared by training,
sampling, evaluation and pre-encoding, so that all of them see the same networks.
"""
import functools
from typing import Any, NamedTuple, Optional

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from artv_jax import parallel
from artv_jax import paths
from artv_jax.diffusion.schedule import SD_SCHEDULER_CONFIG, Schedule, schedule_from_config
from artv_jax.models.artv import ARTV, artv_unet, init_artv_params
from artv_jax.models.clip_text import CLIPTextModel
from artv_jax.models.unet import UNet2DConditionModel
from artv_jax.models.vae import AutoencoderKL

# Seconds the other processes wait for process 0 to write the tokenizer.
TOKENIZER_WAIT_S = 600


def seeds(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """(models rng, train-state rng) of ``config.seed``: a from-scratch run's frozen networks
  are made from the first, so sampling rebuilds the ones training used."""
  models_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  return models_rng, state_rng


class Models(NamedTuple):
  """Everything fixed during training: modules, frozen weights, schedule, tokenizer."""
  artv: ARTV
  text_encoder: CLIPTextModel
  vae: Optional[AutoencoderKL]  # None: latent_space == 'pixels'
  tokenizer: Any  # transformers.CLIPTokenizer
  schedule: Schedule
  frozen_params: dict  # {'text_encoder': ..., 'vae': ...}, never updated
  pretrained_unet: Optional[dict]  # SD UNet params to start from, None for from scratch
  null_tokens: np.ndarray  # [L] token ids of the empty prompt (dropped text)


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
  if config.model.dtype not in names:
    raise ValueError(f"config.model.dtype '{config.model.dtype}' is not one of {list(names)}.")
  return names[config.model.dtype]


def load_tokenizer(config: ml_collections.ConfigDict, workdir: str):
  """The CLIP tokenizer of a from-scratch model (``config.model.tokenizer``).

  'synthetic_shapes' writes the closed-vocabulary tokenizer of the synthetic data set into
  ``workdir/tokenizer`` (every caption word one token; process 0 writes it, the others wait);
  anything else is a tokenizer folder.
  """
  from transformers import CLIPTokenizer
  path = config.model.tokenizer
  if not path:
    raise ValueError("config.model.tokenizer is empty: a model trained from scratch needs a "
                     "CLIP tokenizer folder, or 'synthetic_shapes' (or set "
                     "config.model.pretrained).")
  if path == "synthetic_shapes":
    from artv_jax.data import synthetic_shapes, word_tokenizer
    path = epath.Path(workdir) / "tokenizer"
    if jax.process_index() == 0:  # One writer; the others read it once it is there.
      word_tokenizer.write_word_tokenizer(
          synthetic_shapes.all_captions(), path,
          max_length=config.model.text_encoder.max_position_embeddings)
    parallel.wait_for_all("artv_jax: tokenizer written", TOKENIZER_WAIT_S)
  if not epath.Path(path).is_dir():
    raise FileNotFoundError(f"config.model.tokenizer '{path}' is not a folder.")
  with paths.local_copy(path) as local:
    return CLIPTokenizer.from_pretrained(local, local_files_only=True)


def build_models(config: ml_collections.ConfigDict, rng: jax.Array, workdir: str,
                 mesh: Optional[jax.sharding.Mesh] = None) -> Models:
  """The networks, from converted SD weights (``model.pretrained``) or from scratch.

  With a ``mesh``, converted weights are restored straight into their fsdp shardings on every
  process (:func:`artv_jax.parallel.param_sharding`), never whole on one device.
  """
  from artv_jax.checkpoints import load_pretrained  # Heavy (tokenizer); only needed here.
  dtype = compute_dtype(config)
  m = config.model
  if m.latent_space not in ("vae", "pixels"):
    raise ValueError(f"config.model.latent_space '{m.latent_space}' is not 'vae' or 'pixels'.")
  pretrained_unet = None
  if m.pretrained:
    sharding = None if mesh is None else functools.partial(
        parallel.param_sharding, mesh, min_size=config.mesh.min_shard_size)
    sd = load_pretrained(m.pretrained, dtype=dtype, sharding=sharding)
    unet, text_encoder, vae, tokenizer = sd.unet, sd.text_encoder, sd.vae, sd.tokenizer
    unet = unet.clone(remat=m.remat, remat_policy=m.remat_policy, attention=m.attention,
                      dense=m.dense)
    scheduler = sd.config["scheduler"]
    frozen = {"text_encoder": sd.params["text_encoder"], "vae": sd.params["vae"]}
    pretrained_unet = sd.params["unet"]
  else:
    tokenizer = load_tokenizer(config, workdir)
    unet = UNet2DConditionModel.from_config(m.unet.to_dict(), dtype=dtype, remat=m.remat,
                                            remat_policy=m.remat_policy, attention=m.attention,
                                            dense=m.dense)
    text_encoder = CLIPTextModel.from_config(m.text_encoder.to_dict(), dtype=dtype,
                                             vocab_size=len(tokenizer))
    vae = (AutoencoderKL.from_config(m.vae.to_dict(), dtype=dtype)
           if m.latent_space == "vae" else None)
    scheduler = SD_SCHEDULER_CONFIG
    text_rng, vae_rng = jax.random.split(rng)
    ids = jnp.zeros((1, tokenizer.model_max_length), jnp.int32)
    frozen = {"text_encoder": jax.jit(text_encoder.init)(text_rng, ids)["params"]}
    if vae is not None:
      size = config.data.resolution
      frozen["vae"] = jax.jit(vae.init)(vae_rng, jnp.zeros((1, size, size, 3)))["params"]
  schedule = make_schedule_with_overrides(scheduler, m.scheduler)
  if m.latent_space == "pixels":
    vae = None
    frozen.pop("vae", None)

  latent_channels = 3 if vae is None else vae.latent_channels
  if unet.in_channels != latent_channels:
    raise ValueError(f"UNet in_channels={unet.in_channels} but latents have {latent_channels} "
                     f"channels (latent_space='{m.latent_space}').")
  artv = make_artv(m, unet, latent_channels)
  null_tokens = tokenize(tokenizer, [""])[0]
  return Models(artv, text_encoder, vae, tokenizer, schedule, frozen, pretrained_unet,
                null_tokens)


def make_schedule_with_overrides(scheduler: dict,
                                 overrides: ml_collections.ConfigDict) -> Schedule:
  """The schedule of a diffusers scheduler config, with ``config.model.scheduler``'s set fields
  (not empty, not 0) in place of its own."""
  changed = {key: value for key, value in overrides.items() if value not in ("", 0, 0.0)}
  try:
    return schedule_from_config({**scheduler, **changed})
  except ValueError as e:
    raise ValueError(f"config.model.scheduler {changed}: {e}") from e


def make_artv(model_config: ml_collections.ConfigDict, unet: UNet2DConditionModel,
              latent_channels: int) -> ARTV:
  """The ART·V network around ``unet`` that ``config.model`` describes."""
  m = model_config
  return ARTV(
      unet=artv_unet(unet, num_ref_frames=m.num_ref_frames, use_anchor=m.use_anchor,
                     use_mask=m.use_mask, reference_pathway=m.reference_pathway),
      latent_channels=latent_channels, num_ref_frames=m.num_ref_frames,
      use_anchor=m.use_anchor, use_mask=m.use_mask,
      use_ref_noise_embedding=m.use_ref_noise_embedding,
      reference_pathway=m.reference_pathway, adapter_width_divisor=m.adapter_width_divisor,
      use_text_time_embedding=m.use_text_time_embedding)


def tokenize(tokenizer, captions) -> np.ndarray:
  """Captions -> [B, L] int32 token ids, padded/truncated to the tokenizer's max length."""
  captions = [c.decode() if isinstance(c, bytes) else str(c) for c in captions]
  return np.asarray(tokenizer(captions, padding="max_length", truncation=True,
                              max_length=tokenizer.model_max_length)["input_ids"], np.int32)


def latent_size(models: Models, resolution: int) -> int:
  """Side of the latent of a resolution x resolution frame; checks divisibility."""
  factor = 1 if models.vae is None else 2 ** (len(models.vae.block_out_channels) - 1)
  unet_factor = 2 ** (len(models.artv.unet.block_out_channels) - 1)
  if resolution % (factor * unet_factor):
    raise ValueError(f"resolution {resolution} is not divisible by {factor * unet_factor} "
                     f"(VAE down-sampling {factor} x UNet down-sampling {unet_factor}).")
  return resolution // factor


def init_params(config: ml_collections.ConfigDict, models: Models, rng: jax.Array,
                pretrained_unet: Optional[dict] = None) -> Any:
  """The ART·V parameters before step 0: the SD UNet's (converted, or random) plus the new
  parts. ``pretrained_unet`` is an argument so that a jitted init takes the (sharded) weights
  as inputs rather than as constants."""
  size = latent_size(models, config.data.resolution)
  return init_artv_params(models.artv, rng, (size, size), len(models.null_tokens),
                          mask_bias=config.model.mask_bias_init,
                          pretrained_unet=pretrained_unet)


def param_shapes(config: ml_collections.ConfigDict, models: Models,
                 mesh: jax.sharding.Mesh) -> Any:
  """The ART·V parameters as ShapeDtypeStructs with their fsdp shardings on ``mesh`` (those of
  the train state), e.g. the target of a params-only restore."""
  shapes = jax.eval_shape(functools.partial(init_params, config, models, jax.random.key(0)),
                          models.pretrained_unet)
  shardings = parallel.param_sharding(mesh, shapes, config.mesh.min_shard_size)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      shapes, shardings)
