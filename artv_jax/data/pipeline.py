"""tf.data input pipeline: ART·V training tuples from a TFDS video data set.

One training tuple, from one clip of T frames (METHOD.md, "anchor" and references):

  stride  s ~ U{min_stride .. min(max_stride, (T-1) // k)}
  strides n ~ U{k .. min(max_anchor_strides, (T-1) // s)}   (anchor to target)
  anchor  a ~ U{0 .. T-1 - n*s}          the clip's first sampled frame
  target  a + n*s
  refs    target - s, ..., target - k*s   (most recent first; for n == k the
                                         oldest reference is the anchor)

A clip with a prompt schedule ("prompts" and their first frames "prompt_starts",
as the synthetic clips that turn have) is captioned with the prompt of the target's
segment. Clips shorter than k*min_stride + 1 frames are dropped. Each host reads its own
disjoint slice of the split (`tfds.even_splits`), shuffles it, and yields batches of
global_batch_size // process_count tuples, images scaled to float32 [-1, 1], NHWC.
A data set pre-encoded by `data/precompute.py` gives the same tuples of VAE posterior
moments instead of images, and the text states of the target's prompt.

Resuming: the position is tf.data's own iterator state (shuffle buffer, file
offsets, prefetched batches, element counter). Every random choice is a stateless
function of (seed, process index, element number), so a restored iterator yields
exactly the batches the original would have. Save it with `TrainIterator.save` /
`restore` (one file prefix per process), or beside the model in an orbax
CheckpointManager:

  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=TrainIteratorSave(iterator)))
  manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(state), data=TrainIteratorRestore(iterator)))

TensorFlow only runs the input pipeline on the CPU: it is kept off the GPUs so that
all accelerator memory stays with JAX.
"""

import dataclasses
import os

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
import tensorflow_datasets as tfds

from artv_jax.data import tfds_synthetic
from artv_jax.data import tfds_webvid

DATASETS = ("synthetic_shapes", "webvid")


def make_builder(dataset: str, data_dir: str, *, resolution: int,
                 manual_dir: str | None = None, variant: str = "") -> tfds.core.DatasetBuilder:
  """The builder of `dataset` at square `resolution`, built into data_dir if needed.

  Args:
    dataset: "synthetic_shapes" (generated) or "webvid" (from `manual_dir`).
    data_dir: TFDS data directory. Processes sharing one must not build it
      concurrently: build once first (e.g. from process 0), then start the run.
    resolution: frame height and width in pixels.
    manual_dir: webvid only: the folder with the CSVs and the videos (needed
      only to build).
    variant: synthetic_shapes only: a predefined clip mix, the builder config
      "{resolution}px_{variant}" (e.g. "demo"); empty: the standard one.
  """
  if variant and dataset != "synthetic_shapes":
    raise ValueError(f"a data set variant ({variant!r}) exists only for synthetic_shapes, "
                     f"not {dataset!r}")
  if dataset == "synthetic_shapes":
    builder_cls = tfds_synthetic.ArtvSyntheticShapes
    config = tfds_synthetic.builder_config(resolution, variant)
  elif dataset == "webvid":
    builder_cls = tfds_webvid.ArtvWebvid
    config = tfds_webvid.WebvidConfig(
        name=f"{resolution}px_8fps", height=resolution, width=resolution)
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


class TrainIterator:
  """Batches of training tuples as numpy dicts, with a resumable position.

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
    clip_id:      [B] bytes, the clip's TFDS id (file and record)

  From a pre-encoded data set (`data/precompute.py`), 'target', 'refs' and 'anchor'
  are replaced by the VAE posterior moments of the same frames, and the caption's
  text states are added:
    target_moments: [B, h, w, 2C] float32, mean then log-variance channels, unscaled
    refs_moments:   [B, k, h, w, 2C] float32
    anchor_moments: [B, h, w, 2C] float32
    text_states:    [B, L, D] float32
  """

  def __init__(self, dataset: tf.data.Dataset, process_index: int):
    self.process_index = process_index
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return tf.nest.map_structure(lambda t: t.numpy(), next(self._iterator))

  def save(self, path_prefix: str) -> None:
    """Writes the position to files `path_prefix.*` (one prefix per process)."""
    self._checkpoint.write(path_prefix)

  def restore(self, path_prefix: str) -> None:
    """Continues from a position written by `save` of the same pipeline."""
    if not tf.io.gfile.exists(f"{path_prefix}.index"):
      raise FileNotFoundError(
          f"no data iterator state at {path_prefix} (saved by a run with another "
          f"process count or without data state?)")
    self._checkpoint.read(path_prefix).assert_consumed()


def make_train_iterator(
    builder: tfds.core.DatasetBuilder,
    *,
    global_batch_size: int,
    split: str = "train",
    num_reference_frames: int = 1,
    min_stride: int = 1,
    max_stride: int = 4,
    max_anchor_strides: int | None = None,
    shuffle_buffer_size: int = 1024,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch_batches: int = 2,
) -> TrainIterator:
  """Infinite, shuffled, host-sharded iterator of training tuples.

  Args:
    builder: a prepared TFDS builder whose examples have "frames" (a `Video`, or a
      `Tensor` [T, H, W, 3] uint8 with an encoding) and "caption"; or a pre-encoded
      one (`precompute.load_encoded`) with "moments", "text_states" and "caption".
    global_batch_size: tuples per step over all processes.
    split: TFDS split (slicing allowed, e.g. "train[:90%]").
    num_reference_frames: k, previous frames per tuple.
    min_stride, max_stride: range of the frame stride (inclusive).
    max_anchor_strides: most strides from anchor to target; None: the clip's length.
    shuffle_buffer_size: clips in the shuffle buffer (kept encoded).
    seed: drives file order, shuffling and tuple sampling.
    process_index, process_count: this host's slice; default to JAX's.
    prefetch_batches: batches prepared ahead.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
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
  if tf.config.list_physical_devices("GPU"):
    tf.config.set_visible_devices([], "GPU")

  host_split = tfds.even_splits(split, n=process_count)[process_index]
  if builder.info.splits[host_split].num_examples == 0:
    raise ValueError(f"split {split!r} has too few clips for {process_count} "
                     f"processes: process {process_index} gets none")
  encoded = "moments" in builder.info.features  # Written by data/precompute.py.
  frames_key, suffix = ("moments", "_moments") if encoded else ("frames", "")
  passed = ("caption", "text_states") if encoded else ("caption",)
  scheduled = "prompt_starts" in builder.info.features  # Always so when encoded.
  passed += ("prompts", "prompt_starts") if scheduled else ()
  num_frames, decode_frames = _frame_access(builder.info.features[frames_key])
  ds = builder.as_dataset(
      split=host_split,
      shuffle_files=True,
      read_config=tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=True),
      decoders={frames_key: tfds.decode.SkipDecoding()},
  )
  ds = ds.map(lambda ex: {"frames": ex[frames_key], "clip_id": ex["tfds_id"],
                          **{key: ex[key] for key in passed}})
  ds = ds.filter(lambda ex: num_frames(ex["frames"]) >= k * min_stride + 1)
  ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
  ds = ds.repeat().enumerate()

  base_seed = tf.constant([seed, process_index], tf.int64)

  def sample_tuple(element_number, ex):
    rng = tf.random.experimental.stateless_fold_in(base_seed, element_number)
    stride_rng, strides_rng, anchor_rng = tf.unstack(
        tf.random.experimental.stateless_split(rng, 3))
    length = tf.cast(num_frames(ex["frames"]), tf.int32)
    stride = _uniform_int(stride_rng, min_stride,
                          tf.minimum(max_stride, (length - 1) // k))
    most_strides = (length - 1) // stride
    if max_anchor_strides is not None:
      most_strides = tf.minimum(most_strides, max_anchor_strides)
    strides = _uniform_int(strides_rng, k, most_strides)
    anchor_index = _uniform_int(anchor_rng, 0, length - 1 - strides * stride)
    target_index = anchor_index + strides * stride
    ref_indices = target_index - stride * tf.range(1, k + 1)
    indices = tf.concat([[target_index], ref_indices, [anchor_index]], 0)
    frames = decode_frames(ex["frames"], indices)  # [k + 2, H, W, C]
    if scheduled:
      segment = tf.reduce_sum(tf.cast(ex["prompt_starts"] <= target_index, tf.int32)) - 1
      ex = {**ex, "caption": ex["prompts"][segment]}
      if encoded:
        ex["text_states"] = ex["text_states"][segment]
    if encoded:
      frames = tf.cast(frames, tf.float32)
      ex = {**ex, "text_states": tf.cast(ex["text_states"], tf.float32)}
    else:
      frames = tf.cast(frames, tf.float32) / 127.5 - 1.0
    return {
        "target" + suffix: frames[0],
        "refs" + suffix: frames[1:k + 1],
        "anchor" + suffix: frames[k + 1],
        **{key: ex[key] for key in passed if key not in ("prompts", "prompt_starts")},
        "stride": stride,
        "target_index": target_index,
        "ref_indices": ref_indices,
        "anchor_index": anchor_index,
        "clip_id": ex["clip_id"],
    }

  ds = ds.map(sample_tuple, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
  ds = ds.prefetch(prefetch_batches)
  options = tf.data.Options()
  options.deterministic = True  # Parallel map must not reorder: resumption relies on it.
  return TrainIterator(ds.with_options(options), process_index)


def _uniform_int(seed: tf.Tensor, low, high) -> tf.Tensor:
  """An int32 uniform on {low, ..., high} (inclusive), stateless."""
  return tf.random.stateless_uniform([], seed, minval=low, maxval=high + 1,
                                     dtype=tf.int32)


def _frame_access(feature: tfds.features.FeatureConnector):
  """(num_frames(encoded), decode(encoded, indices) -> [N, H, W, C]).

  Video features are stored frame by frame, so only the sampled frames are
  decoded; whole-clip tensors (uint8 frames, or the float latent moments of
  data/precompute.py) are decoded, then indexed.
  """
  if isinstance(feature, tfds.features.Video):
    return (lambda encoded: tf.shape(encoded)[0],
            lambda encoded, indices: feature.decode_example(tf.gather(encoded, indices)))
  if (isinstance(feature, tfds.features.Tensor) and len(feature.shape) == 4
      and (feature.np_dtype == np.uint8 or np.issubdtype(feature.np_dtype, np.floating))):
    length = feature.shape[0]
    if length is None:  # Clips of varying length: the decoded shape tells.
      num_frames = lambda encoded: tf.shape(feature.decode_example(encoded))[0]
    else:
      num_frames = lambda encoded: tf.constant(length)
    return (num_frames,
            lambda encoded, indices: tf.gather(feature.decode_example(encoded), indices))
  raise ValueError(f"'frames' must be a tfds.features.Video or a uint8 Tensor "
                   f"[T, H, W, 3], 'moments' a float Tensor [T, h, w, 2C]; got {feature!r}")


@dataclasses.dataclass
class _TrainIteratorArgs(ocp.args.CheckpointArgs):
  item: TrainIterator


class TrainIteratorHandler(ocp.CheckpointHandler):
  """Saves each process's `TrainIterator` position in the orbax step directory."""

  def save(self, directory: epath.Path, args: _TrainIteratorArgs) -> None:
    args.item.save(_process_prefix(directory, args.item))

  def restore(self, directory: epath.Path, args: _TrainIteratorArgs) -> TrainIterator:
    args.item.restore(_process_prefix(directory, args.item))
    return args.item


def _process_prefix(directory: epath.Path, iterator: TrainIterator) -> str:
  return os.path.join(os.fspath(directory), f"process_{iterator.process_index}")


@ocp.args.register_with_handler(TrainIteratorHandler, for_save=True)
@dataclasses.dataclass
class TrainIteratorSave(_TrainIteratorArgs):
  pass


@ocp.args.register_with_handler(TrainIteratorHandler, for_restore=True)
@dataclasses.dataclass
class TrainIteratorRestore(_TrainIteratorArgs):
  pass
