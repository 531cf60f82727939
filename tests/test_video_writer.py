"""Video output: segments joined into mp4, gif, contact sheet and JSON, all readable back."""
import json

import imageio.v3 as iio
import numpy as np
import pytest

from artv_jax import video_writer


def colour_frames(num_frames: int, first: int = 0, size: int = 16) -> np.ndarray:
  """[T, size, size, 3] uint8: frame i is flat grey at level 8 * (i % 32)."""
  levels = 8 * ((np.arange(num_frames) + first) % 32)
  return np.broadcast_to(levels[:, None, None, None], (num_frames, size, size, 3)).astype(
      np.uint8)


@pytest.fixture
def video_dir(tmp_path):
  """An output dir with segments of 16, 16 and 8 frames (a video of 40)."""
  for first, n in ((0, 16), (16, 16), (32, 8)):
    video_writer.write_segment(str(tmp_path), first, colour_frames(n, first), fps=8)
  return tmp_path


def test_to_uint8_maps_minus_one_to_one_onto_0_255():
  frames = np.array([-2.0, -1.0, 0.0, 1.0, 3.0])
  np.testing.assert_array_equal(video_writer.to_uint8(frames), [0, 0, 128, 255, 255])


def test_upscale_repeats_pixels():
  frames = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
  big = video_writer.upscale(frames, 3)
  assert big.shape == (2, 6, 6, 3)
  np.testing.assert_array_equal(big[:, ::3, ::3], frames)


def test_finalize_writes_readable_mp4_gif_and_contact_sheet(video_dir):
  paths = video_writer.finalize_video(str(video_dir), fps=8, contact_sheet_every=5)
  mp4 = np.stack(video_writer.read_every_nth_frame(paths["video"], 1)[1])
  assert mp4.shape == (40, 16, 16, 3)
  # H.264 is lossy; flat frames come back within a few levels.
  np.testing.assert_allclose(mp4.mean(axis=(1, 2, 3)), colour_frames(40)[:, 0, 0, 0], atol=4)
  gif = iio.imread(paths["gif"], index=None)
  assert gif.shape[:3] == (40, 16, 16)
  sheet = iio.imread(paths["contact_sheet"])
  # Frames 0, 5, ..., 35: one row of 8 tiles, each under a label strip.
  assert sheet.shape == (12 + 16 + 2, 8 * (16 + 2), 3)


def test_contact_sheet_tiles_every_nth_frame_in_order():
  frames = [np.full((4, 4, 3), 10 * i, np.uint8) for i in range(10)]
  sheet = video_writer.contact_sheet(list(range(10)), frames, columns=4)
  assert sheet.shape == (3 * (12 + 4 + 2), 4 * (4 + 2), 3)
  for n in range(10):
    y, x = (n // 4) * 18 + 12, (n % 4) * 6
    np.testing.assert_array_equal(sheet[y:y + 4, x:x + 4], frames[n])


def test_read_every_nth_frame_returns_indices_and_frames(video_dir):
  paths = video_writer.finalize_video(str(video_dir), fps=8, contact_sheet_every=1)
  indices, frames = video_writer.read_every_nth_frame(paths["video"], 16)
  assert indices == [0, 16, 32] and len(frames) == 3 and frames[0].shape == (16, 16, 3)


def test_discard_segments_keeps_those_before_the_frame(video_dir):
  # A segment a killed run left under paths.atomic_output's staging name.
  (video_dir / video_writer.SEGMENT_DIR / ".00000040.mp4.0123abcd.tmp").write_bytes(b"half")
  video_writer.discard_segments(str(video_dir), from_frame=16)
  assert [first for first, _ in video_writer.list_segments(str(video_dir))] == [0]
  assert sorted(p.name for p in (video_dir / video_writer.SEGMENT_DIR).iterdir()) == [
      "00000000.mp4"]


def test_concat_without_segments_names_the_problem(tmp_path):
  with pytest.raises(ValueError, match="no video segments"):
    video_writer.concat_segments([], str(tmp_path / "video.mp4"))


def test_write_json_round_trips(tmp_path):
  data = {"prompts": [[0, "a red ball"], [48, "it bounces"]], "sampler": {"num_steps": 20}}
  path = str(tmp_path / "sample.json")
  video_writer.write_json(path, data)
  with open(path) as f:
    assert json.load(f) == data
