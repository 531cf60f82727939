"""Reading and writing video files through ffmpeg (the binary bundled by imageio-ffmpeg).

`read_video` lets ffmpeg do the resampling in time, the centre crop and the resize
in one pass, so a long high-resolution source never exists in memory at full size.
Every way a file can fail to decode comes out as `VideoReadError`, which the data set
builders catch to skip the video. Paths may be URIs (gs://...): ffmpeg reads a local copy
and writes a local file that then lands at the path in one rename.
"""

import logging
import os

from etils import epath
import imageio_ffmpeg
import numpy as np

from artv_jax import paths


class _DropResizeWarning(logging.Filter):
  """imageio-ffmpeg warns whenever output and source sizes differ: always, here."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "different from the source frame size" not in record.getMessage()


logging.getLogger("imageio_ffmpeg").addFilter(_DropResizeWarning())


class VideoReadError(Exception):
  """A video file is missing, unreadable, corrupt or has no frames."""

  def __init__(self, path: paths.PathLike, reason: str):
    path = os.fspath(path)
    super().__init__(f"cannot read video {path!r}: {reason}")
    self.path = path
    self.reason = reason


def read_video(path: paths.PathLike, *, height: int, width: int, max_frames: int | None = None,
               fps: float | None = None) -> tuple[np.ndarray, float]:
  """Decodes a video, centre-cropped to the aspect of (height, width) and resized.

  Args:
    path: a video file ffmpeg can decode (mp4, webm, avi, ...), local or a URI.
    height, width: output frame size in pixels.
    max_frames: keep at most this many frames (from the start), if given.
    fps: resample to this frame rate (dropping or repeating frames), if given;
      otherwise keep every source frame.

  Returns:
    frames: [T, height, width, 3] uint8 RGB, T >= 1.
    fps: their frame rate: `fps` if given, else the source's (0 if unknown).

  Raises:
    VideoReadError: the file is missing or ffmpeg cannot decode a frame from it.
  """
  if not epath.Path(path).is_file():
    raise VideoReadError(path, "no such file")
  filters = [] if fps is None else [f"fps={fps}"]
  # Largest centred window with the output's aspect ratio, then an area resize.
  filters += [
      f"crop='min(iw,ih*{width}/{height})':'min(ih,iw*{height}/{width})'",
      f"scale={width}:{height}:flags=area",
      "setsar=1",
  ]
  output_params = ["-vf", ",".join(filters)]
  if max_frames is not None:
    output_params += ["-frames:v", str(max_frames)]
  frame_bytes = height * width * 3
  frames = []
  try:
    with paths.local_copy(path) as local:
      reader = imageio_ffmpeg.read_frames(local, output_params=output_params)
      metadata = next(reader)  # Raises if ffmpeg cannot open the file.
      for frame in reader:
        if len(frame) != frame_bytes:
          raise VideoReadError(path, f"frame of {len(frame)} bytes, expected {frame_bytes}")
        frames.append(np.frombuffer(frame, np.uint8).reshape(height, width, 3))
  except VideoReadError:
    raise
  except (OSError, RuntimeError, ValueError, StopIteration) as e:
    raise VideoReadError(path, f"ffmpeg failed: {e}".splitlines()[0]) from e
  if not frames:
    raise VideoReadError(path, "ffmpeg decoded no frames")
  return np.stack(frames), float(metadata["fps"] if fps is None else fps)


def write_video(path: paths.PathLike, frames: np.ndarray, fps: float = 8.0) -> None:
  """Encodes frames [T, H, W, 3] uint8 (H and W even) as H.264 (e.g. an .mp4); the file
  appears at ``path`` only when complete."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} "
                     f"{list(frames.shape)}")
  height, width = frames.shape[1:3]
  if height % 2 or width % 2:
    raise ValueError(f"H.264 needs even frame sizes, got {height}x{width}; crop or pad")
  with paths.atomic_output(path) as local:  # ffmpeg picks the container from the suffix
    writer = imageio_ffmpeg.write_frames(
        local, (width, height), fps=fps, quality=8, macro_block_size=1,
        ffmpeg_log_level="error")
    writer.send(None)  # Starts ffmpeg.
    try:
      for frame in frames:
        writer.send(np.ascontiguousarray(frame).tobytes())
    finally:
      writer.close()
