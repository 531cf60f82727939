"""Tests of the Grain training pipeline: pairing, sharding, resumption, checkpoint size."""

import itertools
import os

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from artv_jax.data import pipeline
from artv_jax.data import tfds_synthetic
from tests.data import records
from tests.data import test_tfds_webvid

K = 2  # Reference frames: pairing is checked for more than one.
NUM_FRAMES = 12


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  tfds.disable_progress_bar()
  config = tfds_synthetic.SyntheticShapesConfig(
      name="tiny", height=16, width=16, num_frames=NUM_FRAMES, num_train=24,
      num_heldout=6)
  builder = tfds_synthetic.ArtvSyntheticShapes(
      data_dir=tmp_path_factory.mktemp("tfds"), config=config)
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope="module")
def webvid(tmp_path_factory):
  manual_dir = os.fspath(tmp_path_factory.mktemp("manual"))
  test_tfds_webvid.write_webvid_manual_dir(manual_dir, lengths=(6, 7, 9, 12))
  return test_tfds_webvid.build(tmp_path_factory.mktemp("tfds"), manual_dir)


def _iterator(builder, **overrides):
  kwargs = dict(global_batch_size=6, num_reference_frames=K, min_stride=1,
                max_stride=4, seed=0, process_index=0,
                process_count=1)
  return pipeline.make_train_iterator(builder, **{**kwargs, **overrides})


def _clips(builder, split="train"):
  """{record index: example} of a whole split, decoded."""
  return dict(enumerate(records.decoded(builder, split)))


def _scaled(frames):
  return frames.astype(np.float32) / 127.5 - 1.0


def test_batch_shapes_and_range(synthetic):
  batch = next(_iterator(synthetic))
  assert batch["target"].shape == (6, 16, 16, 3)
  assert batch["refs"].shape == (6, K, 16, 16, 3)
  assert batch["anchor"].shape == (6, 16, 16, 3)
  assert batch["ref_indices"].shape == (6, K)
  for key in ("caption", "stride", "target_index", "anchor_index", "clip_index"):
    assert batch[key].shape == (6,)
  for key in ("target", "refs", "anchor"):
    assert batch[key].dtype == np.float32
    assert -1.0 <= batch[key].min() and batch[key].max() <= 1.0


def _check_pairing(batch, clips, min_stride, max_stride):
  for i in range(len(batch["clip_index"])):
    clip = clips[batch["clip_index"][i]]
    frames = clip["frames"]
    stride, target = batch["stride"][i], batch["target_index"][i]
    anchor = batch["anchor_index"][i]
    assert min_stride <= stride <= max_stride
    np.testing.assert_array_equal(batch["ref_indices"][i],
                                  target - stride * np.arange(1, K + 1))
    strides, remainder = divmod(target - anchor, stride)
    assert remainder == 0 and strides >= K and anchor >= 0
    np.testing.assert_array_equal(batch["target"][i], _scaled(frames[target]))
    for j, index in enumerate(batch["ref_indices"][i]):
      np.testing.assert_array_equal(batch["refs"][i, j], _scaled(frames[index]))
    np.testing.assert_array_equal(batch["anchor"][i], _scaled(frames[anchor]))
    assert batch["caption"][i] == _target_caption(clip, target)


def _target_caption(clip, target):
  if "prompts" not in clip:
    return clip["caption"]
  return clip["prompts"][np.searchsorted(clip["prompt_starts"], target, side="right") - 1]


def test_tuples_are_paired_by_the_sampled_stride(synthetic):
  clips = _clips(synthetic)
  iterator = _iterator(synthetic, min_stride=2, max_stride=5)
  strides = set()
  for _ in range(6):
    batch = next(iterator)
    _check_pairing(batch, clips, 2, 5)
    strides.update(batch["stride"].tolist())
  assert strides == {2, 3, 4, 5}  # (T - 1) // K = 5 frames fit the longest stride.


def test_target_follows_reference_on_the_ground_truth_trajectory(synthetic):
  """The object moved from reference to target by velocity x stride."""
  clips = _clips(synthetic)
  batch = next(_iterator(synthetic))
  for i, clip_index in enumerate(batch["clip_index"]):
    clip = clips[clip_index]
    motion = synthetic.info.features["motion"].int2str(clip["motion"])
    if motion == "bounce" or len(clip["prompts"]) > 1:  # Bounces and turns bend the line.
      continue
    shift = (clip["center_xy"][batch["target_index"][i]]
             - clip["center_xy"][batch["ref_indices"][i, 0]])
    shift = np.mod(shift + 8.0, 16.0) - 8.0  # The 16x16 frame wraps around.
    np.testing.assert_allclose(shift, clip["velocity_xy"] * batch["stride"][i],
                               atol=1e-4)


def test_caption_is_the_prompt_of_the_target_s_segment(synthetic):
  clips = _clips(synthetic)
  turned = 0
  for batch in itertools.islice(_iterator(synthetic), 4):
    for clip_index, caption, target in zip(batch["clip_index"], batch["caption"],
                                        batch["target_index"]):
      clip = clips[clip_index]
      assert caption == _target_caption(clip, target)
      turned += target >= clip["prompt_starts"][-1] > 0
  assert turned  # Some targets lie after a turn.


def test_video_feature_clips_are_paired_and_short_clips_dropped(webvid):
  clips = _clips(webvid)
  lengths = {clip_index: len(clip["frames"]) for clip_index, clip in clips.items()}
  # K * min_stride + 1 = 7 frames needed: the 6-frame video never appears.
  iterator = _iterator(webvid, min_stride=3, max_stride=4, global_batch_size=4)
  seen = set()
  for _ in range(4):
    batch = next(iterator)
    _check_pairing(batch, clips, 3, 4)
    seen.update(batch["clip_index"].tolist())
  assert seen == {clip_index for clip_index, n in lengths.items() if n >= 7}


def test_hosts_read_disjoint_shards_covering_the_split(synthetic):
  seen = []
  for process_index in range(2):
    iterator = _iterator(synthetic, global_batch_size=8, process_index=process_index,
                         process_count=2)
    ids = set()
    for _ in range(3):  # A whole epoch of the 12-clip shard.
      batch = next(iterator)
      assert batch["target"].shape[0] == 4  # global_batch_size // process_count
      ids.update(batch["clip_index"].tolist())
    seen.append(ids)
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(_clips(synthetic))


def _assert_same_batches(expected, iterator):
  for batch in expected:
    actual = next(iterator)
    for key in batch:
      np.testing.assert_array_equal(actual[key], batch[key], err_msg=key)


def test_same_seed_same_batches_other_seed_other_batches(synthetic):
  expected = [next(_iterator(synthetic))]
  _assert_same_batches(expected, _iterator(synthetic))
  other = next(_iterator(synthetic, seed=1))
  assert not np.array_equal(other["target"], expected[0]["target"])


@pytest.mark.parametrize("worker_count", [0, 2])
@pytest.mark.parametrize("builder", ["synthetic", "webvid"])
def test_resumed_iterator_yields_the_batches_of_an_uninterrupted_one(builder, worker_count,
                                                                     request):
  builder = request.getfixturevalue(builder)
  uninterrupted = _iterator(builder, global_batch_size=4, worker_count=worker_count)
  for _ in range(7):  # Past the first epoch.
    next(uninterrupted)
  position = uninterrupted.get_state()
  expected = [next(uninterrupted) for _ in range(4)]
  resumed = _iterator(builder, global_batch_size=4, worker_count=worker_count)
  resumed.set_state(position)
  _assert_same_batches(expected, resumed)


def test_position_of_a_10000_clip_split_checkpoints_in_a_few_bytes(tmp_path):
  """The checkpoint holds the sampler's position, not a shuffle buffer: its size does not
  grow with the data set, every epoch being a permutation of all 10,000 clips."""
  config = tfds_synthetic.SyntheticShapesConfig(
      name="many", height=8, width=8, num_frames=4, num_train=10_000, num_heldout=1)
  many = tfds_synthetic.ArtvSyntheticShapes(data_dir=tmp_path / "tfds", config=config)
  many.download_and_prepare()
  iterator = _iterator(many, num_reference_frames=1)
  next(iterator)
  state = {"params": jnp.arange(3.0)}
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
  with ocp.CheckpointManager(tmp_path / "checkpoints", options=options) as manager:
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data=pipeline.save_args(iterator)))
    expected = [next(iterator) for _ in range(3)]  # While the save may still run.
    manager.wait_until_finished()
    restored = _iterator(many, num_reference_frames=1)
    result = manager.restore(1, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), data=pipeline.restore_args(restored)))
  np.testing.assert_array_equal(result.state["params"], state["params"])
  _assert_same_batches(expected, restored)
  data_files = list((tmp_path / "checkpoints" / "1" / "data").rglob("*"))
  assert 0 < sum(f.stat().st_size for f in data_files if f.is_file()) < 1_000_000


def test_heldout_split_yields_only_heldout_clips(synthetic):
  batch = next(_iterator(synthetic, split="heldout", global_batch_size=4))
  _check_pairing(batch, _clips(synthetic, "heldout"), 1, 4)


def test_a_tfrecord_data_set_is_named_with_the_way_to_convert_it(tmp_path):
  config = tfds_synthetic.SyntheticShapesConfig(
      name="old", height=8, width=8, num_frames=4, num_train=2, num_heldout=1)
  old = tfds_synthetic.ArtvSyntheticShapes(data_dir=tmp_path, config=config,
                                           file_format="tfrecord")
  old.download_and_prepare()
  with pytest.raises(ValueError, match="stored as tfrecord.*convert_format"):
    _iterator(old)


def test_global_batch_must_divide_among_processes(synthetic):
  with pytest.raises(ValueError, match="not divisible"):
    _iterator(synthetic, global_batch_size=5, process_count=2)


def test_make_builder_builds_the_synthetic_data_set(tmp_path):
  builder = pipeline.make_builder("synthetic_shapes", os.fspath(tmp_path), resolution=8)
  assert builder.info.features["frames"].shape[1:] == (8, 8, 3)
  with pytest.raises(ValueError, match="unknown dataset"):
    pipeline.make_builder("kinetics", os.fspath(tmp_path), resolution=8)


def test_make_builder_rejects_an_unknown_variant(tmp_path):
  with pytest.raises(ValueError, match="no variant 'huge' at 8 px"):
    pipeline.make_builder("synthetic_shapes", os.fspath(tmp_path), resolution=8,
                          variant="huge")
  with pytest.raises(ValueError, match="only for synthetic_shapes"):
    pipeline.make_builder("webvid", os.fspath(tmp_path), resolution=8, variant="demo")


def test_webvid_built_in_parts_is_read_as_one_data_set(tmp_path):
  """Each part holds the videos whose id hashes to it (a repeated id meets its first in the
  same part); the iterator over all parts sees every video once per epoch."""
  manual_dir = os.fspath(tmp_path / "manual")
  written = test_tfds_webvid.write_webvid_manual_dir(manual_dir, lengths=(6, 7, 9, 12, 8, 10))
  parts = [pipeline.make_builder("webvid", os.fspath(tmp_path / "tfds"), resolution=16,
                                 manual_dir=manual_dir, part=(i, 2)) for i in range(2)]
  assert [p.info.config_name for p in parts] == ["16px_8fps_part0of2", "16px_8fps_part1of2"]
  ids = [[ex["video_id"].decode() for ex in records.decoded(p, "train")] for p in parts]
  assert all(ids) and sorted(ids[0] + ids[1]) == sorted(written)
  skipped = [sum(p.info.metadata["skipped"]["train"].values()) for p in parts]
  assert sum(skipped) == 4  # corrupt, missing, too short, repeated: each counted once
  clips = [ex for p in parts for ex in records.decoded(p, "train")]
  iterator = _iterator(parts, global_batch_size=4, num_reference_frames=1)
  seen = {int(i) for _ in range(2) for i in next(iterator)["clip_index"]}
  assert seen == set(range(len(clips)))
  with pytest.raises(ValueError, match="only webvid is built in parts"):
    pipeline.make_builder("synthetic_shapes", os.fspath(tmp_path), resolution=8, part=(0, 2))
