"""Pre-encodes a video data set with the frozen VAE and text encoder of a converted SD.

Both networks are frozen during ART·V training (METHOD.md), so their outputs can be computed
once instead of at every step:

  python -m artv_jax.data.precompute --dataset=synthetic_shapes --data_dir=TFDS_DIR \\
      --resolution=32 --pretrained=CONVERTED_SD --out=ENCODED_DIR [--variant=demo]

writes the TFDS data set "artv_encoded" into ENCODED_DIR, with the source's splits and one
example per source clip:

  moments      [T, h, w, 2C] float16 (or float32): the VAE posterior of every frame, mean
               channels then log-variance channels (`vae.DiagonalGaussian.from_moments`),
               unscaled. The posterior, not one draw of it, so training still samples a new
               latent each time it sees a frame.
  text_states  [S, L, D] the text encoder's last hidden state of each of the S prompts.
  prompts      [S] the clip's prompts: its caption, or the prompts of its prompt schedule
               (synthetic clips that turn).
  prompt_starts [S] int32, the first frame of each prompt.
  caption      the caption.
  source_id    "{split}[{i}]": the clip's record index in the source data set's split.

Training reads it with `make_train_iterator(load_encoded(ENCODED_DIR), ...)`, whose batches
then carry 'target_moments', 'refs_moments', 'anchor_moments' and 'text_states' instead of
frames. Clips are read in order and their frames encoded in batches of `batch_frames`, which
may span clips; each distinct caption is encoded once (recent ones are cached).
"""
import argparse
import dataclasses
import functools
import os
import sys
from typing import Callable, Iterable, Iterator, Optional

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from artv_jax import paths
from artv_jax.checkpoints import pretrained
from artv_jax.data import pipeline

DTYPES = ("float16", "float32")
# Distinct captions kept encoded; synthetic_shapes has a few hundred, WebVid's rarely repeat.
_CAPTION_CACHE_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class Encoders:
  """The frozen networks of a converted checkpoint, as functions of numpy inputs.

  Attributes:
    frames: frames [N, H, W, 3] uint8 -> posterior moments [N, h, w, 2C] float32.
    caption: caption -> text states [L, D] float32.
    scaling_factor: the VAE's latent scale (training multiplies sampled latents by it).
    shift_factor: the VAE's latent shift, None for SD 1/2.
  """
  frames: Callable[[np.ndarray], np.ndarray]
  caption: Callable[[str], np.ndarray]
  scaling_factor: float
  shift_factor: Optional[float]


def make_encoders(sd: pretrained.StableDiffusion) -> Encoders:
  """Jitted VAE encoder and text encoder of ``sd`` (parameters passed in, not baked in)."""
  from artv_jax.build import tokenize  # The trainer's own tokenization, so states match.

  @jax.jit
  def encode_frames(params, frames):
    images = frames.astype(jnp.float32) / 127.5 - 1.0  # As the pipeline scales frames.
    posterior = sd.vae.apply({"params": params}, images, method="encode")
    return jnp.concatenate([posterior.mean, posterior.logvar], axis=-1)

  encode_text = jax.jit(sd.text_encoder.apply)

  @functools.lru_cache(maxsize=_CAPTION_CACHE_SIZE)
  def encode_caption(caption: str) -> np.ndarray:
    states = encode_text({"params": sd.params["text_encoder"]}, tokenize(sd.tokenizer, [caption]))
    return np.asarray(states[0], np.float32)

  return Encoders(
      frames=lambda frames: np.asarray(encode_frames(sd.params["vae"], frames), np.float32),
      caption=encode_caption, scaling_factor=sd.vae.scaling_factor,
      shift_factor=sd.vae.shift_factor)


def encode_clips(clips: Iterable[dict], encode: Callable[[np.ndarray], np.ndarray],
                 batch_frames: int) -> Iterator[tuple[dict, np.ndarray]]:
  """Yields (clip, encode(clip['frames'])) in order, encoding frames in batches across clips.

  Every call of ``encode`` gets exactly ``batch_frames`` frames (the last batch is padded), so
  a jitted ``encode`` compiles once.
  """
  waiting = []  # Clips read, not yet yielded, in order.
  todo = []  # Frame arrays not yet encoded, in order.
  done = []  # Encoded frames not yet yielded, in order.
  num_todo = 0

  def encode_batch():
    nonlocal todo, num_todo
    frames = np.concatenate(todo)
    batch, rest = frames[:batch_frames], frames[batch_frames:]
    padding = np.zeros((batch_frames - len(batch),) + batch.shape[1:], batch.dtype)
    done.append(encode(np.concatenate([batch, padding]))[:len(batch)])
    todo, num_todo = [rest], len(rest)

  def ready():
    nonlocal done
    if not done:
      return
    encoded = np.concatenate(done)
    while waiting and len(waiting[0]["frames"]) <= len(encoded):
      clip = waiting.pop(0)
      length = len(clip["frames"])
      yield clip, encoded[:length]
      encoded = encoded[length:]
    done = [encoded]

  for clip in clips:
    waiting.append(clip)
    todo.append(clip["frames"])
    num_todo += len(clip["frames"])
    while num_todo >= batch_frames:
      encode_batch()
    yield from ready()
  if num_todo:
    encode_batch()
  yield from ready()


@dataclasses.dataclass(eq=False)
class EncodedConfig(tfds.core.BuilderConfig):
  """What the encoded examples look like (set by `precompute` from the source and encoders)."""
  num_frames: Optional[int] = None  # Frames per clip; None: clips of varying length.
  moments_shape: tuple[int, int, int] = (32, 32, 8)  # (h, w, 2C) per frame
  text_shape: tuple[int, int] = (77, 1024)  # (L, D) per prompt
  dtype: str = "float16"  # Storage dtype of moments and text states.
  source: str = ""  # The source data set, name/config:version.
  pretrained: str = ""  # The converted checkpoint whose networks encoded it.
  scaling_factor: float = 0.18215
  shift_factor: Optional[float] = None


class ArtvEncoded(tfds.core.GeneratorBasedBuilder):
  """A video data set's clips as VAE posterior moments, captions as text states.

  Built only through `precompute` (it needs the source builder and the encoders); read it
  with `load_encoded`, which needs neither.
  """

  name = "artv_encoded"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Text states of every prompt of a prompt schedule."}

  def __init__(self, *, source: tfds.core.DatasetBuilder, encoders: Encoders,
               batch_frames: int, **kwargs):
    # Set first: the base class may already ask for `info`.
    self._source, self._encoders, self._batch_frames = source, encoders, batch_frames
    super().__init__(**{"file_format": "array_record", **kwargs})  # Random access.

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    dtype = np.dtype(c.dtype)
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # Raw bytes: latents barely compress, and decoding them is a copy.
            "moments": tfds.features.Tensor(
                shape=(c.num_frames,) + tuple(c.moments_shape), dtype=dtype,
                encoding=tfds.features.Encoding.BYTES),
            "text_states": tfds.features.Tensor(
                shape=(None,) + tuple(c.text_shape), dtype=dtype,
                encoding=tfds.features.Encoding.BYTES),
            "prompts": tfds.features.Sequence(tfds.features.Text()),
            "prompt_starts": tfds.features.Sequence(np.int32),
            "caption": tfds.features.Text(),
            "source_id": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(
            source=c.source, pretrained=c.pretrained, scaling_factor=c.scaling_factor,
            shift_factor=c.shift_factor),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything comes from the source builder.
    return {split: self._generate_examples(split) for split in self._source.info.splits}

  def _generate_examples(self, split: str):
    dtype = np.dtype(self.builder_config.dtype)
    clips = _clips_in_order(self._source, split)
    for clip, moments in encode_clips(clips, self._encoders.frames, self._batch_frames):
      caption = clip["caption"].decode()
      source_id = clip["source_id"]
      prompts = [p.decode() for p in clip["prompts"]] if "prompts" in clip else [caption]
      yield source_id, {
          "moments": moments.astype(dtype),
          "text_states": np.stack([self._encoders.caption(p) for p in prompts]).astype(dtype),
          "prompts": prompts,
          "prompt_starts": np.asarray(clip.get("prompt_starts", [0]), np.int32),
          "caption": caption,
          "source_id": source_id,
      }


def _clips_in_order(source: tfds.core.DatasetBuilder, split: str) -> Iterator[dict]:
  """The clips of ``split`` in record order, frames as one array, ids "{split}[{index}]"."""
  clips = source.as_data_source(split)
  for index in range(len(clips)):
    clip = clips[index]
    yield {**clip, "frames": np.asarray(clip["frames"]), "source_id": f"{split}[{index}]"}


def precompute(source: tfds.core.DatasetBuilder, sd: pretrained.StableDiffusion,
               out_dir: os.PathLike, *, dtype: str = "float16", batch_frames: int = 64,
               pretrained_dir: os.PathLike = "") -> tfds.core.DatasetBuilder:
  """Encodes every split of the prepared ``source`` into ``out_dir``; returns its reader.

  Args:
    source: a prepared builder whose examples have "frames" (uint8 [T, H, W, 3], a `Video`
      or a `Tensor`) and "caption", e.g. from `pipeline.make_builder`.
    sd: the converted checkpoint; its VAE and text encoder do the encoding.
    out_dir: TFDS data directory of the encoded data set (one encoded data set per directory).
      If it already holds this encoding (same source, checkpoint path and dtype), that is
      returned as it is.
    dtype: storage dtype of the moments and text states, "float16" or "float32".
    batch_frames: frames per VAE call.
    pretrained_dir: where ``sd`` was loaded from, recorded in the metadata.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
  pretrained_dir = os.fspath(paths.resolve(pretrained_dir)) if pretrained_dir else ""
  if _encoded_dirs(out_dir):
    return _reuse(out_dir, source=source.info.full_name, pretrained=pretrained_dir, dtype=dtype)
  frames = source.info.features["frames"]
  num_frames, *image_shape = frames.shape
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.uint8)
  encoders = make_encoders(sd)
  moments = jax.eval_shape(lambda x: sd.vae.apply({"params": sd.params["vae"]}, x,
                                                  method="encode").mean, images)
  ids = jax.ShapeDtypeStruct((1, sd.tokenizer.model_max_length), jnp.int32)
  text = jax.eval_shape(lambda x: sd.text_encoder.apply(
      {"params": sd.params["text_encoder"]}, x), ids)
  h, w, c = moments.shape[1:]
  config = EncodedConfig(
      name=f"{source.name}_{source.builder_config.name}",
      description=f"{source.info.full_name} encoded by {pretrained_dir or 'a converted SD'}",
      num_frames=num_frames, moments_shape=(h, w, 2 * c), text_shape=text.shape[1:],
      dtype=dtype, source=source.info.full_name, pretrained=pretrained_dir,
      scaling_factor=encoders.scaling_factor, shift_factor=encoders.shift_factor)
  builder = ArtvEncoded(source=source, encoders=encoders, batch_frames=batch_frames,
                        data_dir=os.fspath(out_dir), config=config)
  builder.download_and_prepare()
  return load_encoded(out_dir)


def load_encoded(out_dir: os.PathLike) -> tfds.core.DatasetBuilder:
  """The encoded data set that `precompute` wrote into ``out_dir``, for `make_train_iterator`.

  ``builder.info.metadata`` has 'scaling_factor', 'shift_factor', 'pretrained' and 'source'.

  Raises:
    FileNotFoundError: if ``out_dir`` holds no encoded data set, or several.
  """
  found = _encoded_dirs(out_dir)
  if len(found) != 1:
    raise FileNotFoundError(
        f"{out_dir} should hold one encoded data set, found {', '.join(found) or 'none'}; "
        f"write one with python -m artv_jax.data.precompute --out={out_dir} ...")
  return tfds.builder_from_directory(found[0])


def _encoded_dirs(out_dir: os.PathLike) -> list[str]:
  """The prepared encoded data sets in ``out_dir`` (their version directories)."""
  pattern = f"{ArtvEncoded.name}/*/*/dataset_info.json"
  return sorted(os.fspath(f.parent) for f in epath.Path(out_dir).glob(pattern))


def _reuse(out_dir: os.PathLike, **wanted) -> tfds.core.DatasetBuilder:
  """The encoded data set in ``out_dir``, if it is the one asked for (else an error)."""
  builder = load_encoded(out_dir)
  found = {"source": builder.info.metadata["source"],
           "pretrained": builder.info.metadata["pretrained"],
           "dtype": builder.info.features["moments"].np_dtype.name}
  if found != wanted:
    raise FileExistsError(f"{out_dir} already holds an encoding of {found}, not {wanted}; "
                          f"choose another --out or delete it")
  return builder


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m artv_jax.data.precompute",
      description="Encode a video data set's frames to VAE posterior moments and its captions "
                  "to text states, with the frozen networks of a converted Stable Diffusion.")
  parser.add_argument("--dataset", required=True, choices=pipeline.DATASETS,
                      help="the source data set, as config.data.dataset")
  parser.add_argument("--data_dir", required=True,
                      help="its TFDS data_dir (built there first if absent)")
  parser.add_argument("--resolution", type=int, required=True,
                      help="its frame size, as config.data.resolution")
  parser.add_argument("--variant", default="",
                      help="synthetic_shapes: its clip mix, as config.data.variant (e.g. demo)")
  parser.add_argument("--manual_dir", help="webvid: the CSVs and videos (only to build it)")
  parser.add_argument("--pretrained", required=True,
                      help="converted checkpoint (output of python -m artv_jax.convert)")
  parser.add_argument("--out", required=True, help="TFDS data_dir for the encoded data set")
  parser.add_argument("--dtype", default="float16", choices=DTYPES,
                      help="storage dtype of moments and text states")
  parser.add_argument("--batch_frames", type=int, default=64, help="frames per VAE call")
  args = parser.parse_args(argv)
  try:
    source = pipeline.make_builder(args.dataset, args.data_dir, resolution=args.resolution,
                                   manual_dir=args.manual_dir, variant=args.variant)
    sd = pretrained.load_pretrained(args.pretrained)
    builder = precompute(source, sd, args.out, dtype=args.dtype,
                         batch_frames=args.batch_frames, pretrained_dir=args.pretrained)
  except (ValueError, OSError) as e:  # Bad input: say what, without a traceback.
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"encoded {builder.info.full_name}: "
        + ", ".join(f"{name} {split.num_examples} clips"
                    for name, split in builder.info.splits.items())
        + f"; train on it with config.data.precomputed_dir={args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
