"""Tests of the WebVid-style TFDS builder on videos the test writes."""

import csv
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from artv_jax.data import synthetic_shapes
from artv_jax.data import tfds_webvid
from artv_jax.data import video_io
from tests.data import records

TINY = tfds_webvid.WebvidConfig(name="tiny", height=16, width=16, max_frames=12,
                                fps=None)


def write_webvid_manual_dir(root: str, lengths=(8, 10, 14)) -> dict[str, np.ndarray]:
  """Writes WebVid's layout: results_train.csv + {page_dir}/{videoid}.mp4.

  One video per length (16x16 synthetic clips, 8 fps), plus rows the builder must
  skip: a corrupt file, a missing file, a 1-frame video, a repeated video id.
  Returns {videoid: written frames} of the good videos.
  """
  page_dir = "000001_000050"
  os.makedirs(os.path.join(root, page_dir))
  rows, written = [], {}
  for i, length in enumerate(lengths):
    clip = synthetic_shapes.generate_clip(0, "train", i, num_frames=length, height=16,
                                          width=16)
    video_id = str(1000 + i)
    video_io.write_video(os.path.join(root, page_dir, f"{video_id}.mp4"), clip.frames)
    rows.append((video_id, clip.spec.caption))
    written[video_id] = clip.frames
  with open(os.path.join(root, page_dir, "666.mp4"), "wb") as f:
    f.write(os.urandom(2000))
  video_io.write_video(os.path.join(root, page_dir, "888.mp4"), clip.frames[:1])
  rows += [("666", "a corrupt video"), ("777", "a missing video"),
           ("888", "a still image"), (rows[0][0], "the first video again")]
  with open(os.path.join(root, "results_2M_train.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
    for video_id, caption in rows:
      writer.writerow([video_id, "https://example.com/x.mp4", "PT00H00M10S", page_dir,
                       caption])
  return written


def build(data_dir, manual_dir, config=TINY) -> tfds_webvid.ArtvWebvid:
  tfds.disable_progress_bar()
  builder = tfds_webvid.ArtvWebvid(data_dir=data_dir, config=config)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  manual_dir = os.fspath(tmp_path_factory.mktemp("manual"))
  written = write_webvid_manual_dir(manual_dir)
  data_dir = tmp_path_factory.mktemp("tfds")
  return build(data_dir, manual_dir), written, data_dir


def test_readable_videos_become_examples(built):
  builder, written, _ = built
  examples = {ex["video_id"].decode(): ex
              for ex in records.decoded(builder, "train")}
  assert set(examples) == set(written)
  for video_id, frames in written.items():
    example = examples[video_id]
    expected = frames[:TINY.max_frames]
    assert example["frames"].shape == expected.shape
    # H.264 then JPEG: lossy, but the same pictures.
    assert np.abs(example["frames"].astype(np.float32) - expected).mean() < 6.0
    assert example["fps"] == pytest.approx(8.0)


def test_unusable_videos_are_skipped_and_counted(built):
  builder, _, data_dir = built
  counts = {"unreadable": 1, "missing": 1, "too short": 1, "duplicate video id": 1}
  assert builder.info.metadata["skipped"] == {"train": counts}
  skipped = {os.path.basename(path): reason
             for path, reason in builder.skipped_videos["train"]}
  assert skipped == {"666.mp4": "unreadable", "777.mp4": "missing",
                     "888.mp4": "too short", "1000.mp4": "duplicate video id"}
  # The counts are saved with the data set.
  reloaded = tfds_webvid.ArtvWebvid(data_dir=data_dir, config=TINY)
  assert reloaded.info.metadata["skipped"] == {"train": counts}


def test_path_caption_csv_with_validation_split(tmp_path):
  manual_dir = tmp_path / "manual"
  os.makedirs(manual_dir / "clips")
  clip = synthetic_shapes.generate_clip(0, "train", 0, num_frames=6, height=16, width=16)
  video_io.write_video(os.fspath(manual_dir / "clips" / "a.mp4"), clip.frames)
  for name in ("train.csv", "val.csv"):
    with open(manual_dir / name, "w", newline="") as f:
      csv.writer(f).writerows([["path", "caption"], ["clips/a.mp4", "a test clip"]])
  config = tfds_webvid.WebvidConfig(name="tiny_8fps", height=16, width=16, fps=4.0)
  builder = build(tmp_path / "tfds", os.fspath(manual_dir), config)
  assert set(builder.info.splits) == {"train", "validation"}
  example = records.decoded(builder, "validation")[0]
  assert example["caption"] == b"a test clip" and example["video_id"] == b"clips/a.mp4"
  assert example["frames"].shape == (3, 16, 16, 3)  # 6 frames at 8 fps -> 3 at 4 fps.
  assert example["fps"] == 4.0


def test_missing_train_csv_names_the_manual_dir(tmp_path):
  os.makedirs(tmp_path / "manual")
  with open(tmp_path / "manual" / "captions.csv", "w") as f:
    f.write("path,caption\n")
  with pytest.raises(FileNotFoundError, match="train.csv"):
    build(tmp_path / "tfds", os.fspath(tmp_path / "manual"))


def test_unknown_csv_columns_are_named(tmp_path):
  os.makedirs(tmp_path / "manual")
  with open(tmp_path / "manual" / "train.csv", "w") as f:
    f.write("url,text\nx.mp4,hello\n")
  with pytest.raises(ValueError, match="columns"):
    build(tmp_path / "tfds", os.fspath(tmp_path / "manual"))


def test_a_split_without_a_usable_video_is_named(tmp_path):
  manual_dir = tmp_path / "manual"
  os.makedirs(manual_dir)
  with open(manual_dir / "train.csv", "w", newline="") as f:
    csv.writer(f).writerows([["path", "caption"], ["gone.mp4", "a missing video"]])
  with pytest.raises(ValueError, match="no usable video in .*train.csv: 1 rows.*missing"):
    build(tmp_path / "tfds", os.fspath(manual_dir))
