"""Drift and prompt-following metrics of synthetic-shapes videos, from the frames alone.

The synthetic clips (`artv_jax.data.synthetic_shapes`) show one saturated object on an
achromatic background, so a generated frame is read without any model:

  detection   pixels with chroma max(RGB) - min(RGB) above a threshold, largest component on
              the torus (directional motions wrap around the frame edges); each pixel's
              coverage is its chroma relative to the object's interior (the renderer
              anti-aliases edges by mixing the object colour with the grey background, which
              scales chroma exactly), giving a sub-pixel area and centroid (a circular mean
              per axis, so an object split across an edge has one centre); colour = nearest
              palette colour of the interior's mean RGB; shape: a triangle (apex up) is the one
              whose vertical profile is skewed (-0.57; circle and square 0), a square
              fills area / (tallest column x widest row) = 1 of its box, a circle pi/4.
  drift       vs. frame 0: object colour (RGB distance of the interior means, uint8 levels),
              object size (|area / area_0 - 1|), background (mean |frame - frame_0| over
              pixels that are background in both frames, uint8 levels).
  following   per frame, the detected colour / shape / direction equals the active prompt's.
              The direction of step t (frame t-1 -> t, wrap-aware) is "static" below a
              minimum speed, the axis direction within a tolerance of an axis, else "bounce"
              (diagonal); a frame's direction is the majority over a centred window of steps,
              which also absorbs the single odd step of a bounce's reflection. For models of
              walled clips (`Settings.walled`), a static object touching the edge its prompt
              moves towards follows the prompt: it has arrived. Frames whose
              window spans a prompt switch are left out of direction following; switch
              latency scores them.
  smoothness  mean |third difference| of the centroid (wrap-aware), in pixels / frame^3,
              away from prompt switches. A bounce's reflections add their own jerk: compare
              models on the same prompts.
  latency     frames from a prompt switch until the video follows every attribute that
              changed (for motion: that frame's step and its window's direction agree with
              the new prompt). A switch never followed counts its whole segment.

`evaluate_video` scores one video, `aggregate` averages a list of them.
"""

import collections
import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from artv_jax.data import synthetic_shapes
from artv_jax.eval import prompts

_PALETTE_NAMES = tuple(synthetic_shapes.COLORS)
_PALETTE = np.asarray([synthetic_shapes.COLORS[c] for c in _PALETTE_NAMES], np.float32)


@dataclasses.dataclass(frozen=True)
class Settings:
  """How frames are read; the defaults suit the synthetic clips at 32 to 64 pixels."""
  chroma_threshold: float = 48.0  # uint8 levels; the palette's chroma is 150 to 225.
  min_area_fraction: float = 0.005  # Smaller detections (of the frame's area) count as absent.
  triangle_skew: float = 0.28  # |Vertical skewness|: triangle 0.57, circle and square 0.
  square_fill: float = 0.9  # Fill ratio between circle (pi/4) and square (1).
  min_speed: float = 0.005  # Frame fractions per frame; training speeds are 0.02 to 0.05.
  axis_tolerance_deg: float = 15.0  # Training bounces move 20 to 70 degrees off the axes.
  direction_window: int = 5  # Steps in the majority vote for a frame's direction (odd).
  drift_frames: tuple[int, ...] = (64, 256, 1024)  # Drift reported at these frame counts ...
  drift_window: int = 8  # ... as the mean over the last `drift_window` frames up to them.
  # Objects of walled clips stop at the frame's edge: resting against the edge a prompt's
  # direction moves towards then follows it.
  walled: bool = False

  def __post_init__(self):
    if self.direction_window < 1 or self.direction_window % 2 == 0:
      raise ValueError(f"direction_window={self.direction_window} must be a positive odd "
                       "number (a window centred on its frame)")


@dataclasses.dataclass(frozen=True)
class Detections:
  """The object in each of T frames of an [T, H, W, 3] video."""
  present: np.ndarray  # [T] bool
  color: np.ndarray  # [T] str, palette name ("" where absent)
  shape: np.ndarray  # [T] str ("" where absent)
  center_xy: np.ndarray  # [T, 2] float pixels, x right, y down (NaN where absent)
  area: np.ndarray  # [T] float pixels (what was found, even below the presence threshold)
  rgb: np.ndarray  # [T, 3] float mean colour of the object's interior (NaN where absent)
  fill: np.ndarray  # [T] float area / (tallest column x widest row) (NaN where absent)
  skew: np.ndarray  # [T] float skewness of the vertical profile (NaN where absent)


def _torus_dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
  """Binary dilation of [H, W] by a (2r+1)^2 square, wrapping around the edges."""
  out = np.zeros_like(mask)
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      out |= np.roll(mask, (dy, dx), axis=(0, 1))
  return out


def _largest_component(candidates: np.ndarray, weight: np.ndarray) -> np.ndarray:
  """The 8-connected component of [H, W] `candidates` with the most `weight`, on the torus.

  Rolling an empty row and column to the border makes plain labelling exact on the torus;
  without one (an object spanning the frame), parts joined across the border are separate.
  """
  empty_rows = np.flatnonzero(~candidates.any(axis=1))
  empty_cols = np.flatnonzero(~candidates.any(axis=0))
  shift = (-int(empty_rows[0]) if empty_rows.size else 0,
           -int(empty_cols[0]) if empty_cols.size else 0)
  labels, count = ndimage.label(np.roll(candidates, shift, axis=(0, 1)),
                                structure=np.ones((3, 3)))
  if count == 0:
    return candidates
  mass = ndimage.sum_labels(np.roll(weight, shift, axis=(0, 1)), labels, np.arange(1, count + 1))
  best = labels == 1 + int(np.argmax(mass))
  return np.roll(best, (-shift[0], -shift[1]), axis=(0, 1))


def _circular_mean(profile: np.ndarray) -> float:
  """Weighted mean pixel-centre coordinate of a [N] profile on a circle of N pixels."""
  extent = len(profile)
  angle = 2 * np.pi * (np.arange(extent) + 0.5) / extent
  mean = math.atan2(float(profile @ np.sin(angle)), float(profile @ np.cos(angle)))
  return float(np.mod(mean * extent / (2 * np.pi), extent))


def _skewness(profile: np.ndarray, center: float) -> float:
  """Skewness of a [N] profile around `center` on a circle of N pixels (the object spans
  less than half the frame, so the shorter offsets are its own)."""
  extent = len(profile)
  offset = np.mod(np.arange(extent) + 0.5 - center + extent / 2, extent) - extent / 2
  weight = profile / profile.sum()
  offset = offset - weight @ offset
  variance = weight @ offset**2
  return float(weight @ offset**3 / variance**1.5) if variance > 0 else 0.0


def _detect_frame(frame: np.ndarray, settings: Settings) -> dict[str, Any]:
  """The object in one [H, W, 3] uint8 frame (see `Detections`)."""
  height, width = frame.shape[:2]
  rgb = frame.astype(np.float32)
  chroma = rgb.max(axis=-1) - rgb.min(axis=-1)  # [H, W]
  component = _largest_component(chroma >= settings.chroma_threshold, chroma)
  absent = {"present": False, "color": "", "shape": "", "center_xy": (np.nan, np.nan),
            "rgb": (np.nan,) * 3, "fill": np.nan, "skew": np.nan,
            "object_mask": _torus_dilate(component, 2)}
  if not component.any():
    return {**absent, "area": 0.0}
  # The interior (one pixel in from the edge) holds the object's own colour; tiny or thin
  # objects have none, and their whole component stands in.
  interior = ~_torus_dilate(~component)
  if not interior.any():
    interior = component
  # Anti-aliased edge pixels fall below the threshold but touch the component.
  support = _torus_dilate(component)
  coverage = np.where(support, np.clip(chroma / chroma[interior].mean(), 0.0, 1.0), 0.0)
  area = float(coverage.sum())
  if area < settings.min_area_fraction * height * width:
    return {**absent, "area": area}
  mean_rgb = rgb[interior].mean(axis=0)
  columns, rows = coverage.sum(axis=0), coverage.sum(axis=1)  # [W], [H]
  center_xy = (_circular_mean(columns), _circular_mean(rows))
  fill = area / (columns.max() * rows.max())
  skew = _skewness(rows, center_xy[1])
  if abs(skew) > settings.triangle_skew:
    shape = "triangle"
  elif fill < settings.square_fill:
    shape = "circle"
  else:
    shape = "square"
  return {
      "present": True,
      "color": _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE - mean_rgb, axis=-1)))],
      "shape": shape,
      "center_xy": center_xy,
      "area": area,
      "rgb": tuple(mean_rgb),
      "fill": fill,
      "skew": skew,
      "object_mask": _torus_dilate(support, 1),
  }


def detect_objects(frames: np.ndarray,
                   settings: Settings = Settings()) -> tuple[Detections, np.ndarray]:
  """Finds the object in every frame of `frames` [T, H, W, 3] uint8.

  Returns:
    The detections, and [T, H, W] bool masks of each object with a 2-pixel margin (the
    pixels background drift leaves out).
  """
  found = [_detect_frame(frame, settings) for frame in _check_frames(frames)]
  detections = Detections(
      present=np.array([f["present"] for f in found], bool),
      color=np.array([f["color"] for f in found], object),
      shape=np.array([f["shape"] for f in found], object),
      center_xy=np.array([f["center_xy"] for f in found], np.float64),
      area=np.array([f["area"] for f in found], np.float64),
      rgb=np.array([f["rgb"] for f in found], np.float64),
      fill=np.array([f["fill"] for f in found], np.float64),
      skew=np.array([f["skew"] for f in found], np.float64),
  )
  return detections, np.stack([f["object_mask"] for f in found])


def _check_frames(frames: np.ndarray) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"expected frames [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}; "
                     "convert model outputs in [-1, 1] with video_writer.to_uint8")
  return frames


def wrapped_steps(center_xy: np.ndarray, height: int, width: int) -> np.ndarray:
  """Per-frame displacement [T, 2] in frame fractions, frame t-1 -> t, the shorter way
  around the torus (row 0 and steps touching an absent frame are NaN)."""
  steps = np.full_like(center_xy, np.nan, dtype=np.float64)
  delta = np.diff(center_xy, axis=0) / np.array([width, height])
  steps[1:] = np.mod(delta + 0.5, 1.0) - 0.5
  return steps


def classify_steps(steps: np.ndarray, settings: Settings = Settings()) -> np.ndarray:
  """Motion name of each step [T, 2] -> [T] str: a direction, "bounce" (diagonal), "static",
  or "" (no step)."""
  labels = np.full(len(steps), "", object)
  tolerance = math.tan(math.radians(settings.axis_tolerance_deg))
  for t, (dx, dy) in enumerate(steps):
    if np.isnan(dx) or np.isnan(dy):
      continue
    major, minor = max(abs(dx), abs(dy)), min(abs(dx), abs(dy))
    if math.hypot(dx, dy) < settings.min_speed:
      labels[t] = "static"
    elif minor > tolerance * major:
      labels[t] = "bounce"
    elif abs(dx) >= abs(dy):
      labels[t] = "right" if dx > 0 else "left"
    else:
      labels[t] = "down" if dy > 0 else "up"
  return labels


def majority_directions(step_labels: np.ndarray, window: int) -> np.ndarray:
  """Each frame's direction [T]: the most common step label in the centred window of steps
  (frames 1..T-1 hold steps); ties go to the frame's own step."""
  half = window // 2
  directions = np.full(len(step_labels), "", object)
  for t in range(1, len(step_labels)):
    votes = collections.Counter(step_labels[max(1, t - half):t + half + 1])
    best = max(votes.values())
    own = step_labels[t]
    directions[t] = own if votes[own] == best else max(votes, key=votes.get)
  return directions


def drift_curves(frames: np.ndarray, detections: Detections,
                 object_masks: np.ndarray) -> dict[str, np.ndarray]:
  """Appearance vs. frame 0, each [T] (NaN where undefined): 'color', 'size', 'background'.

  Args:
    frames: [T, H, W, 3] uint8.
    detections, object_masks: `detect_objects(frames)`.
  """
  frames = frames.astype(np.float32)
  color = np.linalg.norm(detections.rgb - detections.rgb[0], axis=-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    size = np.abs(detections.area / detections.area[0] - 1.0)
  if not detections.present[0]:
    size = np.full_like(size, np.nan)
  background = ~object_masks & ~object_masks[0]  # [T, H, W]
  difference = np.abs(frames - frames[0]).mean(axis=-1)  # [T, H, W]
  count = background.sum(axis=(1, 2))
  with np.errstate(invalid="ignore"):
    background_drift = np.where(count > 0, (difference * background).sum(axis=(1, 2)) / count,
                                np.nan)
  return {"color": color, "size": size, "background": background_drift}


def _against_edge(object_masks: np.ndarray, center_xy: np.ndarray,
                  motions: np.ndarray) -> np.ndarray:
  """[T] bool: the object touches the frame's edge that motions[t] moves towards (False for
  motions without one). object_masks [T, H, W] include a margin that wraps around the
  frame, so the centre [T, 2] must be on that edge's half too."""
  height, width = object_masks.shape[1:]
  x, y = center_xy[:, 0], center_xy[:, 1]
  with np.errstate(invalid="ignore"):  # NaN centres of absent objects compare False
    touching = {"right": object_masks[:, :, -1].any(axis=1) & (x > width / 2),
                "left": object_masks[:, :, 0].any(axis=1) & (x < width / 2),
                "down": object_masks[:, -1, :].any(axis=1) & (y > height / 2),
                "up": object_masks[:, 0, :].any(axis=1) & (y < height / 2)}
  return np.array([motion in touching and bool(touching[motion][t])
                   for t, motion in enumerate(motions)], bool)


def _fraction(hits: np.ndarray) -> float:
  return float(hits.mean()) if hits.size else math.nan


def evaluate_video(frames: np.ndarray, prompt_schedule: Sequence[Sequence],
                   settings: Settings = Settings()) -> dict[str, Any]:
  """Scores one generated video against the prompts it was generated from.

  Args:
    frames: [T, H, W, 3] uint8.
    prompt_schedule: ((start frame, caption), ...) as given to the sampler; captions as
      `synthetic_shapes.make_caption` writes them.
    settings: how frames are read.

  Returns:
    {'metrics': {name: float}: 'presence', 'following/{color,shape,direction,all}',
       'drift/{color,size,background}@N' for each N in settings.drift_frames <= T,
       'jerk_px', 'switch/latency' and 'switch/success' (NaN without switches);
     'curves': {'drift/color', 'drift/size', 'drift/background'}: [T] each;
     'detections': `Detections`; 'directions': [T] str;
     'switches': [{'frame', 'latency', 'followed'}]}.
  """
  frames = _check_frames(frames)
  num_frames, height, width = frames.shape[:3]
  schedule = prompts.segments(prompt_schedule, num_frames)
  detections, object_masks = detect_objects(frames, settings)
  active = {key: np.empty(num_frames, object) for key in ("color", "shape", "motion")}
  for segment in schedule:
    for key in active:
      active[key][segment.start:segment.end] = getattr(segment, key)

  steps = wrapped_steps(detections.center_xy, height, width)
  step_labels = classify_steps(steps, settings)
  directions = majority_directions(step_labels, settings.direction_window)
  color_ok = detections.color == active["color"]
  shape_ok = detections.shape == active["shape"]
  direction_ok = directions == active["motion"]
  if settings.walled:
    direction_ok |= (directions == "static") & _against_edge(
        object_masks, detections.center_xy, active["motion"])

  # Direction is scored where its window of steps lies within one prompt.
  half = settings.direction_window // 2
  frame = np.arange(num_frames)
  scored = frame >= 1
  for segment in schedule[1:]:
    scored &= ~((frame - half < segment.start) & (segment.start <= frame + half))

  # Jerk of frame t uses steps t-2..t: leave out those mixing two prompts.
  jerk = np.linalg.norm(np.diff(steps * np.array([width, height]), n=2, axis=0), axis=-1)
  jerk_frame = frame[2:]
  smooth = ~np.isnan(jerk)
  for segment in schedule[1:]:
    smooth &= ~((jerk_frame - 1 <= segment.start) & (segment.start <= jerk_frame))

  switches = []
  for before, after in zip(schedule, schedule[1:]):
    ok = np.ones(after.end - after.start, bool)
    span = slice(after.start, after.end)
    if after.color != before.color:
      ok &= color_ok[span]
    if after.shape != before.shape:
      ok &= shape_ok[span]
    if after.motion != before.motion:
      ok &= direction_ok[span] & (step_labels[span] == after.motion)
    followed = bool(ok.any())
    switches.append({"frame": after.start, "followed": followed,
                     "latency": int(np.argmax(ok)) if followed else after.end - after.start})

  curves = drift_curves(frames, detections, object_masks)
  metrics = {
      "presence": _fraction(detections.present),
      "following/color": _fraction(color_ok),
      "following/shape": _fraction(shape_ok),
      "following/direction": _fraction(direction_ok[scored]),
      "following/all": _fraction((color_ok & shape_ok & direction_ok)[scored]),
  }
  for n in settings.drift_frames:
    if n <= num_frames:
      for name, curve in curves.items():
        metrics[f"drift/{name}@{n}"] = _nanmean(curve[max(0, n - settings.drift_window):n])
  metrics["jerk_px"] = _nanmean(jerk[smooth])
  metrics["switch/latency"] = _nanmean(np.array([s["latency"] for s in switches], float))
  metrics["switch/success"] = _nanmean(np.array([s["followed"] for s in switches], float))
  return {
      "metrics": metrics,
      "curves": {f"drift/{name}": curve for name, curve in curves.items()},
      "detections": detections,
      "directions": directions,
      "switches": switches,
  }


def _nanmean(values: np.ndarray, axis: int | None = None) -> Any:
  """Mean over the non-NaN values; NaN where there are none (without numpy's warning)."""
  values = np.asarray(values, np.float64)
  count = (~np.isnan(values)).sum(axis=axis)
  total = np.nansum(values, axis=axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
  return float(mean) if axis is None else mean


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Averages `evaluate_video` results over videos.

  Returns:
    {'metrics': {name: mean over the videos that have it}, 'curves': {name: [T_max] mean
     over the videos long enough for each frame}, 'num_videos': int}.
  """
  if not results:
    raise ValueError("aggregate needs at least one evaluate_video result")
  names = list(dict.fromkeys(name for r in results for name in r["metrics"]))
  metrics = {name: _nanmean(np.array([r["metrics"].get(name, math.nan) for r in results]))
             for name in names}
  curves = {}
  for name in dict.fromkeys(name for r in results for name in r["curves"]):
    length = max(len(r["curves"][name]) for r in results if name in r["curves"])
    stacked = np.full((len(results), length), np.nan)
    for row, r in zip(stacked, results):
      if name in r["curves"]:
        row[:len(r["curves"][name])] = r["curves"][name]
    curves[name] = _nanmean(stacked, axis=0)
  return {"metrics": metrics, "curves": curves, "num_videos": len(results)}
