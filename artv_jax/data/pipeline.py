"""Grain input pipeline: ART·V training tuples from a TFDS video data set in array_record.

One training tuple, from one clip of T frames (docs/METHOD.md, "anchor" and references):

  stride  s ~ U{min_stride .. min(max_stride, (T-1) // k)}
  strides n ~ U{k .. min(max_anchor_strides, (T-1) // s)}   (anchor to target)
  anchor  a ~ U{0 .. T-1 - n*s}          the clip's first sampled frame
  target  a + n*s
  refs    target - s, ..., target - k*s   (most recent first; for n == k the
                                         oldest reference is the anchor)

A clip with a prompt schedule ("prompts" and their first frames "prompt_starts",
as the synthetic clips that turn have) is captioned with the prompt of the target's
segment. Clips shorter than k*min_stride + 1 frames are dropped. Only the sampled
frames of a clip are decoded. A data set pre-encoded by `data/precompute.py` gives the
same tuples of VAE posterior moments instead of images, and the text states of the
target's prompt.

The clips are read by random access (`builder.as_data_source`): an index sampler draws
a new permutation of the whole split every epoch (the shuffle window is the data set)
and gives each JAX process its own disjoint shard; worker processes decode and sample
the tuples. Every random choice is drawn from a generator seeded by (seed, position in
the sampler's sequence), so the position is all there is to a checkpoint: a few integers
per process, saved beside the train state in an orbax CheckpointManager:

  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=pipeline.save_args(iterator)))
  manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(state), data=pipeline.restore_args(iterator)))
"""

import dataclasses
from typing import Any, Sequence

from absl import flags
import grain
import numpy as np
import tensorflow_datasets as tfds

from artv_jax.data import tfds_synthetic
from artv_jax.data import tfds_webvid

DATASETS = ("synthetic_shapes", "webvid")


def make_builder(dataset: str, data_dir: str, *, resolution: int,
                 manual_dir: str | None = None, variant: str = "",
                 part: tuple[int, int] = (0, 1)) -> tfds.core.DatasetBuilder:
  """The builder of `dataset` at square `resolution`, built into data_dir if needed.

  Args:
    dataset: "synthetic_shapes" (generated) or "webvid" (from `manual_dir`).
    data_dir: TFDS data directory, local or remote (gs://...). Processes sharing one
      must not build it concurrently: build once first (e.g. from process 0).
    resolution: frame height and width in pixels.
    manual_dir: webvid only: the folder with the CSVs and the videos (needed
      only to build).
    variant: synthetic_shapes only: a predefined clip mix, the builder config
      "{resolution}px_{variant}" (e.g. "demo"); empty: the standard one.
    part: webvid only: (i, n), part i of the videos split n ways by id
      (`tfds_webvid.part_of`), a data set of its own, so that n processes can build the parts
      in parallel; `make_train_iterator` reads the n builders as one.
  """
  if variant and dataset != "synthetic_shapes":
    raise ValueError(f"a data set variant ({variant!r}) exists only for synthetic_shapes, "
                     f"not {dataset!r}")
  if part != (0, 1) and dataset != "webvid":
    raise ValueError(f"only webvid is built in parts, not {dataset!r}")
  if dataset == "synthetic_shapes":
    builder_cls = tfds_synthetic.ArtvSyntheticShapes
    config = tfds_synthetic.builder_config(resolution, variant)
  elif dataset == "webvid":
    builder_cls = tfds_webvid.ArtvWebvid
    config = tfds_webvid.webvid_config(resolution, part)
  else:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
  # A predefined config of that name is the same data set: use it, so TFDS does
  # not warn about a custom configuration.
  if config.name in builder_cls.builder_configs:
    config = config.name
  builder = builder_cls(data_dir=data_dir, config=config)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def check_random_access(builder: tfds.core.DatasetBuilder) -> None:
  """Raises a ValueError naming the folder if `builder`'s files cannot be read by index."""
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(
        f"the data set in {builder.data_dir} is stored as {builder.info.file_format.value}, "
        f"written by an older artv_jax; the pipeline reads array_record by random access. "
        f"Delete that folder to rebuild it, or convert it in place with `tfds "
        f"convert_format --dataset_version_dir={builder.data_dir} --out_file_format="
        f"array_record`")


class _KeepEncoded(tfds.decode.SkipDecoding):
  """Leaves a feature (and each frame of a `Video`) encoded: only sampled frames get decoded."""

  def decode_batch_example_np(self, serialized_example):
    return serialized_example


@dataclasses.dataclass(frozen=True)
class _ClipFrames:
  """Length and selected frames of an encoded clip of `feature` (picklable for workers).

  A `Video` is stored frame by frame, so only the requested frames are decoded; a whole-clip
  `Tensor` (uint8 frames, or the float latent moments of data/precompute.py) is decoded,
  then indexed.
  """
  feature: tfds.features.FeatureConnector

  def __post_init__(self):
    f = self.feature
    if isinstance(f, tfds.features.Video):
      return
    if not (isinstance(f, tfds.features.Tensor) and len(f.shape) == 4
            and (f.np_dtype == np.uint8 or np.issubdtype(f.np_dtype, np.floating))):
      raise ValueError(f"'frames' must be a tfds.features.Video or a uint8 Tensor "
                       f"[T, H, W, 3], 'moments' a float Tensor [T, h, w, 2C]; got {f!r}")

  def num_frames(self, encoded) -> int:
    if isinstance(self.feature, tfds.features.Video):
      return len(encoded)
    if self.feature.shape[0] is not None:
      return self.feature.shape[0]
    return len(self.feature.decode_example_np(encoded))

  def decode(self, encoded, indices: np.ndarray) -> np.ndarray:
    """[len(indices), H, W, C] frames."""
    if isinstance(self.feature, tfds.features.Video):
      return np.stack([self.feature.feature.decode_example_np(encoded[i]) for i in indices])
    return self.feature.decode_example_np(encoded)[indices]


@dataclasses.dataclass(frozen=True)
class _Clips(grain.sources.RandomAccessDataSource):
  """The examples of one split of one or more data sets (the parts of a data set built in
  parallel), one after the other, each with its index in that sequence as 'clip_index'."""
  sources: tuple[Any, ...]

  def __len__(self) -> int:
    return sum(len(source) for source in self.sources)

  def __getitem__(self, index):
    part, offset = 0, int(index)
    while offset >= len(self.sources[part]):
      offset -= len(self.sources[part])
      part += 1
    return {**self.sources[part][offset], "clip_index": np.int32(index)}


@dataclasses.dataclass(frozen=True)
class _LongEnough(grain.transforms.Filter):
  frames: _ClipFrames
  frames_key: str
  min_frames: int

  def filter(self, element) -> bool:
    return self.frames.num_frames(element[self.frames_key]) >= self.min_frames


@dataclasses.dataclass(frozen=True)
class _SampleTuple(grain.transforms.RandomMap):
  """A clip -> one training tuple (target, refs, anchor, their indices, the caption)."""
  frames: _ClipFrames
  frames_key: str
  num_reference_frames: int
  min_stride: int
  max_stride: int
  max_anchor_strides: int | None

  def random_map(self, element, rng: np.random.Generator):
    k, encoded = self.num_reference_frames, self.frames_key == "moments"
    length = self.frames.num_frames(element[self.frames_key])
    stride = rng.integers(self.min_stride, min(self.max_stride, (length - 1) // k) + 1)
    most_strides = (length - 1) // stride
    if self.max_anchor_strides is not None:
      most_strides = min(most_strides, self.max_anchor_strides)
    strides = rng.integers(k, most_strides + 1)
    anchor_index = rng.integers(0, length - 1 - strides * stride + 1)
    target_index = anchor_index + strides * stride
    ref_indices = target_index - stride * np.arange(1, k + 1)
    indices = np.concatenate([[target_index], ref_indices, [anchor_index]])
    frames = self.frames.decode(element[self.frames_key], indices).astype(np.float32)
    if not encoded:
      frames = frames / 127.5 - 1.0
    suffix = "_moments" if encoded else ""
    tuple_ = {
        "target" + suffix: frames[0],
        "refs" + suffix: frames[1:k + 1],
        "anchor" + suffix: frames[k + 1],
        "caption": element["caption"],
        "stride": np.int32(stride),
        "target_index": np.int32(target_index),
        "ref_indices": ref_indices.astype(np.int32),
        "anchor_index": np.int32(anchor_index),
        "clip_index": element["clip_index"],
    }
    if "prompt_starts" in element:  # A prompt schedule: the target's segment's prompt.
      segment = int(np.sum(np.asarray(element["prompt_starts"]) <= target_index)) - 1
      tuple_["caption"] = element["prompts"][segment]
      if encoded:
        element = {**element, "text_states": element["text_states"][segment]}
    if encoded:
      tuple_["text_states"] = np.asarray(element["text_states"], np.float32)
    return tuple_


def make_train_iterator(
    builders: tfds.core.DatasetBuilder | Sequence[tfds.core.DatasetBuilder],
    *,
    global_batch_size: int,
    split: str = "train",
    num_reference_frames: int = 1,
    min_stride: int = 1,
    max_stride: int = 4,
    max_anchor_strides: int | None = None,
    seed: int = 0,
    worker_count: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DataLoaderIterator:
  """Infinite, shuffled, process-sharded iterator of batches of training tuples.

  Each batch (B = global_batch_size // process_count, k reference frames):
    target:       [B, H, W, 3] float32 in [-1, 1], frame `target_index`
    refs:         [B, k, H, W, 3] float32, refs[:, j] is frame `ref_indices[:, j]`
                  = target_index - (j + 1) * stride (most recent first)
    anchor:       [B, H, W, 3] float32, frame `anchor_index`
    caption:      [B] bytes, the prompt of the target frame's segment
    stride:       [B] int32
    target_index: [B] int32
    ref_indices:  [B, k] int32
    anchor_index: [B] int32
    clip_index:   [B] int32, the clip's record index in `split` (of the builders in order)

  From a pre-encoded data set (`data/precompute.py`), 'target', 'refs' and 'anchor'
  are replaced by the VAE posterior moments of the same frames, and the caption's
  text states are added:
    target_moments: [B, h, w, 2C] float32, mean then log-variance channels, unscaled
    refs_moments:   [B, k, h, w, 2C] float32
    anchor_moments: [B, h, w, 2C] float32
    text_states:    [B, L, D] float32

  Args:
    builders: a prepared TFDS builder (array_record files) whose examples have "frames" (a
      `Video`, or a `Tensor` [T, H, W, 3] uint8) and "caption"; or a pre-encoded one
      (`precompute.load_encoded`) with "moments", "text_states" and "caption"; or several
      with the same features (the parts of one data set), read as one.
    global_batch_size: tuples per step over all processes.
    split: TFDS split (slicing allowed, e.g. "train[:90%]").
    num_reference_frames: k, previous frames per tuple.
    min_stride, max_stride: range of the frame stride (inclusive).
    max_anchor_strides: most strides from anchor to target; None: the clip's length.
    seed: drives the epochs' permutations and tuple sampling.
    worker_count: processes decoding and sampling tuples; 0 does it in this process. A
      checkpoint restores only into an iterator with the same count.
    process_index, process_count: this process's shard; default to JAX's.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  k = num_reference_frames
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                     f"the process count {process_count}")
  if not 1 <= min_stride <= max_stride:
    raise ValueError(f"need 1 <= min_stride <= max_stride, got {min_stride}, "
                     f"{max_stride}")
  if k < 1 or (max_anchor_strides is not None and max_anchor_strides < k):
    raise ValueError(f"need 1 <= num_reference_frames <= max_anchor_strides, got "
                     f"{k}, {max_anchor_strides}")
  builders = [builders] if isinstance(builders, tfds.core.DatasetBuilder) else list(builders)
  for builder in builders:
    check_random_access(builder)
  builder = builders[0]
  if worker_count and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain's workers read absl flags; absl.app parses them.
  frames_key = "moments" if "moments" in builder.info.features else "frames"
  source = _Clips(tuple(b.as_data_source(split, decoders={frames_key: _KeepEncoded()})
                        for b in builders))
  if len(source) < process_count:
    raise ValueError(f"split {split!r} has too few clips ({len(source)}) for "
                     f"{process_count} processes: process {process_index} gets none")
  frames = _ClipFrames(builder.info.features[frames_key])
  shard = grain.sharding.ShardOptions(process_index, process_count, drop_remainder=True)
  loader = grain.DataLoader(
      data_source=source,
      sampler=grain.samplers.IndexSampler(len(source), shard_options=shard, shuffle=True,
                                          num_epochs=None, seed=seed),
      operations=[
          _LongEnough(frames, frames_key, k * min_stride + 1),
          _SampleTuple(frames, frames_key, k, min_stride, max_stride, max_anchor_strides),
          grain.transforms.Batch(global_batch_size // process_count, drop_remainder=True),
      ],
      worker_count=worker_count)
  return iter(loader)


def save_args(iterator: grain.DataLoaderIterator):
  """Orbax args that save each process's position (`process_{i}-of-{n}.json`)."""
  return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator: grain.DataLoaderIterator):
  """Orbax args that move `iterator` to the saved position of this process."""
  return grain.checkpoint.CheckpointRestore(iterator)
