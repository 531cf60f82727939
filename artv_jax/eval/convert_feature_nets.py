"""Converts the feature networks of the standard video metrics, and loads the result.

  # CLIP (similarity between frames and prompt): a transformers CLIPModel folder
  # (config.json, model.safetensors or pytorch_model.bin, tokenizer files), e.g.
  # openai/clip-vit-large-patch14:
  python -m artv_jax.eval.convert_feature_nets --kind=clip --src=clip-vit-large-patch14 \\
      --dst=converted/clip-l14
  # I3D (FVD): a state dict in the pytorch_i3d layout, e.g. VideoGPT's i3d_pretrained_400.pt
  # or piergiaj's rgb_imagenet.pt (Kinetics-400 logits), as .pt/.pth or .safetensors:
  python -m artv_jax.eval.convert_feature_nets --kind=i3d --src=i3d_pretrained_400.pt \\
      --dst=converted/i3d

The weights go through the same machinery as the Stable Diffusion converter
(:func:`artv_jax.checkpoints.rename.convert_state_dict`: every tensor placed, every parameter
filled, or the tool lists what did not match and exits with status 2). Written layout::

  params/            orbax checkpoint of the Flax variables, float32 ({'params'}; the I3D
                     also {'batch_stats'}: BatchNorm running mean/var)
  feature_net.json   {"kind": "clip" | "i3d", "model": the model config}
  tokenizer/         CLIP only: the CLIP tokenizer
  conversion.json    the source and the source entries left out

Every path may be a URI (gs://...). Load it with :func:`load_feature_net`; the metrics
(``artv_jax.eval.fvd``, ``artv_jax.eval.clip_score``) take what it returns.
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile
from typing import Any, Mapping, Optional

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import transformers

from artv_jax import paths
from artv_jax.checkpoints import orbax_io, pretrained, sources
from artv_jax.checkpoints.rename import convert_state_dict
from artv_jax.convert import check_destination, write_atomically
from artv_jax.models.clip_vision import CLIPModel
from artv_jax.models.i3d import InceptionI3d

KINDS = ("clip", "i3d")
PARAMS_DIR = "params"
CONFIG_FILE = "feature_net.json"
TOKENIZER_DIR = "tokenizer"
CONVERSION_FILE = "conversion.json"
_MODELS = {"clip": CLIPModel, "i3d": InceptionI3d}
# transformers' CLIPModel entries that are not weights of our port: the contrastive temperature
# (similarities here are plain cosines) and the position-id buffers of older checkpoints.
_CLIP_LEFT_OUT = ("logit_scale", "text_model.embeddings.position_ids",
                  "vision_model.embeddings.position_ids")


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A converted feature network, ready to apply.

  Attributes:
    kind: 'clip' or 'i3d'.
    model: :class:`CLIPModel` or :class:`InceptionI3d`.
    variables: ``model.apply``'s first argument.
    config: the model config (transformers' CLIPConfig dict, or the I3D fields).
    tokenizer: CLIP's tokenizer; None for the I3D.
  """
  kind: str
  model: nn.Module
  variables: Any
  config: dict
  tokenizer: Optional[transformers.CLIPTokenizer] = None


def build_model(kind: str, config: Mapping[str, Any], **overrides) -> nn.Module:
  """The Flax model of ``kind`` from its config; ``overrides`` (dtype, ...) go to from_config."""
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}; use one of {KINDS}")
  return _MODELS[kind].from_config(config, **overrides)


def abstract_variables(model: nn.Module) -> Any:
  """The variables of ``model`` as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
  if isinstance(model, CLIPModel):
    size = model.vision_model.image_size
    inputs = (jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, size, size, 3)))
  else:  # The smallest clip the head's pooling window accepts (a Mixed_5c cell is 8x32x32).
    frames, height, width = (s * w for s, w in zip((8, 32, 32), model.logits_pool))
    inputs = (jnp.zeros((1, frames, height, width, model.in_channels)),)
  return jax.eval_shape(model.init, jax.random.key(0), *inputs)


def clip_variables(state_dict: Mapping[str, np.ndarray],
                   model: CLIPModel) -> tuple[dict, list[str]]:
  """transformers ``CLIPModel`` state dict -> ({'params': ...}, keys left out).

  Raises:
    CheckpointMismatchError: listing the keys that do not fit the model.
  """
  left_out = sorted(k for k in state_dict if k in _CLIP_LEFT_OUT)
  weights = {k: v for k, v in state_dict.items() if k not in _CLIP_LEFT_OUT}
  target = abstract_variables(model)["params"]
  return {"params": convert_state_dict(weights, target, what="clip")}, left_out


def i3d_variables(state_dict: Mapping[str, np.ndarray],
                  model: InceptionI3d) -> tuple[dict, list[str]]:
  """``pytorch_i3d.InceptionI3d`` state dict -> ({'params', 'batch_stats'}, keys left out).

  BatchNorm running statistics go to ``batch_stats`` (``bn.running_mean`` -> ``bn/mean``);
  ``num_batches_tracked`` counters are left out.

  Raises:
    CheckpointMismatchError: listing the keys that do not fit the model (batch statistics
      named ``<module>.mean`` / ``<module>.var``).
  """
  weights, stats, left_out = {}, {}, []
  for key, value in state_dict.items():
    module, _, leaf = key.rpartition(".")
    if leaf == "num_batches_tracked":
      left_out.append(key)
    elif leaf in ("running_mean", "running_var"):
      stats[f"{module}.{leaf.removeprefix('running_')}"] = value
    else:
      weights[key] = value
  target = abstract_variables(model)
  return {"params": convert_state_dict(weights, target["params"], what="i3d"),
          "batch_stats": convert_state_dict(stats, target["batch_stats"],
                                            what="i3d batch statistics")}, sorted(left_out)


def convert(kind: str, src: paths.PathLike, dst: paths.PathLike, *,
            tokenizer: Optional[paths.PathLike] = None, overwrite: bool = False) -> None:
  """Reads the PyTorch weights at ``src``, converts them and writes ``dst`` (layout above).

  Args:
    kind: 'clip' (``src``: a transformers CLIPModel folder) or 'i3d' (``src``: a
      ``pytorch_i3d`` state dict file, .pt/.pth/.bin or .safetensors).
    src: the source folder or file.
    dst: the output directory; must be absent or empty unless ``overwrite``.
    tokenizer: CLIP only: a folder with the tokenizer files, if ``src`` has none.
    overwrite: replace a non-empty ``dst``.

  Raises:
    ValueError (sources.SourceError, CheckpointMismatchError): the input cannot be converted;
      the message says why.
  """
  dst = paths.resolve(dst)
  check_destination(dst, overwrite)
  src = epath.Path(src)
  if not src.exists():
    raise sources.SourceError(f"--src {src} does not exist")
  if kind == "clip":
    config, state_dict, clip_tokenizer = _read_clip(src, tokenizer)
    model = build_model(kind, config)
    variables, left_out = clip_variables(state_dict, model)
  elif kind == "i3d":
    if tokenizer is not None:
      raise sources.SourceError("--tokenizer is for --kind=clip; the I3D reads no text")
    if src.is_dir():
      raise sources.SourceError(f"--src {src} is a folder; the I3D comes as one state dict "
                                f"file (.pt, .pth or .safetensors)")
    state_dict = sources.read_weights(src)
    config = _i3d_config(src, state_dict)
    model = build_model(kind, config)
    variables, left_out = i3d_variables(state_dict, model)
  else:
    raise sources.SourceError(f"--kind={kind!r}; use one of {KINDS}")

  variables = jax.tree.map(lambda x: np.asarray(x, np.float32), variables)
  size = sum(x.size for x in jax.tree.leaves(variables))
  print(f"{kind}: {len(state_dict)} tensors -> {size:,} float32 values", flush=True)
  if left_out:
    print(f"left out {len(left_out)} source entries that are not weights of the port: "
          f"{', '.join(left_out)}", flush=True)

  def write(directory: epath.Path) -> None:
    (directory / CONFIG_FILE).write_text(
        json.dumps({"kind": kind, "model": config}, indent=2, sort_keys=True) + "\n")
    (directory / CONVERSION_FILE).write_text(json.dumps(
        {"source": os.fspath(paths.resolve(src)), "left_out": left_out}, indent=2) + "\n")
    if kind == "clip":
      with tempfile.TemporaryDirectory() as local:  # transformers writes local files only.
        clip_tokenizer.save_pretrained(local)
        paths.copy_tree(local, directory / TOKENIZER_DIR)
    orbax_io.save_params(directory / PARAMS_DIR, variables)

  write_atomically(dst, write)
  print(f"wrote {dst}", flush=True)


def load_feature_net(directory: paths.PathLike, **overrides) -> FeatureNet:
  """Loads what :func:`convert` wrote.

  Args:
    directory: the converted feature network (``--dst`` of the converter), local or a URI.
    **overrides: model fields to set, e.g. ``dtype=jnp.bfloat16``; ``param_dtype`` is also
      the dtype the (float32) variables are restored in.

  Raises:
    FileNotFoundError: if ``directory`` is not a converted feature network.
  """
  directory = epath.Path(directory)
  if not (directory / CONFIG_FILE).is_file() or not (directory / PARAMS_DIR).is_dir():
    raise FileNotFoundError(
        f"{directory} is not a converted feature network (it needs {CONFIG_FILE} and "
        f"{PARAMS_DIR}/); convert the PyTorch weights first: python -m "
        f"artv_jax.eval.convert_feature_nets --kind=clip|i3d --src=... --dst={directory}")
  spec = json.loads((directory / CONFIG_FILE).read_text())
  model = build_model(spec["kind"], spec["model"], **overrides)
  variables = orbax_io.restore_params(directory / PARAMS_DIR, abstract_variables(model))
  tokenizer = None
  if spec["kind"] == "clip":
    tokenizer = pretrained.load_tokenizer(directory / TOKENIZER_DIR)
  return FeatureNet(spec["kind"], model, variables, spec["model"], tokenizer)


def _read_clip(src: epath.Path, tokenizer: Optional[paths.PathLike]):
  """(config dict, state dict, tokenizer) of a transformers CLIPModel folder."""
  if not (src / "config.json").is_file():
    raise sources.SourceError(f"--src {src} is not a transformers CLIP folder (no "
                              f"config.json); for --kind=clip pass e.g. the folder of "
                              f"openai/clip-vit-large-patch14")
  config = json.loads((src / "config.json").read_text())
  CLIPModel.from_config(config)  # Rejects a wrong config before the weights are read.
  tokenizer_dir = epath.Path(tokenizer) if tokenizer is not None else src
  try:
    clip_tokenizer = pretrained.load_tokenizer(tokenizer_dir)
  except (OSError, ValueError, TypeError) as e:
    raise sources.SourceError(f"no CLIP tokenizer in {tokenizer_dir} ({e}); pass --tokenizer "
                              f"with a folder holding vocab.json and merges.txt") from None
  state_dict = {}
  for file in sources.weight_files(src):
    state_dict.update(sources.read_weights(file))
  return config, state_dict, clip_tokenizer


def _i3d_config(src: epath.Path, state_dict: Mapping[str, np.ndarray]) -> dict:
  """The I3D fields read off the weight shapes."""
  needed = ("Conv3d_1a_7x7.conv3d.weight", "logits.conv3d.weight")
  missing = [k for k in needed if k not in state_dict]
  if missing:
    raise sources.SourceError(
        f"{src} has no {', '.join(missing)}: not a state dict in the pytorch_i3d layout "
        f"(InceptionI3d of piergiaj/pytorch-i3d, as VideoGPT's i3d_pretrained_400.pt); "
        f"first keys: {sorted(state_dict)[:5]}")
  return {"num_classes": int(state_dict["logits.conv3d.weight"].shape[0]),
          "in_channels": int(state_dict["Conv3d_1a_7x7.conv3d.weight"].shape[1])}


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m artv_jax.eval.convert_feature_nets",
      description="Convert the PyTorch weights of a metric's feature network (CLIP for "
                  "frame-prompt similarity, I3D for FVD) into an artv_jax checkpoint.")
  parser.add_argument("--kind", required=True, choices=KINDS)
  parser.add_argument("--src", required=True,
                      help="clip: transformers CLIPModel folder; i3d: pytorch_i3d state dict "
                           "(.pt/.pth/.safetensors)")
  parser.add_argument("--dst", required=True, help="output directory")
  parser.add_argument("--tokenizer", help="clip: folder with the tokenizer files, if --src "
                                          "has none")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --dst")
  args = parser.parse_args(argv)
  try:
    convert(args.kind, args.src, args.dst, tokenizer=args.tokenizer, overwrite=args.overwrite)
  except (ValueError, OSError) as e:  # Bad input: say what, without a traceback.
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
