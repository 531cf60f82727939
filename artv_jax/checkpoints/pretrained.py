"""Converted Stable Diffusion checkpoints: what ``artv_jax.convert`` writes, and loading it.

A converted directory keeps diffusers' layout for everything but the weights, so it can also
serve as ``--config-from`` of another conversion::

  params/                            orbax checkpoint {'unet', 'vae', 'text_encoder'}, float32
  unet/config.json                   diffusers UNet2DConditionModel config
  vae/config.json                    diffusers AutoencoderKL config
  text_encoder/config.json           transformers CLIPTextConfig
  scheduler/scheduler_config.json    diffusers scheduler config (betas, prediction type, ...)
  tokenizer/                         the CLIP tokenizer files, as in the source
  conversion.json                    where the weights came from, and the keys left out

The directory may be a URI (gs://...).
"""
import dataclasses
import json
import os
import tempfile
from typing import Any, Callable, Mapping, Optional

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import transformers

from artv_jax import paths
from artv_jax.checkpoints import orbax_io
from artv_jax.models.clip_text import CLIPTextModel
from artv_jax.models.unet import UNet2DConditionModel
from artv_jax.models.vae import AutoencoderKL

NETWORKS = {"unet": UNet2DConditionModel, "vae": AutoencoderKL,
            "text_encoder": CLIPTextModel}
CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
CONVERSION_FILE = "conversion.json"
# The files a CLIP tokenizer is loaded from: all that is copied of a remote folder, which may
# hold a model's weights beside them.
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


@dataclasses.dataclass(frozen=True)
class StableDiffusion:
  """A pretrained Stable Diffusion: the Flax networks, their parameters and the tokenizer.

  Attributes:
    unet: noisy latents [B, h, w, 4], timesteps [B], text states [B, L, D] -> [B, h, w, 4].
    vae: ``method="encode"``: images [B, H, W, 3] in [-1, 1] -> DiagonalGaussian over
      unscaled latents; ``method="decode"``: unscaled latents -> images.
    text_encoder: input_ids [B, L] -> last hidden state [B, L, D].
    tokenizer: transformers' CLIPTokenizer of the checkpoint.
    params: {'unet', 'vae', 'text_encoder'} -> parameter tree of that network.
    config: {'unet', 'vae', 'text_encoder', 'scheduler'} -> the config dict read from the
      source checkpoint (diffusers / transformers field names).
  """
  unet: UNet2DConditionModel
  vae: AutoencoderKL
  text_encoder: CLIPTextModel
  tokenizer: transformers.CLIPTokenizer
  params: dict
  config: dict


def read_configs(directory: paths.PathLike) -> dict[str, dict]:
  """The four config files of a diffusers-layout directory: {'unet', ..., 'scheduler'}.

  Raises:
    FileNotFoundError: naming the missing files.
  """
  directory = epath.Path(directory)
  missing = [f for f in CONFIG_FILES.values() if not (directory / f).is_file()]
  if missing:
    raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}: expected a diffusers "
                            f"Stable Diffusion layout (unet/, vae/, text_encoder/, scheduler/)")
  return {name: json.loads((directory / f).read_text()) for name, f in CONFIG_FILES.items()}


def build_networks(configs: Mapping[str, Mapping[str, Any]], **overrides) -> dict[str, nn.Module]:
  """{'unet', 'vae', 'text_encoder'} -> Flax module built by its ``from_config``.

  ``overrides`` (e.g. ``dtype=jnp.bfloat16``) go to all three.
  """
  return {name: cls.from_config(configs[name], **overrides) for name, cls in NETWORKS.items()}


def abstract_params(networks: Mapping[str, nn.Module]) -> dict[str, Any]:
  """The parameter trees of ``networks`` as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
  unet, vae = networks["unet"], networks["vae"]
  # Smallest inputs that touch every parameter: sides divisible by the total downsampling.
  unet_side = 2 ** (len(unet.block_out_channels) - 1)
  vae_side = 2 ** (len(vae.block_out_channels) - 1)
  inputs = {
      "unet": (jnp.zeros((1, unet_side, unet_side, unet.in_channels)), jnp.zeros((1,)),
               jnp.zeros((1, 1, unet.cross_attention_dim))),
      "vae": (jnp.zeros((1, vae_side, vae_side, vae.in_channels)),),
      "text_encoder": (jnp.zeros((1, 1), jnp.int32),),
  }
  return {name: jax.eval_shape(networks[name].init, jax.random.key(0),
                               *inputs[name])["params"] for name in networks}


def save_pretrained(directory: paths.PathLike, params: Mapping[str, Any],
                    configs: Mapping[str, Mapping[str, Any]], tokenizer_dir: paths.PathLike,
                    conversion: Optional[Mapping[str, Any]] = None) -> None:
  """Writes a converted checkpoint (layout in the module docstring) into ``directory``, which
  must be empty or absent. ``conversion`` is provenance written to conversion.json."""
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  if any(directory.iterdir()):
    raise FileExistsError(f"{directory} is not empty")
  for name, file in CONFIG_FILES.items():
    (directory / file).parent.mkdir(parents=True, exist_ok=True)
    (directory / file).write_text(json.dumps(configs[name], indent=2, sort_keys=True) + "\n")
  paths.copy_tree(tokenizer_dir, directory / TOKENIZER_DIR)
  (directory / CONVERSION_FILE).write_text(json.dumps(conversion or {}, indent=2) + "\n")
  orbax_io.save_params(directory / PARAMS_DIR, dict(params))


def load_tokenizer(directory: paths.PathLike) -> transformers.CLIPTokenizer:
  """transformers' CLIPTokenizer from a folder (vocab.json + merges.txt, or tokenizer.json),
  local or a URI."""
  directory = epath.Path(directory)
  if paths.is_local(directory):
    return transformers.CLIPTokenizer.from_pretrained(os.fspath(directory),
                                                      local_files_only=True)
  with tempfile.TemporaryDirectory() as local:  # transformers reads local files only.
    for name in TOKENIZER_FILES:
      if (directory / name).exists():
        (directory / name).copy(epath.Path(local) / name)
    return transformers.CLIPTokenizer.from_pretrained(local, local_files_only=True)


def load_pretrained(directory: paths.PathLike, *, dtype: Any = jnp.float32,
                    param_dtype: Any = jnp.float32,
                    sharding: Optional[Callable[[Any], Any]] = None) -> StableDiffusion:
  """Loads what ``python -m artv_jax.convert`` wrote.

  Args:
    directory: the converted checkpoint (``--dst`` of the converter), local or a URI.
    dtype: compute dtype of the three networks.
    param_dtype: dtype the parameters are restored in (stored as float32).
    sharding: maps a network's parameter tree (``jax.ShapeDtypeStruct`` leaves) to the
      shardings to restore it with, e.g. ``lambda tree: parallel.param_sharding(mesh, tree)``:
      every process then reads only its own shards, straight into the training layout (the
      multi-host case). None: every array whole on the default device.

  Returns:
    A :class:`StableDiffusion`; apply a network as
    ``sd.unet.apply({"params": sd.params["unet"]}, latents, timesteps, text_states)``.

  Raises:
    FileNotFoundError: if ``directory`` is not a converted checkpoint.
  """
  directory = epath.Path(directory)
  if not (directory / PARAMS_DIR).is_dir():
    raise FileNotFoundError(
        f"{directory} is not a converted checkpoint (it has no {PARAMS_DIR}/); convert it "
        f"first: python -m artv_jax.convert --src {directory} --dst CONVERTED_DIR")
  configs = read_configs(directory)
  networks = build_networks(configs, dtype=dtype, param_dtype=param_dtype)
  target = abstract_params(networks)
  if sharding is not None:
    target = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), target,
        {name: sharding(tree) for name, tree in target.items()})
  params = orbax_io.restore_params(directory / PARAMS_DIR, target)
  return StableDiffusion(**networks, tokenizer=load_tokenizer(directory / TOKENIZER_DIR),
                         params=params, config=configs)
