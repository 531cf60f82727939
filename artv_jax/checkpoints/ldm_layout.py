"""The original single-file Stable Diffusion layout (CompVis/Stability ``ldm``) -> diffusers names.

An original checkpoint holds the three networks in one state dict, under these prefixes::

  model.diffusion_model.*   the UNet (ldm's ``openaimodel.UNetModel``)
  first_stage_model.*       the VAE (ldm's ``AutoencoderKL``)
  cond_stage_model.*        the text encoder: SD1 wraps transformers' CLIPTextModel
                            (``cond_stage_model.transformer.text_model.*``), SD2 OpenCLIP's
                            text tower (``cond_stage_model.model.*``)

Inside each network the modules are the ones diffusers has, under other paths
(``input_blocks.4.1`` is ``down_blocks.1.attentions.0``). :func:`convert_single_file` renames
every key to the diffusers (and transformers) name, so the generic rules of
:mod:`artv_jax.checkpoints.rename` finish the job. The renaming is a table of module-path
prefixes built from the block structure the keys themselves show; keys no entry covers keep
their name, so the parameter matching reports them as unexpected.

Two conversions change values, not names: OpenCLIP's fused ``attn.in_proj_weight`` is split into
q/k/v projections, and the VAE attention's 1x1 convs stay 4-D (``convert_state_dict`` squeezes
them into linear kernels).

Not converted, on purpose (listed in :attr:`Renamed.dropped`): the diffusion schedule buffers of
ldm's ``LatentDiffusion`` (``betas``, ``alphas_cumprod``, ...; the scheduler config carries the
schedule), the EMA copy ``model_ema.*`` (``model.diffusion_model.*`` is what diffusers converts
too), and for SD2 OpenCLIP's last transformer layer, ``text_projection`` and ``logit_scale``:
SD2 conditions on the penultimate layer, so diffusers' SD2 text encoder has one layer fewer and
no projection, and ours mirrors it. (SD1's ``position_ids`` buffer is dropped with the other
text encoder buffers by :mod:`artv_jax.checkpoints.sources`, for both layouts.)
"""
import dataclasses
import re
from typing import Iterable, Mapping, Optional

import numpy as np

# Network -> the prefix of its keys in an original checkpoint.
PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.",
}
_SD1_TEXT = "transformer."  # Under cond_stage_model.: transformers' CLIPTextModel.
_SD2_TEXT = "model."  # Under cond_stage_model.: OpenCLIP.

# ldm's LatentDiffusion registers its DDPM schedule as buffers; some checkpoints also keep a
# learned `logvar`. None is a network weight.
_SCHEDULE_BUFFERS = frozenset([
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar",
])
_EMA_PREFIX = "model_ema."

_RESNET = {  # ldm ResBlock submodule -> diffusers ResnetBlock2D submodule.
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
_VAE_ATTENTION = {  # ldm AttnBlock (1x1 convs) -> diffusers Attention.
    "norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0",
}
_OPEN_CLIP_PARTS = {  # OpenCLIP module names -> transformers', wherever they occur.
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn": "self_attn", "c_fc": "fc1",
    "c_proj": "fc2",
}


@dataclasses.dataclass
class Renamed:
  """One network's weights under diffusers names.

  Attributes:
    state_dict: diffusers key -> numpy array (text encoder keys as transformers'
      CLIPTextModel state dict, ``text_model.*``).
    origin: diffusers key -> the key it came from in the original checkpoint, for messages.
    dropped: original keys deliberately left out (see the module docstring).
  """
  state_dict: dict[str, np.ndarray]
  origin: dict[str, str]
  dropped: list[str]


def convert_single_file(checkpoint: Mapping[str, np.ndarray]) -> dict[str, Renamed]:
  """Splits an original SD checkpoint into its three networks under diffusers names.

  Args:
    checkpoint: the original state dict (``model.diffusion_model.*``, ...), numpy values.

  Returns:
    {'unet', 'vae', 'text_encoder'} -> :class:`Renamed`; the keys that belong to no network
    (schedule buffers, EMA copy) are listed in the UNet's ``dropped``.

  Raises:
    ValueError: if a network is absent, or keys belong to none of the known parts.
  """
  parts = {name: {} for name in PREFIXES}
  dropped, unknown = [], []
  for key, value in checkpoint.items():
    name = next((n for n, prefix in PREFIXES.items() if key.startswith(prefix)), None)
    if name is not None:
      parts[name][key[len(PREFIXES[name]):]] = value
    elif key in _SCHEDULE_BUFFERS or key.startswith(_EMA_PREFIX):
      dropped.append(key)
    else:
      unknown.append(key)
  if unknown:
    raise ValueError(f"single-file checkpoint has keys outside the UNet ({PREFIXES['unet']}*), "
                     f"VAE ({PREFIXES['vae']}*) and text encoder ({PREFIXES['text_encoder']}*): "
                     f"{sorted(unknown)[:20]}{' ...' if len(unknown) > 20 else ''}")
  absent = [f"{name} ({PREFIXES[name]}*)" for name, part in parts.items() if not part]
  if absent:
    raise ValueError(f"single-file checkpoint has no {', no '.join(absent)}; is it a full "
                     f"Stable Diffusion 1.x/2.x checkpoint?")

  out = {"unet": unet_to_diffusers(parts["unet"]), "vae": vae_to_diffusers(parts["vae"]),
         "text_encoder": text_encoder_to_diffusers(parts["text_encoder"])}
  for name, renamed in out.items():  # Report original keys with their network prefix.
    renamed.origin = {k: PREFIXES[name] + v for k, v in renamed.origin.items()}
    renamed.dropped = [PREFIXES[name] + k for k in renamed.dropped]
  out["unet"].dropped += dropped
  return out


def unet_to_diffusers(state_dict: Mapping[str, np.ndarray]) -> Renamed:
  """ldm UNetModel keys (without ``model.diffusion_model.``) -> diffusers UNet2DConditionModel.

  ldm numbers the UNet's layers in flat lists: ``input_blocks`` = conv_in, then per resolution
  ``layers`` (resnet[, transformer]) entries and, except at the last resolution, a downsampler;
  ``output_blocks`` = per resolution ``layers + 1`` (resnet[, transformer][, upsampler])
  entries. The number of resolutions and of layers are read off the keys.
  """
  levels, layers = _unet_structure(state_dict)
  per_level = layers + 1
  table = {
      "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
      "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
      "middle_block.1": "mid_block.attentions.0",
      **_resnet("middle_block.0", "mid_block.resnets.0"),
      **_resnet("middle_block.2", "mid_block.resnets.1"),
  }
  for level in range(levels):
    for j in range(layers):
      i = level * per_level + j + 1
      table.update(_resnet(f"input_blocks.{i}.0", f"down_blocks.{level}.resnets.{j}"))
      table[f"input_blocks.{i}.1"] = f"down_blocks.{level}.attentions.{j}"
    for j in range(per_level):
      i = level * per_level + j
      table.update(_resnet(f"output_blocks.{i}.0", f"up_blocks.{level}.resnets.{j}"))
      table[f"output_blocks.{i}.1"] = f"up_blocks.{level}.attentions.{j}"
    if level < levels - 1:
      table[f"input_blocks.{(level + 1) * per_level}.0.op"] = (
          f"down_blocks.{level}.downsamplers.0.conv")
      # The upsampler ends an up block's last layer: entry 1 without a transformer, 2 with.
      last = level * per_level + layers
      for entry in (1, 2):
        table[f"output_blocks.{last}.{entry}.conv"] = f"up_blocks.{level}.upsamplers.0.conv"
  return _rename(state_dict, table)


def vae_to_diffusers(state_dict: Mapping[str, np.ndarray]) -> Renamed:
  """ldm AutoencoderKL keys (without ``first_stage_model.``) -> diffusers AutoencoderKL.

  ldm numbers the decoder's resolutions from the lowest up (``decoder.up.0`` is the last
  block to run); diffusers numbers them in execution order.
  """
  levels = len(_indices(state_dict, "encoder.down"))
  table = {"encoder.norm_out": "encoder.conv_norm_out",
           "decoder.norm_out": "decoder.conv_norm_out"}
  for part in ("encoder", "decoder"):
    table[f"{part}.mid.block_1"] = f"{part}.mid_block.resnets.0"
    table[f"{part}.mid.block_2"] = f"{part}.mid_block.resnets.1"
    for ldm, diffusers in _VAE_ATTENTION.items():
      table[f"{part}.mid.attn_1.{ldm}"] = f"{part}.mid_block.attentions.0.{diffusers}"
  for i in range(levels):
    table[f"encoder.down.{i}.block"] = f"encoder.down_blocks.{i}.resnets"
    table[f"encoder.down.{i}.downsample"] = f"encoder.down_blocks.{i}.downsamplers.0"
    table[f"decoder.up.{i}.block"] = f"decoder.up_blocks.{levels - 1 - i}.resnets"
    table[f"decoder.up.{i}.upsample"] = f"decoder.up_blocks.{levels - 1 - i}.upsamplers.0"
  return _rename(state_dict, table, parts={"nin_shortcut": "conv_shortcut"})


def text_encoder_to_diffusers(state_dict: Mapping[str, np.ndarray]) -> Renamed:
  """``cond_stage_model.*`` keys (without that prefix) -> transformers CLIPTextModel names
  (``text_model.*``, as diffusers' own conversion writes them).

  SD1's ``transformer.text_model.*`` is transformers' layout already; SD2's OpenCLIP
  ``model.*`` is renamed, its fused attention input projection split, and its last layer,
  ``text_projection`` and ``logit_scale`` dropped (see the module docstring).
  """
  if all(k.startswith(_SD1_TEXT) for k in state_dict):
    return Renamed({k[len(_SD1_TEXT):]: v for k, v in state_dict.items()},
                   {k[len(_SD1_TEXT):]: k for k in state_dict}, [])
  if all(k.startswith(_SD2_TEXT) for k in state_dict):
    renamed = _open_clip_to_diffusers({k[len(_SD2_TEXT):]: v for k, v in state_dict.items()})
    renamed.origin = {k: _SD2_TEXT + v for k, v in renamed.origin.items()}
    renamed.dropped = [_SD2_TEXT + k for k in renamed.dropped]
    return renamed
  raise ValueError(f"text encoder keys are neither all cond_stage_model.{_SD1_TEXT}* (SD1, "
                   f"transformers CLIP) nor all cond_stage_model.{_SD2_TEXT}* (SD2, OpenCLIP): "
                   f"{sorted(state_dict)[:10]} ...")


def _open_clip_to_diffusers(state_dict: Mapping[str, np.ndarray]) -> Renamed:
  num_layers = len(_indices(state_dict, "transformer.resblocks"))
  last = f"transformer.resblocks.{num_layers - 1}."
  dropped = sorted(k for k in state_dict if k.startswith(last)
                   or k in ("text_projection", "logit_scale"))
  kept = {k: v for k, v in state_dict.items() if k not in dropped}

  split, split_origin = {}, {}
  for key, value in kept.items():
    match = re.fullmatch(r"(.*)\.in_proj_(weight|bias)", key)
    if not match:
      split[key], split_origin[key] = value, key
      continue
    if value.shape[0] % 3:
      raise ValueError(f"{key} has shape {value.shape}: a fused q/k/v projection needs a first "
                       f"dimension divisible by 3")
    for name, part in zip("qkv", np.split(value, 3)):
      new_key = f"{match[1]}.{name}_proj.{match[2]}"
      split[new_key], split_origin[new_key] = part, key

  table = {"token_embedding": "text_model.embeddings.token_embedding",
           "positional_embedding": "text_model.embeddings.position_embedding.weight",
           "ln_final": "text_model.final_layer_norm"}
  for i in range(num_layers - 1):
    table[f"transformer.resblocks.{i}"] = f"text_model.encoder.layers.{i}"
  renamed = _rename(split, table, parts=_OPEN_CLIP_PARTS)
  renamed.origin = {k: split_origin[v] for k, v in renamed.origin.items()}
  renamed.dropped = dropped
  return renamed


def _unet_structure(state_dict: Mapping[str, np.ndarray]) -> tuple[int, int]:
  """(resolutions, layers per resolution) of an ldm UNet, checked against all its blocks."""
  inputs = _indices(state_dict, "input_blocks")
  outputs = _indices(state_dict, "output_blocks")
  downsamplers = sorted(i for i in inputs if f"input_blocks.{i}.0.op.weight" in state_dict)
  levels = len(downsamplers) + 1
  per_level = len(inputs) // levels
  expected = {
      "input_blocks": (sorted(inputs), list(range(levels * per_level))),
      "downsamplers": (downsamplers, [(level + 1) * per_level for level in range(levels - 1)]),
      "output_blocks": (sorted(outputs), list(range(levels * per_level))),
  }
  for what, (got, want) in expected.items():
    if per_level < 2 or got != want:
      raise ValueError(
          f"unrecognised ldm UNet layout: {len(inputs)} input_blocks with downsamplers at "
          f"{downsamplers} and {len(outputs)} output_blocks do not make a UNet with the same "
          f"number of resnets at every resolution ({what}: got {got}, expected {want})")
  return levels, per_level - 1


def _resnet(ldm: str, diffusers: str) -> dict[str, str]:
  return {f"{ldm}.{a}": f"{diffusers}.{b}" for a, b in _RESNET.items()}


def _indices(keys: Iterable[str], prefix: str) -> set[int]:
  """{i : some key starts with 'prefix.i.'}."""
  pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
  return {int(m[1]) for m in map(pattern.match, keys) if m}


def _rename(state_dict: Mapping[str, np.ndarray], table: Mapping[str, str],
            parts: Optional[Mapping[str, str]] = None) -> Renamed:
  """Renames each key by the longest module-path prefix in ``table``, then renames single path
  components by ``parts``."""
  parts = parts or {}
  out, origin = {}, {}
  for key, value in state_dict.items():
    names = key.split(".")
    new = names
    for n in range(len(names), 0, -1):
      prefix = ".".join(names[:n])
      if prefix in table:
        new = table[prefix].split(".") + names[n:]
        break
    new_key = ".".join(parts.get(name, name) for name in new)
    if new_key in out:
      raise ValueError(f"keys {origin[new_key]!r} and {key!r} both map to {new_key!r}")
    out[new_key], origin[new_key] = value, key
  return Renamed(out, origin, [])
