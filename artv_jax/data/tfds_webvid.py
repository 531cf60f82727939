"""TFDS builder for WebVid-style captioned videos from files, local or in a bucket.

The manual dir (a folder or a URI such as gs://bucket/webvid) holds one CSV per split and
the videos. A CSV whose name ends in `train.csv` makes the "train" split; one ending in
`val.csv` or `validation.csv` makes "validation" (WebVid's own `results_2M_train.csv` /
`results_2M_val.csv` qualify). Two CSV layouts are understood:

  * WebVid's: columns `videoid,name,page_dir` (others ignored), the video at
    `{page_dir}/{videoid}.mp4` under the manual dir, `name` the caption;
  * plain: columns `path,caption`, `path` relative to the manual dir, absolute, or a URI.

Each video is decoded with ffmpeg (from a local copy if remote), resampled to `fps`,
centre-cropped and resized to the config's resolution, and stored as JPEG frames (at most
`max_frames`).
Videos that are missing, corrupt, or shorter than `min_frames` are skipped, never
fatal: after each split the builder logs a summary, and the counts per reason are
in `builder.info.metadata["skipped"][split]` (saved with the data set) and the
skipped paths with their reasons in `builder.skipped_videos[split]`.

  builder = ArtvWebvid(data_dir=data_dir, config="64px_8fps")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
"""

import collections
import concurrent.futures
import csv
import dataclasses
import os
from typing import Iterator
import zlib

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from artv_jax import paths
from artv_jax.data import video_io

_SPLIT_SUFFIXES = {"train.csv": "train", "val.csv": "validation",
                   "validation.csv": "validation"}
# Videos decoded ahead of the writer; bounds memory while ffmpeg runs in parallel.
_DECODE_WINDOW = 32


@dataclasses.dataclass(eq=False)
class WebvidConfig(tfds.core.BuilderConfig):
  height: int = 64
  width: int = 64
  max_frames: int = 32  # Frames kept from the start of each video.
  fps: float | None = 8.0  # Resample to this rate; None keeps the source's frames.
  min_frames: int = 2  # Shorter videos are skipped: a training tuple needs two.
  decode_threads: int = 4  # Parallel ffmpeg processes.
  # Part `part` of `num_parts`: the videos whose id hashes to it (so duplicates meet), built
  # as a data set of its own; see `webvid_config`.
  num_parts: int = 1
  part: int = 0


class ArtvWebvid(tfds.core.GeneratorBasedBuilder):
  """Captioned videos from a WebVid-style CSV and video files."""

  name = "artv_webvid"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      WebvidConfig(name="64px_8fps", description="64x64 at 8 fps, up to 32 frames."),
      WebvidConfig(name="256px_8fps", height=256, width=256,
                   description="256x256 at 8 fps, up to 32 frames."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the split CSVs (`*train.csv`, optionally `*val.csv`) in the manual dir, with
  either WebVid's columns `videoid,name,page_dir` and the videos at
  `{page_dir}/{videoid}.mp4` under the manual dir, or columns `path,caption`.
  """

  def __init__(self, **kwargs):
    super().__init__(**{"file_format": "array_record", **kwargs})  # Random access.
    self.skipped_videos: dict[str, list[tuple[str, str]]] = {}

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "frames": tfds.features.Video(
                shape=(None, c.height, c.width, 3), encoding_format="jpeg"),
            "caption": tfds.features.Text(),
            "video_id": tfds.features.Text(),
            "fps": tfds.features.Scalar(dtype=np.float32),  # 0 if unknown.
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = epath.Path(dl_manager.manual_dir)
    names = sorted(p.name for p in manual_dir.iterdir())
    csvs = {}
    for name in names:
      split = next((s for suffix, s in _SPLIT_SUFFIXES.items()
                    if name.endswith(suffix)), None)
      if split is None:
        continue
      if split in csvs:
        raise ValueError(f"two CSVs for split {split!r} in {manual_dir}: "
                         f"{csvs[split]} and {name}; keep one")
      csvs[split] = name
    if "train" not in csvs:
      raise FileNotFoundError(
          f"no '*train.csv' in the manual dir {manual_dir} (found {names}); "
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {split: self._generate_examples(manual_dir / name, split)
            for split, name in csvs.items()}

  def _generate_examples(self, csv_path: paths.PathLike, split: str):
    c = self.builder_config
    total, skipped, seen = 0, [], set()
    rows = (row for row in _read_rows(csv_path) if part_of(row[0], c.num_parts) == c.part)
    for (video_id, path, caption), decoded in _decode_in_order(rows, self._read,
                                                               c.decode_threads):
      total += 1
      if video_id in seen:
        skipped.append((path, "duplicate video id"))
      elif isinstance(decoded, video_io.VideoReadError):
        logging.info("%s", decoded)
        skipped.append((path, "unreadable" if epath.Path(path).exists() else "missing"))
      elif len(decoded[0]) < c.min_frames:
        skipped.append((path, "too short"))
      else:
        frames, fps = decoded
        yield video_id, {"frames": frames, "caption": caption,
                         "video_id": video_id, "fps": fps}
      seen.add(video_id)
    self._report_skipped(split, total, skipped)
    if total == len(skipped):
      part = f" (part {c.part} of {c.num_parts})" if c.num_parts > 1 else ""
      raise ValueError(f"no usable video in {csv_path}{part}: {total} rows, skipped "
                       f"{dict(collections.Counter(r for _, r in skipped))}; check the manual "
                       "dir" + (", or build in fewer parts" if part else ""))

  def _read(self, path: str):
    c = self.builder_config
    try:
      return video_io.read_video(path, height=c.height, width=c.width,
                                 max_frames=c.max_frames, fps=c.fps)
    except video_io.VideoReadError as e:
      return e

  def _report_skipped(self, split: str, total: int,
                      skipped: list[tuple[str, str]]) -> None:
    self.skipped_videos[split] = skipped
    counts = collections.Counter(reason for _, reason in skipped)
    self.info.metadata.setdefault("skipped", {})[split] = dict(counts)
    if skipped:
      examples = "; ".join(f"{p} ({r})" for p, r in skipped[:5])
      logging.warning("%s/%s: kept %d of %d videos, skipped %s, e.g. %s",
                      self.name, split, total - len(skipped), total, dict(counts),
                      examples)
    else:
      logging.info("%s/%s: kept all %d videos", self.name, split, total)


def webvid_config(resolution: int, part: tuple[int, int] = (0, 1)) -> WebvidConfig:
  """The config at square ``resolution`` and 8 fps; ``part`` (i, n): the i-th of n parts, which
  n processes can build at once ("{resolution}px_8fps_part{i}of{n}")."""
  i, n = part
  if not 0 <= i < n:
    raise ValueError(f"webvid part {i} of {n} does not exist")
  suffix = f"_part{i}of{n}" if n > 1 else ""
  return WebvidConfig(name=f"{resolution}px_8fps{suffix}", height=resolution, width=resolution,
                      num_parts=n, part=i)


def part_of(video_id: str, num_parts: int) -> int:
  """The part a video belongs to: a hash of its id, the same on every host and run."""
  return zlib.crc32(video_id.encode("utf-8")) % num_parts


def _read_rows(csv_path: paths.PathLike) -> Iterator[tuple[str, str, str]]:
  """Yields (video id, video path, caption) for each row of a split CSV."""
  csv_path = epath.Path(csv_path)
  root = csv_path.parent
  with csv_path.open("r", encoding="utf-8") as f:  # Streamed: WebVid's CSVs are gigabytes.
    reader = csv.DictReader(f)
    columns = set(reader.fieldnames or ())
    if {"videoid", "name", "page_dir"} <= columns:
      for row in reader:
        relative = f"{row['page_dir']}/{row['videoid']}.mp4"
        yield row["videoid"], os.fspath(root / relative), row["name"]
    elif {"path", "caption"} <= columns:
      for row in reader:
        path = row["path"] if not paths.is_local(row["path"]) else os.fspath(root / row["path"])
        yield row["path"], path, row["caption"]
    else:
      raise ValueError(
          f"{csv_path} has columns {sorted(columns)}; expected WebVid's "
          f"'videoid,name,page_dir' or 'path,caption'")


def _decode_in_order(rows: Iterator[tuple[str, str, str]], read, threads: int):
  """Yields (row, read(row's path)) in order, decoding up to a window ahead."""
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    pending = collections.deque()
    for row in rows:
      pending.append((row, pool.submit(read, row[1])))
      if len(pending) >= _DECODE_WINDOW:
        row, decoded = pending.popleft()
        yield row, decoded.result()
    while pending:
      row, decoded = pending.popleft()
      yield row, decoded.result()
