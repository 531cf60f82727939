"""Reading PyTorch Stable Diffusion checkpoints into numpy state dicts with diffusers names.

Two source layouts:

* a diffusers folder: ``unet/``, ``vae/``, ``text_encoder/`` (each a config.json and
  ``*.safetensors`` or ``*.bin`` weights), ``scheduler/``, ``tokenizer/``, model_index.json;
* an original single-file checkpoint (``.safetensors`` or ``.ckpt``), which has no configs: they
  come from ``config_from``, a preset shipped in ``presets/`` (``sd15``, ``sd21-base``,
  ``sd21``) or a directory in diffusers layout (a diffusers folder, or a converted checkpoint).

Safetensors are read with numpy (bfloat16 through ml_dtypes, which jax depends on); only
``.bin``/``.ckpt`` pickles need torch. :func:`check_architecture` compares the configs with the
sizes the weights show, so a wrong ``config_from`` is named as such. Sources may be URIs
(gs://...); weight files are read from a local copy.
"""
import dataclasses
import json
import re
from typing import Any, Mapping, Optional

from etils import epath
import flax.linen as nn
import ml_dtypes  # pylint: disable=unused-import  # Gives numpy the bfloat16 of bf16 files.
import numpy as np
import safetensors.numpy

from artv_jax import paths
from artv_jax.checkpoints import ldm_layout, pretrained

PRESETS_DIR = epath.Path(__file__).parent / "presets"
_NETWORK_DIRS = ("unet", "vae", "text_encoder")

# diffusers before 0.14 named the VAE attention projections differently; diffusers still
# renames them on load, and so do we.
_OLD_VAE_ATTENTION = re.compile(
    r"^((?:en|de)coder\.mid_block\.attentions\.0)\.(query|key|value|proj_attn)\.")
_NEW_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# transformers stored its position ids as a buffer in older versions: not a parameter.
_TEXT_BUFFERS = ("embeddings.position_ids",)


class SourceError(ValueError):
  """The source checkpoint, its configs or its tokenizer cannot be used; says why."""


@dataclasses.dataclass
class Source:
  """A PyTorch Stable Diffusion checkpoint read into memory.

  Attributes:
    layout: 'diffusers folder' or 'single file'.
    state_dicts: {'unet', 'vae', 'text_encoder'} -> diffusers key -> numpy array. Text encoder
      keys are transformers' without the ``text_model.`` prefix (our parameter names).
    origin: network -> {key in ``state_dicts``: the key in the source files}, for messages.
    dropped: source keys deliberately not converted (buffers, EMA copy, ...).
    configs: {'unet', 'vae', 'text_encoder', 'scheduler'} -> config dict.
    tokenizer_dir: directory with the CLIP tokenizer files (checked to load).
  """
  layout: str
  state_dicts: dict[str, dict[str, np.ndarray]]
  origin: dict[str, dict[str, str]]
  dropped: list[str]
  configs: dict[str, dict[str, Any]]
  tokenizer_dir: epath.Path


def read_source(src: paths.PathLike, config_from: Optional[str] = None,
                tokenizer: Optional[paths.PathLike] = None) -> Source:
  """Reads a diffusers folder or an original single-file checkpoint.

  Configs and tokenizer are checked before the (large) weights are read.

  Args:
    src: the folder or the ``.safetensors``/``.ckpt`` file.
    config_from: for a single file (required there): a preset name or a directory in diffusers
      layout whose configs describe the checkpoint's networks.
    tokenizer: a directory with the tokenizer files (or a diffusers folder with ``tokenizer/``);
      defaults to the ``tokenizer/`` of ``src`` or of ``config_from``.

  Raises:
    SourceError: saying what is missing or wrong and what to pass instead.
  """
  src = epath.Path(src)
  if not src.exists():
    raise SourceError(f"--src {src} does not exist")
  if src.is_dir():
    if config_from is not None:
      raise SourceError("--config-from is for single-file checkpoints; a diffusers folder "
                        "brings its own configs")
    config_dir = src
  elif config_from is None:
    raise SourceError(
        f"{src} is a single-file checkpoint, which carries no network configs; pass "
        f"--config-from with a preset ({', '.join(presets())}) or a diffusers folder of the "
        f"same architecture")
  else:
    config_dir = _config_dir(config_from)
  configs = _read_configs(config_dir)
  tokenizer_dir = _tokenizer_dir(config_dir if tokenizer is None else epath.Path(tokenizer))

  if src.is_dir():
    layout, (state_dicts, origin, dropped) = "diffusers folder", _read_diffusers_folder(src)
  else:
    layout, (state_dicts, origin, dropped) = "single file", _read_single_file(src)
  text, text_origin, text_dropped = _text_encoder_names(state_dicts["text_encoder"],
                                                        origin["text_encoder"])
  state_dicts["text_encoder"], origin["text_encoder"] = text, text_origin
  return Source(layout, state_dicts, origin, dropped + text_dropped, configs, tokenizer_dir)


def check_architecture(name: str, network: nn.Module, state_dict: Mapping[str, np.ndarray]):
  """Compares the sizes a config gives with those the weights show.

  Catches a wrong ``--config-from`` with a message about the architecture (layers per block,
  channels, ...) instead of hundreds of mismatched keys.

  Raises:
    SourceError: listing each field where config and checkpoint disagree.
  """
  wrong = []
  for field, (found, where) in _architecture(name, state_dict).items():
    if found is None or (isinstance(found, tuple) and None in found):
      continue  # Keys missing: the parameter matching reports them.
    configured = getattr(network, field)
    if isinstance(found, tuple) and isinstance(configured, int):
      configured = (configured,) * len(found)
    configured = tuple(configured) if isinstance(configured, (list, tuple)) else configured
    if configured != found:
      wrong.append(f"{field}: config {configured}, checkpoint {found} (from {where})")
  if wrong:
    raise SourceError(
        f"the {name} config does not fit the checkpoint's weights:\n  " + "\n  ".join(wrong) +
        f"\nFor a single file, pass the --config-from of the same model (presets: "
        f"{', '.join(presets())}, or a diffusers folder)")


def _architecture(name: str, sd: Mapping[str, np.ndarray]) -> dict[str, tuple[Any, str]]:
  """Architecture fields read off the weight shapes: field -> (value or None, keys used)."""
  def dim(key, axis):
    return sd[key].shape[axis] if key in sd and sd[key].ndim > axis else None

  def count(prefix):
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})

  if name == "unet":
    levels = count("down_blocks.")
    cross = next((v.shape[-1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    return {
        "in_channels": (dim("conv_in.weight", 1), "conv_in.weight"),
        "out_channels": (dim("conv_out.weight", 0), "conv_out.weight"),
        "block_out_channels": (tuple(dim(f"down_blocks.{i}.resnets.0.conv1.weight", 0)
                                     for i in range(levels)),
                               "down_blocks.*.resnets.0.conv1.weight"),
        "layers_per_block": (tuple(count(f"down_blocks.{i}.resnets.") for i in range(levels)),
                             "down_blocks.*.resnets.*"),
        "cross_attention_dim": (cross, "*.attn2.to_k.weight"),
    }
  if name == "vae":
    levels = count("encoder.down_blocks.")
    return {
        "in_channels": (dim("encoder.conv_in.weight", 1), "encoder.conv_in.weight"),
        "latent_channels": (dim("decoder.conv_in.weight", 1), "decoder.conv_in.weight"),
        "block_out_channels": (tuple(dim(f"encoder.down_blocks.{i}.resnets.0.conv1.weight", 0)
                                     for i in range(levels)),
                               "encoder.down_blocks.*.resnets.0.conv1.weight"),
        "layers_per_block": (count("encoder.down_blocks.0.resnets."),
                             "encoder.down_blocks.0.resnets.*"),
    }
  return {
      "vocab_size": (dim("embeddings.token_embedding.weight", 0),
                     "embeddings.token_embedding.weight"),
      "hidden_size": (dim("embeddings.token_embedding.weight", 1),
                      "embeddings.token_embedding.weight"),
      "max_position_embeddings": (dim("embeddings.position_embedding.weight", 0),
                                  "embeddings.position_embedding.weight"),
      "num_hidden_layers": (count("encoder.layers."), "encoder.layers.*"),
      "intermediate_size": (dim("encoder.layers.0.mlp.fc1.weight", 0),
                            "encoder.layers.0.mlp.fc1.weight"),
  }


def read_weights(path: paths.PathLike) -> dict[str, np.ndarray]:
  """A state dict from ``.safetensors`` (numpy) or a ``.bin``/``.ckpt`` pickle (needs torch);
  a Lightning ``.ckpt`` is unwrapped from its ``state_dict`` entry."""
  path = epath.Path(path)
  if path.suffix == ".safetensors":
    with paths.local_copy(path) as local:  # safetensors maps a local file.
      return safetensors.numpy.load_file(local)
  if path.suffix in (".bin", ".ckpt", ".pt", ".pth"):
    return _read_pickle(path)
  raise SourceError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors, "
                    f".bin or .ckpt")


def _read_pickle(path: epath.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top  # Optional: only pickles need it.
  except ImportError:
    raise SourceError(f"{path} is a PyTorch pickle; reading it needs PyTorch (pip install "
                      f"torch), or convert it to .safetensors") from None
  try:
    with paths.local_copy(path) as local:
      state_dict = torch.load(local, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # Unpickling fails many ways.
    raise SourceError(f"{path} cannot be read as a plain state dict ({e}); convert it to "
                      f".safetensors") from None
  if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
    state_dict = state_dict["state_dict"]  # A PyTorch Lightning checkpoint.
  not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
  if not_tensors:
    raise SourceError(f"{path} has entries that are not tensors: {not_tensors[:10]}")
  # torch cannot hand bfloat16 to numpy; float32 holds it exactly.
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in
          state_dict.items()}


def _read_diffusers_folder(folder: epath.Path) -> tuple[dict, dict, list]:
  """(state dicts, origin, dropped keys) of a diffusers folder's three networks."""
  missing = [d for d in _NETWORK_DIRS if not (folder / d).is_dir()]
  if missing:
    raise SourceError(f"{folder} is not a diffusers Stable Diffusion folder: it has no "
                      f"{', '.join(d + '/' for d in missing)}")
  state_dicts, origin = {}, {}
  for name in _NETWORK_DIRS:
    state_dict = {}
    for file in weight_files(folder / name):
      state_dict.update(read_weights(file))
    if name == "vae":
      state_dict = {_OLD_VAE_ATTENTION.sub(lambda m: f"{m[1]}.{_NEW_VAE_ATTENTION[m[2]]}.", k): v
                    for k, v in state_dict.items()}
    state_dicts[name] = state_dict
    origin[name] = {k: f"{name}/{k}" for k in state_dict}
  return state_dicts, origin, []


def weight_files(folder: epath.Path) -> list[epath.Path]:
  """The weight files of one network: safetensors preferred, sharded or not."""
  for suffix in (".safetensors", ".bin"):
    index = sorted(folder.glob(f"*{suffix}.index.json"))
    if len(index) == 1:
      shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
      return [folder / shard for shard in shards]
    files = sorted(folder.glob(f"*{suffix}"))
    # diffusers "variants" (diffusion_pytorch_model.fp16.safetensors) sit next to the main file.
    plain = [f for f in files if "." not in f.name[:-len(suffix)]]
    if len(files) == 1 or len(plain) == 1:
      return plain or files
    if files:
      raise SourceError(f"{folder} has several {suffix} weight files "
                        f"{[f.name for f in files]}; keep one")
  raise SourceError(f"{folder} has no *.safetensors or *.bin weights")


def _read_single_file(path: epath.Path) -> tuple[dict, dict, list]:
  """(state dicts, origin, dropped keys) of an original checkpoint's three networks."""
  try:
    networks = ldm_layout.convert_single_file(read_weights(path))
  except ValueError as e:
    raise SourceError(f"{path}: {e}") from None
  return ({name: r.state_dict for name, r in networks.items()},
          {name: r.origin for name, r in networks.items()},
          [key for r in networks.values() for key in r.dropped])


def presets() -> list[str]:
  """Names of the shipped config presets."""
  return sorted(p.name for p in PRESETS_DIR.iterdir() if p.is_dir())


def _config_dir(config_from: str) -> epath.Path:
  if (PRESETS_DIR / config_from).is_dir():
    return PRESETS_DIR / config_from
  if epath.Path(config_from).is_dir():
    return epath.Path(config_from)
  raise SourceError(f"--config-from {config_from!r} is neither a preset "
                    f"({', '.join(presets())}) nor a directory")


def _read_configs(directory: epath.Path) -> dict[str, dict[str, Any]]:
  try:
    return pretrained.read_configs(directory)
  except FileNotFoundError as e:
    raise SourceError(str(e)) from None


def _tokenizer_dir(path: epath.Path) -> epath.Path:
  """The tokenizer folder at ``path`` (or at ``path/tokenizer``), checked to load."""
  if (path / pretrained.TOKENIZER_DIR).is_dir():  # A diffusers folder.
    path = path / pretrained.TOKENIZER_DIR
  if not any((path / f).is_file() for f in ("vocab.json", "tokenizer.json")):
    raise SourceError(
        f"no tokenizer in {path} (config presets ship none); pass --tokenizer DIR: the "
        f"tokenizer/ folder of a diffusers checkpoint of the same model, or any folder with "
        f"its vocab.json and merges.txt")
  try:
    pretrained.load_tokenizer(path)
  except Exception as e:  # pylint: disable=broad-except  # tokenizers raises bare Exception.
    raise SourceError(f"the tokenizer in {path} does not load as a CLIPTokenizer: {e}") from None
  return path


def _text_encoder_names(state_dict: Mapping[str, np.ndarray], origin: Mapping[str, str]
                        ) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
  """transformers CLIPTextModel keys -> ours: no ``text_model.`` prefix, no buffers.

  Returns the state dict, its origin map and the source names of the dropped buffers.
  """
  out, out_origin, dropped = {}, {}, []
  for key, value in state_dict.items():
    new_key = key.removeprefix("text_model.")
    if new_key in _TEXT_BUFFERS:
      dropped.append(origin[key])
    else:
      out[new_key], out_origin[new_key] = value, origin[key]
  return out, out_origin, dropped
