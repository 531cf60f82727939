"""Tests of the synthetic shapes TFDS builder."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from artv_jax.data import synthetic_shapes
from artv_jax.data import tfds_synthetic
from tests.data import records

TINY = tfds_synthetic.SyntheticShapesConfig(
    name="tiny", height=16, width=24, num_frames=10, num_train=30, num_heldout=12,
    seed=5)


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  tfds.disable_progress_bar()
  builder = tfds_synthetic.ArtvSyntheticShapes(
      data_dir=tmp_path_factory.mktemp("tfds"), config=TINY)
  builder.download_and_prepare()
  return builder


def _examples(builder, split):
  return records.decoded(builder, split)


def test_splits_and_shapes(builder):
  assert builder.info.splits["train"].num_examples == 30
  assert builder.info.splits["heldout"].num_examples == 12
  example = _examples(builder, "train")[0]
  assert example["frames"].shape == (10, 16, 24, 3)
  assert example["frames"].dtype == np.uint8
  assert example["center_xy"].shape == (10, 2) and example["size"].shape == (10,)


def _triple(builder, example):
  names = builder.info.features
  return (names["color"].int2str(example["color"]),
          names["shape"].int2str(example["shape"]),
          names["motion"].int2str(example["motion"]))


def test_heldout_combinations_only_in_heldout_split(builder):
  heldout = set(synthetic_shapes.HELDOUT_COMBINATIONS)
  train = {tuple(synthetic_shapes.parse_caption(p.decode()).values())
           for ex in _examples(builder, "train") for p in ex["prompts"]}
  assert not train & heldout
  assert {_triple(builder, ex) for ex in _examples(builder, "heldout")} <= heldout


def test_stored_clips_are_the_generator_s(builder):
  for split in ("train", "heldout"):
    for example in _examples(builder, split)[:5]:
      clip = synthetic_shapes.generate_clip(
          TINY.seed, split, int(example["index"]), num_frames=10, height=16, width=24,
          **TINY.turning(split))
      np.testing.assert_array_equal(example["frames"], clip.frames)
      np.testing.assert_array_equal(example["center_xy"], clip.center_xy)
      np.testing.assert_array_equal(example["size"], clip.size)
      assert example["caption"].decode() == clip.spec.caption
      assert list(zip(example["prompt_starts"], [p.decode() for p in example["prompts"]])) == (
          list(clip.spec.schedule))
      assert _triple(builder, example) == (clip.spec.color, clip.spec.shape,
                                           clip.spec.motion)
      np.testing.assert_array_equal(example["color_rgb"],
                                    synthetic_shapes.COLORS[clip.spec.color])
      vx, vy = synthetic_shapes.velocity_xy(clip.spec)
      np.testing.assert_allclose(example["velocity_xy"], [vx * 24, vy * 16], rtol=1e-6)


def test_some_train_clips_turn_and_no_heldout_clip_does(builder):
  segments = [len(ex["prompts"]) for ex in _examples(builder, "train")]
  assert 1 in segments and 2 in segments
  assert all(len(ex["prompts"]) == 1 for ex in _examples(builder, "heldout"))


def test_a_variant_stores_clips_of_its_distribution(tmp_path):
  config = tfds_synthetic.SyntheticShapesConfig(
      name="tiny_variant", height=16, width=16, num_frames=6, num_train=8, num_heldout=2,
      size_range=(0.2, 0.25), speed_range=(0.0625, 0.0625), backgrounds=("gray",),
      walled=True, turn_probability=0.0, segment_frames=(2, 3))
  builder = tfds_synthetic.ArtvSyntheticShapes(data_dir=tmp_path, config=config)
  builder.download_and_prepare()
  for example in _examples(builder, "train"):
    assert builder.info.features["background"].int2str(example["background"]) == "gray"
    assert 0.2 * 16 <= example["size"][0] <= 0.25 * 16
    assert np.linalg.norm(example["velocity_xy"]) == pytest.approx(0.0625 * 16)
    clip = synthetic_shapes.generate_clip(
        config.seed, "train", int(example["index"]), num_frames=6, height=16, width=16,
        **config.turning("train"), **config.distribution())
    np.testing.assert_array_equal(example["frames"], clip.frames)
    assert clip.spec.walled and (clip.spec.motion == "bounce" or len(example["prompts"]) > 1)
