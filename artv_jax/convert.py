"""Converts a PyTorch Stable Diffusion 1.x/2.x checkpoint into an artv_jax checkpoint.

  # A diffusers folder (configs and tokenizer inside):
  python -m artv_jax.convert --src stable-diffusion-2-1-base --dst converted/sd21-base
  # An original single file: network configs from a preset, tokenizer from a folder:
  python -m artv_jax.convert --src v2-1_512-ema-pruned.safetensors --config-from sd21-base \\
      --tokenizer stable-diffusion-2-1-base/tokenizer --dst converted/sd21-base

Every source tensor must land in a parameter and every parameter must be filled, else the tool
lists the unmatched keys and shape mismatches and exits with status 2 (as on any bad input).
The destination appears only when complete (written to a temporary directory, then renamed).
Every path may be a URI (gs://...). Load the result with
``artv_jax.checkpoints.load_pretrained(DST)``.
"""
import argparse
import os
import sys
from typing import Callable, Mapping, Optional
import uuid

from etils import epath
import jax
import numpy as np

from artv_jax import paths
from artv_jax.checkpoints import pretrained, sources
from artv_jax.checkpoints.rename import CheckpointMismatchError, convert_state_dict


def convert(src: paths.PathLike, dst: paths.PathLike, *, config_from: Optional[str] = None,
            tokenizer: Optional[paths.PathLike] = None, overwrite: bool = False) -> None:
  """Reads ``src``, converts its three networks and writes the checkpoint to ``dst``.

  Args:
    src: a diffusers folder, or an original ``.safetensors``/``.ckpt`` file.
    dst: the output directory; must be absent or empty unless ``overwrite``.
    config_from: for a single file: a preset name (see ``sources.presets()``) or a directory
      in diffusers layout holding the network configs.
    tokenizer: directory of the tokenizer files, if ``src``/``config_from`` have none.
    overwrite: replace a non-empty ``dst``.

  Raises:
    ValueError (sources.SourceError, CheckpointMismatchError): the input cannot be converted;
      the message says why.
  """
  dst = paths.resolve(dst)
  check_destination(dst, overwrite)
  print(f"reading {src}", flush=True)
  source = sources.read_source(src, config_from, tokenizer)
  networks = pretrained.build_networks(source.configs)
  for name, network in networks.items():  # Before the (slow) tracing of full-size models.
    sources.check_architecture(name, network, source.state_dicts[name])
  targets = pretrained.abstract_params(networks)
  params = {}
  for name in networks:
    state_dict = source.state_dicts[name]
    try:
      converted = convert_state_dict(state_dict, targets[name], what=name)
    except CheckpointMismatchError as e:
      raise _in_source_names(e, name, source.origin[name]) from None
    params[name] = jax.tree.map(lambda x: np.asarray(x, np.float32), converted)
    size = sum(x.size for x in jax.tree.leaves(params[name]))
    print(f"{name}: {len(state_dict)} tensors -> {size:,} float32 parameters", flush=True)
  if source.dropped:
    print(f"left out {len(source.dropped)} source entries that are not weights of the "
          f"networks: {_summary(source.dropped)}", flush=True)

  conversion = {"source": os.fspath(paths.resolve(src)), "layout": source.layout,
                "config_from": config_from, "tokenizer": str(source.tokenizer_dir),
                "dropped_keys": sorted(source.dropped)}
  write_atomically(dst, lambda tmp: pretrained.save_pretrained(
      tmp, params, source.configs, source.tokenizer_dir, conversion))
  print(f"wrote {dst}", flush=True)


def _in_source_names(error: CheckpointMismatchError, name: str,
                     origin: Mapping[str, str]) -> CheckpointMismatchError:
  """The same error with source keys named as in the source files."""
  return CheckpointMismatchError(
      name, error.missing, [origin.get(k, k) for k in error.unexpected],
      [(origin.get(k, k), got, want) for k, got, want in error.wrong_shape])


def _summary(keys: list[str], shown: int = 8) -> str:
  keys = sorted(keys)
  return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def check_destination(dst: epath.Path, overwrite: bool) -> None:
  """Refuses to replace a non-empty ``dst`` unless ``overwrite``, before any work is done."""
  if dst.exists() and not overwrite and (not dst.is_dir() or any(dst.iterdir())):
    raise sources.SourceError(f"--dst {dst} exists and is not empty; pass --overwrite to "
                              f"replace it")


def write_atomically(dst: epath.Path, write: Callable[[epath.Path], None]) -> None:
  """Runs ``write(tmp)`` on a fresh directory next to ``dst``, then moves it to ``dst``.

  On an object store (gs://) the move copies object by object: a failed ``write`` never shows
  at ``dst``, but a reader during the move may see part of it.
  """
  tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex}"
  tmp.mkdir(parents=True)
  try:
    write(tmp)
    if dst.exists():
      old = tmp.with_name(tmp.name + "-replaced")
      dst.rename(old)
      tmp.rename(dst)
      old.rmtree()
    else:
      tmp.rename(dst)
  except BaseException:
    tmp.rmtree(missing_ok=True)
    raise


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m artv_jax.convert",
      description="Convert a PyTorch Stable Diffusion 1.x/2.x checkpoint (diffusers folder or "
                  "original single file) into an artv_jax checkpoint (orbax + configs + "
                  "tokenizer).")
  parser.add_argument("--src", required=True,
                      help="diffusers folder, or original .safetensors/.ckpt file")
  parser.add_argument("--dst", required=True, help="output directory")
  parser.add_argument("--config-from",
                      help=f"single file only: config preset ({', '.join(sources.presets())}) "
                           f"or a diffusers folder of the same architecture")
  parser.add_argument("--tokenizer", help="folder with the CLIP tokenizer files, if the source "
                                          "(or --config-from) has no tokenizer/")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --dst")
  args = parser.parse_args(argv)
  try:
    convert(args.src, args.dst, config_from=args.config_from, tokenizer=args.tokenizer,
            overwrite=args.overwrite)
  except (ValueError, OSError) as e:  # Bad input: say what, without a traceback.
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
