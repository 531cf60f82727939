"""Writing a generated video as it arrives: mp4 segments, then mp4, gif, contact sheet, JSON.

The sampler hands over one chunk of frames at a time. Each chunk becomes a complete little
mp4 (``chunks/<first frame>.mp4``, written to a temporary name and renamed, so a killed run
leaves no half-written segment), which is what makes generation resumable at any chunk and
keeps memory flat in the length of the video. :func:`finalize_video` then joins the segments
without re-encoding and derives the gif and the contact sheet from the joined mp4, streaming
through ffmpeg (the binary bundled by imageio-ffmpeg), so nothing holds the whole video.
``out_dir`` may be a URI (gs://...): ffmpeg works on local files, and every output lands in
``out_dir`` through a temporary name and a rename, so a reader never sees half a file.

    out_dir/chunks/00000000.mp4, 00000016.mp4, ...   one per chunk
    out_dir/video.mp4      H.264, the segments joined
    out_dir/video.gif      global palette, computed in a first pass
    out_dir/contact_sheet.png   every Nth frame, labelled with its frame index
"""
import contextlib
import json
import math
import os
import subprocess
import tempfile
from typing import Any

from etils import epath
import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw

from artv_jax import paths
from artv_jax.data.video_io import write_video

SEGMENT_DIR = "chunks"
OUTPUT_FILES = {"video": "video.mp4", "gif": "video.gif", "contact_sheet": "contact_sheet.png"}
_LABEL_HEIGHT = 12  # pixels above each contact-sheet tile for its frame index
_GAP = 2  # pixels between contact-sheet tiles


def to_uint8(frames: np.ndarray) -> np.ndarray:
  """frames [..., 3] float in [-1, 1] -> uint8 in [0, 255] (values outside are clipped)."""
  frames = np.asarray(frames, np.float32)
  return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour enlargement of frames [T, H, W, 3] by an integer factor: small
  pixel-space videos (32x32 in the demo) stay sharp in players and viewers."""
  if factor == 1:
    return frames
  return np.repeat(np.repeat(frames, factor, axis=1), factor, axis=2)


def segment_path(out_dir: paths.PathLike, first_frame: int) -> epath.Path:
  return epath.Path(out_dir) / SEGMENT_DIR / f"{first_frame:08d}.mp4"


def list_segments(out_dir: paths.PathLike) -> list[tuple[int, epath.Path]]:
  """(first frame, path) of every complete segment in out_dir, in frame order."""
  found = (epath.Path(out_dir) / SEGMENT_DIR).glob("[0-9]" * 8 + ".mp4")
  return sorted((int(p.name[:8]), p) for p in found)


def write_segment(out_dir: paths.PathLike, first_frame: int, frames: np.ndarray,
                  fps: float) -> epath.Path:
  """Writes frames [T, H, W, 3] uint8 (H, W even) as the segment starting at first_frame."""
  path = segment_path(out_dir, first_frame)
  write_video(path, frames, fps)
  return path


def discard_segments(out_dir: paths.PathLike, from_frame: int = 0) -> None:
  """Removes the segments starting at or after from_frame (and any a killed run left staged)."""
  for first, path in list_segments(out_dir):
    if first >= from_frame:
      path.unlink()
  # The staging names of paths.atomic_output: ".<name>.<random>.tmp".
  for path in (epath.Path(out_dir) / SEGMENT_DIR).glob(".*.tmp"):
    path.unlink()


def _ffmpeg(*args: str) -> None:
  cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args]
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"ffmpeg failed ({' '.join(cmd)}):\n{result.stderr.strip()}")


def concat_segments(segments: list[paths.PathLike], path: paths.PathLike) -> None:
  """Joins mp4 segments (same size and codec) into one mp4 without re-encoding."""
  if not segments:
    raise ValueError(f"no video segments to join into {path}: nothing was generated yet")
  with contextlib.ExitStack() as stack:
    local = [paths.resolve(stack.enter_context(paths.local_copy(s))) for s in segments]
    list_file = epath.Path(stack.enter_context(tempfile.TemporaryDirectory())) / "segments.txt"
    list_file.write_text("".join(f"file '{s}'\n" for s in local))
    with paths.atomic_output(path) as out:
      _ffmpeg("-f", "concat", "-safe", "0", "-i", os.fspath(list_file), "-c", "copy", out)


def mp4_to_gif(mp4_path: paths.PathLike, gif_path: paths.PathLike, fps: float) -> None:
  """Re-encodes a video as a looping gif with one palette fitted to the whole video (two
  streaming passes: a single-pass global palette would buffer every frame in ffmpeg)."""
  with (paths.local_copy(mp4_path) as mp4, tempfile.TemporaryDirectory() as tmp,
        paths.atomic_output(gif_path) as gif):
    palette = os.path.join(tmp, "palette.png")
    _ffmpeg("-i", mp4, "-vf", "palettegen=stats_mode=full", palette)
    _ffmpeg("-i", mp4, "-i", palette, "-lavfi", f"fps={fps}[v];[v][1:v]paletteuse",
            "-loop", "0", gif)


def read_every_nth_frame(video_path: paths.PathLike,
                         every: int) -> tuple[list[int], list[np.ndarray]]:
  """Frame indices and frames [H, W, 3] uint8 of frames 0, N, 2N, ..., decoded one at a time."""
  indices, frames = [], []
  with paths.local_copy(video_path) as local:
    reader = imageio_ffmpeg.read_frames(local)
    meta = next(reader)
    width, height = meta["size"]
    for i, data in enumerate(reader):
      if i % every == 0:
        indices.append(i)
        frames.append(np.frombuffer(data, np.uint8).reshape(height, width, 3))
  return indices, frames


def contact_sheet(indices: list[int], frames: list[np.ndarray], columns: int = 8) -> np.ndarray:
  """Tiles frames [H, W, 3] uint8 into rows of ``columns``, each labelled with its index.

  Returns:
    [rows * (12 + H + 2), columns * (W + 2), 3] uint8 image, white background.
  """
  if not frames:
    raise ValueError("contact_sheet needs at least one frame")
  height, width = frames[0].shape[:2]
  columns = min(columns, len(frames))
  rows = math.ceil(len(frames) / columns)
  cell_h, cell_w = _LABEL_HEIGHT + height + _GAP, width + _GAP
  sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
  draw = ImageDraw.Draw(sheet)
  for n, (index, frame) in enumerate(zip(indices, frames)):
    x, y = (n % columns) * cell_w, (n // columns) * cell_h
    draw.text((x + 1, y), str(index), fill="black")
    sheet.paste(Image.fromarray(frame), (x, y + _LABEL_HEIGHT))
  return np.asarray(sheet)


def write_contact_sheet(video_path: paths.PathLike, png_path: paths.PathLike, every: int,
                        columns: int = 8) -> None:
  """PNG contact sheet of frames 0, every, 2 * every, ... of a video file."""
  indices, frames = read_every_nth_frame(video_path, every)
  with paths.atomic_output(png_path) as local:
    Image.fromarray(contact_sheet(indices, frames, columns)).save(local)


def write_json(path: paths.PathLike, data: Any) -> None:
  """Writes JSON atomically (a reader never sees half a file)."""
  paths.write_atomic(path, json.dumps(data, indent=2))


def finalize_video(out_dir: paths.PathLike, fps: float,
                   contact_sheet_every: int) -> dict[str, str]:
  """Joins the segments of out_dir into video.mp4 and writes video.gif and contact_sheet.png.

  Returns:
    {'video': path, 'gif': path, 'contact_sheet': path}.
  """
  files = {key: epath.Path(out_dir) / name for key, name in OUTPUT_FILES.items()}
  # The gif and the sheet read the joined video here: no download of what was just uploaded.
  with paths.atomic_output(files["video"]) as video:
    concat_segments([p for _, p in list_segments(out_dir)], video)
    mp4_to_gif(video, files["gif"], fps)
    write_contact_sheet(video, files["contact_sheet"], contact_sheet_every)
  return {key: os.fspath(path) for key, path in files.items()}
