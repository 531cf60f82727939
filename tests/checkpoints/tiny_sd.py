"""Tiny Stable Diffusion checkpoints built with diffusers / transformers, for the converter tests.

Two styles, each a tiny stand-in for the real architecture's features:

* ``sd1``: CLIP text encoder with quick_gelu (taken at its last layer), UNet transformers with
  1x1-conv projections and one head count for all blocks; single file in ldm layout with
  transformers' CLIP under ``cond_stage_model.transformer``.
* ``sd2``: gelu text encoder, linear projections, a head count per block, upcast attention;
  single file with OpenCLIP under ``cond_stage_model.model``, one layer deeper than the
  diffusers text encoder (SD2 conditions on the penultimate layer).

Each is saved as a diffusers folder (``StableDiffusionPipeline.save_pretrained``, safetensors)
and as an original single file, written by the inverse mapping below: our own code, checked
against diffusers' single-file conversion in test_ldm_layout.py.
"""
import dataclasses
import json
import pathlib
import re
import shutil
import string

import diffusers
import numpy as np
import safetensors.numpy
import torch
import transformers

STYLES = ("sd1", "sd2")
LAYOUTS = ("folder", "single_file")
PROMPTS = ["a photo of a cat", "a red horse"]
MAX_LENGTH = 16  # Tokens per prompt (77 in SD).

_UNET = {
    "sd1": dict(block_out_channels=(8, 16), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                attention_head_dim=2, cross_attention_dim=16),
    "sd2": dict(block_out_channels=(8, 16, 16), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                attention_head_dim=(1, 2, 2), cross_attention_dim=24,
                use_linear_projection=True, upcast_attention=True),
}
_VAE = {
    "sd1": dict(block_out_channels=(8, 16), layers_per_block=1),
    "sd2": dict(block_out_channels=(8, 8, 16), layers_per_block=2),
}
# num_hidden_layers counts OpenCLIP's full depth; the diffusers SD2 model has one layer fewer.
_TEXT = {
    "sd1": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                hidden_act="quick_gelu"),
    "sd2": dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=3,
                hidden_act="gelu"),
}
PREDICTION_TYPES = {"sd1": "epsilon", "sd2": "v_prediction"}
_PAD = {"sd1": "<|endoftext|>", "sd2": "!"}  # SD2's tokenizer pads with "!".


@dataclasses.dataclass
class TinySD:
  """The torch networks and where they are saved.

  Attributes:
    folder: diffusers folder, safetensors weights.
    single_file: original layout (sd1: .safetensors, sd2: a Lightning-style .ckpt).
    tokenizer_dir: the raw tokenizer files (vocab.json, merges.txt, ...).
  """
  style: str
  unet: diffusers.UNet2DConditionModel
  vae: diffusers.AutoencoderKL
  text_encoder: transformers.CLIPTextModel
  folder: pathlib.Path
  single_file: pathlib.Path
  tokenizer_dir: pathlib.Path


def build(style: str, directory: pathlib.Path) -> TinySD:
  """Builds the style's torch networks with perturbed random weights and saves both layouts."""
  torch.manual_seed({"sd1": 1, "sd2": 2}[style])
  tokenizer_dir = write_tokenizer(directory / "tokenizer", _PAD[style])
  tokenizer = transformers.CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
  unet = diffusers.UNet2DConditionModel(sample_size=8, norm_num_groups=4, **_UNET[style])
  vae = diffusers.AutoencoderKL(
      latent_channels=4, norm_num_groups=4, sample_size=16,
      down_block_types=("DownEncoderBlock2D",) * len(_VAE[style]["block_out_channels"]),
      up_block_types=("UpDecoderBlock2D",) * len(_VAE[style]["block_out_channels"]),
      **_VAE[style])
  text_config = dict(vocab_size=64, max_position_embeddings=MAX_LENGTH,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, **_TEXT[style])
  full_text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_config))
  for model in (unet, vae, full_text):
    _perturb(model)
  if style == "sd2":  # What diffusers ships for SD2: OpenCLIP without its last layer.
    text_config["num_hidden_layers"] -= 1
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_config))
    last = f"encoder.layers.{text_config['num_hidden_layers']}."
    text_encoder.load_state_dict({k: v for k, v in full_text.state_dict().items()
                                  if not k.startswith(last)})
  else:
    text_encoder = full_text
  scheduler = diffusers.DDIMScheduler(
      beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
      set_alpha_to_one=False, steps_offset=1, prediction_type=PREDICTION_TYPES[style])

  folder = directory / "diffusers"
  diffusers.StableDiffusionPipeline(
      vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
      safety_checker=None, feature_extractor=None, requires_safety_checker=False,
  ).save_pretrained(folder)
  shutil.rmtree(folder / "tokenizer")  # Keep the raw files, as the SD repositories ship them.
  shutil.copytree(tokenizer_dir, folder / "tokenizer")

  original = to_original_layout(style, _numpy(unet), _numpy(vae), _numpy(full_text),
                                unet.config, vae.config)
  original["betas"] = scheduler.betas.numpy()  # Non-weights that original checkpoints carry.
  original["alphas_cumprod"] = scheduler.alphas_cumprod.numpy()
  original["model_ema.decay"] = np.array(0.9999, np.float32)
  if style == "sd1":
    single_file = directory / "sd1.safetensors"
    safetensors.numpy.save_file(original, single_file)
  else:
    single_file = directory / "sd2.ckpt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in original.items()},
                "global_step": 1234}, single_file)
  return TinySD(style, unet.eval(), vae.eval(), text_encoder.eval(), folder, single_file,
                tokenizer_dir)


def convert_args(model: TinySD, layout: str) -> list[str]:
  """``python -m artv_jax.convert`` arguments for one layout of ``model`` (without --dst)."""
  if layout == "folder":
    return ["--src", str(model.folder)]
  # Configs from the diffusers folder, tokenizer from the raw files: both options exercised.
  return ["--src", str(model.single_file), "--config-from", str(model.folder),
          "--tokenizer", str(model.tokenizer_dir)]


def write_tokenizer(directory: pathlib.Path, pad_token: str) -> pathlib.Path:
  """A CLIP BPE tokenizer over lowercase letters and a few merges, covering ``PROMPTS``."""
  letters = "!" + string.ascii_lowercase
  merges = ["c a", "ca t</w>", "o f</w>", "a n</w>", "h o"]
  tokens = (list(letters) + [c + "</w>" for c in letters] + ["".join(m.split()) for m in merges]
            + ["<|startoftext|>", "<|endoftext|>"])
  directory.mkdir(parents=True)
  (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
  special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
             "unk_token": "<|endoftext|>", "pad_token": pad_token}
  (directory / "special_tokens_map.json").write_text(json.dumps(special))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, **special}))
  return directory


def to_original_layout(style: str, unet: dict, vae: dict, text: dict, unet_config,
                       vae_config) -> dict:
  """diffusers state dicts -> one original (ldm) SD checkpoint; ``text`` is the full-depth
  transformers CLIPTextModel state dict (no ``text_model.`` prefix)."""
  out = {f"model.diffusion_model.{_unet_key(k, unet_config)}": v for k, v in unet.items()}
  out.update({f"first_stage_model.{k}": v
              for k, v in (_vae_entry(k, v, vae_config) for k, v in vae.items())})
  if style == "sd1":
    out.update({f"cond_stage_model.transformer.text_model.{k}": v for k, v in text.items()})
    length = text["embeddings.position_embedding.weight"].shape[0]
    positions = np.arange(length, dtype=np.int64)[None]  # Old transformers' buffer.
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = positions
  else:
    out.update({f"cond_stage_model.model.{k}": v for k, v in _open_clip(text).items()})
  return out


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet_key(rest: str) -> str:
  module, leaf = rest.rsplit(".", 1)
  return f"{_RESNET[module]}.{leaf}"


def _unet_key(key: str, config) -> str:
  per_level = config["layers_per_block"] + 1
  fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
  module, leaf = key.rsplit(".", 1)
  if module in fixed:
    return f"{fixed[module]}.{leaf}"
  if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key):
    level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    if kind == "downsamplers":  # rest is conv.weight / conv.bias
      return f"input_blocks.{(level + 1) * per_level}.0.op.{rest.split('.')[-1]}"
    i = level * per_level + j + 1
    return (f"input_blocks.{i}.0.{_resnet_key(rest)}" if kind == "resnets"
            else f"input_blocks.{i}.1.{rest}")
  if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
    if m[1] == "attentions":
      return f"middle_block.1.{m[3]}"
    return f"middle_block.{2 * int(m[2])}.{_resnet_key(m[3])}"
  if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key):
    level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    if kind == "upsamplers":  # After the last layer's resnet (and transformer, if any).
      has_attention = config["up_block_types"][level].startswith("CrossAttn")
      return f"output_blocks.{level * per_level + per_level - 1}.{2 if has_attention else 1}.{rest}"
    i = level * per_level + j
    return (f"output_blocks.{i}.0.{_resnet_key(rest)}" if kind == "resnets"
            else f"output_blocks.{i}.1.{rest}")
  raise KeyError(f"no original name for UNet key {key}")


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}


def _vae_entry(key: str, value: np.ndarray, config) -> tuple[str, np.ndarray]:
  levels = len(config["block_out_channels"])
  if m := re.fullmatch(r"(encoder|decoder)\.(?:down|up)_blocks\.(\d+)\.(resnets|downsamplers|"
                       r"upsamplers)\.(\d+)\.(.+)", key):
    part, level, kind, j, rest = m[1], int(m[2]), m[3], m[4], m[5]
    if part == "decoder":  # ldm counts the decoder's levels from the lowest resolution.
      level = levels - 1 - level
    stage = "down" if part == "encoder" else "up"
    if kind == "resnets":
      rest = rest.replace("conv_shortcut", "nin_shortcut")
      return f"{part}.{stage}.{level}.block.{j}.{rest}", value
    return f"{part}.{stage}.{level}.{stage}sample.{rest}", value
  if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
    return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}", value
  if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
    if value.ndim == 2:  # ldm's attention projections are 1x1 convs.
      value = value[:, :, None, None]
    return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}", value
  return key.replace("conv_norm_out", "norm_out"), value


def _open_clip(text: dict) -> dict:
  """transformers CLIPTextModel keys -> OpenCLIP text tower keys, plus the projection and
  logit scale OpenCLIP has."""
  out, qkv = {}, {}
  names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
           "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
  for key, value in text.items():
    if key == "embeddings.token_embedding.weight":
      out["token_embedding.weight"] = value
    elif key == "embeddings.position_embedding.weight":
      out["positional_embedding"] = value
    elif key.startswith("final_layer_norm."):
      out[key.replace("final_layer_norm", "ln_final")] = value
    elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
      qkv.setdefault((m[1], m[3]), {})[m[2]] = value
    else:
      m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
      out[f"transformer.resblocks.{m[1]}.{names[m[2]]}.{m[3]}"] = value
  for (layer, leaf), parts in qkv.items():
    out[f"transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = np.concatenate(
        [parts["q"], parts["k"], parts["v"]])
  rng = np.random.default_rng(0)
  width = text["embeddings.token_embedding.weight"].shape[1]
  out["text_projection"] = rng.normal(size=(width, 8)).astype(np.float32)
  out["logit_scale"] = np.array(4.6052, np.float32)
  return out


def _perturb(model: torch.nn.Module):
  with torch.no_grad():  # Move every weight off its init (norms start at 1 and 0, some convs 0).
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))


def _numpy(model: torch.nn.Module) -> dict:
  return {k: v.numpy() for k, v in model.state_dict().items()}
