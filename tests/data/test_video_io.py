"""Tests of video reading (crop, resize, resample) and writing through ffmpeg."""

import os

import numpy as np
import pytest

from artv_jax.data import synthetic_shapes
from artv_jax.data import video_io


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  """A 20-frame 48x64 clip written at 10 fps: (path, frames [20, 48, 64, 3])."""
  clip = synthetic_shapes.generate_clip(0, "train", 1, num_frames=20, height=48,
                                        width=64)
  path = os.fspath(tmp_path_factory.mktemp("video") / "clip.mp4")
  video_io.write_video(path, clip.frames, fps=10)
  return path, clip.frames


def test_round_trip_keeps_the_frames(video):
  path, frames = video
  decoded, fps = video_io.read_video(path, height=48, width=64)
  assert decoded.shape == frames.shape and decoded.dtype == np.uint8
  assert fps == pytest.approx(10.0)
  assert np.abs(decoded.astype(np.float32) - frames).mean() < 3.0  # H.264 is lossy.


def test_center_crop_and_resize(video):
  path, frames = video
  decoded, _ = video_io.read_video(path, height=24, width=24)
  # Centre 48x48 square of the 48x64 source, then 2x2 area averaging.
  expected = frames[:, :, 8:56].astype(np.float32)
  expected = expected.reshape(20, 24, 2, 24, 2, 3).mean(axis=(2, 4))
  assert decoded.shape == (20, 24, 24, 3)
  assert np.abs(decoded - expected).mean() < 3.0


def test_max_frames_and_fps(video):
  path, _ = video
  decoded, _ = video_io.read_video(path, height=16, width=16, max_frames=6)
  assert len(decoded) == 6
  decoded, fps = video_io.read_video(path, height=16, width=16, fps=5)
  assert fps == 5 and len(decoded) == 10  # 2 s of video.


@pytest.mark.parametrize("content,reason", [(os.urandom(3000), "ffmpeg failed"),
                                            (b"", "ffmpeg failed"),
                                            (None, "no such file")])
def test_unreadable_video_raises_video_read_error(tmp_path, content, reason):
  path = os.fspath(tmp_path / "broken.mp4")
  if content is not None:
    with open(path, "wb") as f:
      f.write(content)
  with pytest.raises(video_io.VideoReadError, match=reason) as error:
    video_io.read_video(path, height=16, width=16)
  assert error.value.path == path


def test_write_video_rejects_odd_sizes(tmp_path):
  with pytest.raises(ValueError, match="even"):
    video_io.write_video(os.fspath(tmp_path / "x.mp4"), np.zeros([2, 15, 16, 3], np.uint8))
