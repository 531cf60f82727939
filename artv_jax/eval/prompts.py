"""Held-out evaluation prompts and prompt schedules of the synthetic benchmark.

A schedule is the sampler's format, ``((start frame, caption), ...)`` with increasing starts
from 0 (see `artv_jax.sampling.parse_prompts`). Every schedule here is new to the model:

  * it opens on one of `HELDOUT_COMBINATIONS` (a colour/shape/motion triple the "train"
    split never shows), on a background cycling through the training backgrounds;
  * later segments keep the object and background and turn the motion by 90 degrees
    (clockwise for even-numbered schedules, counter-clockwise for odd ones); a bouncing object
    first turns to "right". Training clips turn at most once, and only between training
    triples, so no training clip shows a held-out triple or a sequence of turns.

Switches only go into directional motions: "bounce" needs the object fully inside the frame,
which a wrapping object straddling an edge is not, so a switch into it has no continuous
ground truth.

`render_schedule` draws the ground truth of a schedule (each segment continuing from where
the previous one left the object), which is what the metrics' tests score as a perfect model.
"""

import dataclasses
from typing import Sequence

import numpy as np

from artv_jax.data import synthetic_shapes
from artv_jax.sampling import parse_prompts

Schedule = tuple[tuple[int, str], ...]

# Directional motions in clockwise order on screen (y points down).
_CLOCKWISE = ("right", "down", "left", "up")


@dataclasses.dataclass(frozen=True)
class Segment:
  """Frames [start, end) of a video under one prompt."""
  start: int
  end: int
  color: str
  shape: str
  motion: str
  background: str  # "gray" when the caption names none, as `ClipSpec` does.


def segments(schedule: Sequence[Sequence], num_frames: int) -> list[Segment]:
  """The schedule's prompts cut to a video of `num_frames` (later prompts are dropped)."""
  starts, captions = parse_prompts(schedule)
  ends = starts[1:] + [num_frames]
  result = []
  for start, end, caption in zip(starts, ends, captions):
    if start >= num_frames:
      break
    attributes = synthetic_shapes.parse_caption(caption)
    result.append(Segment(start=start, end=min(end, num_frames), color=attributes["color"],
                          shape=attributes["shape"], motion=attributes["motion"],
                          background=attributes.get("background", "gray")))
  return result


def heldout_schedules(num_frames: int = 256, num_segments: int = 4,
                      backgrounds: Sequence[str] = tuple(synthetic_shapes.BACKGROUNDS)
                      ) -> tuple[Schedule, ...]:
  """One schedule per held-out triple, `num_segments` equal segments over `num_frames`, the
  backgrounds taken in turn from `backgrounds` (those the model was trained on).

  `num_segments=1` gives the single-prompt held-out videos.
  """
  if not 1 <= num_segments <= num_frames:
    raise ValueError(f"num_segments={num_segments} must be in [1, num_frames={num_frames}]")
  starts = [k * num_frames // num_segments for k in range(num_segments)]
  backgrounds = list(backgrounds)
  schedules = []
  for i, (color, shape, motion) in enumerate(synthetic_shapes.HELDOUT_COMBINATIONS):
    background = backgrounds[i % len(backgrounds)]
    turn = 1 if i % 2 == 0 else -1
    motions = [motion]
    for _ in range(num_segments - 1):
      previous = motions[-1]
      motions.append("right" if previous == "bounce" else
                     _CLOCKWISE[(_CLOCKWISE.index(previous) + turn) % len(_CLOCKWISE)])
    schedules.append(tuple(
        (start, synthetic_shapes.make_caption(color, shape, m, background))
        for start, m in zip(starts, motions)))
  return tuple(schedules)


def render_schedule(schedule: Sequence[Sequence], num_frames: int, height: int, width: int, *,
                    start_xy: tuple[float, float] = (0.5, 0.5), size: float = 0.16,
                    speed: float = 0.035, bounce_angle: float = 45.0,
                    walled: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Ground truth of a schedule: the object moves as the active prompt says.

  The first frame of each later segment is one step of the new motion away from the last
  frame of the previous one, so the motion from frame t-1 to frame t is always the one of the
  prompt active at frame t. Directional motions wrap around the frame, or with ``walled``
  stop at its edge (the synthetic clips' ``walled``).

  Returns:
    frames: [T, H, W, 3] uint8.
    center_xy: [T, 2] float32 pixel centre of the object (x right, y down).
  """
  frames, centers = [], []
  position = np.asarray(start_xy, np.float64)
  for k, segment in enumerate(segments(schedule, num_frames)):
    spec = synthetic_shapes.ClipSpec(
        color=segment.color, shape=segment.shape, motion=segment.motion,
        background=segment.background, start_xy=tuple(position), size=size, speed=speed,
        bounce_angle=bounce_angle, walled=walled)
    if k > 0:
      position = position + np.asarray(synthetic_shapes.velocity_xy(spec))
      if segment.motion == "bounce":
        if np.any(position < size) or np.any(position > 1.0 - size):
          raise ValueError(
              f"cannot switch into 'bounce' at frame {segment.start}: the object at "
              f"{tuple(position)} (frame fractions) is not fully inside the frame; "
              "switch into a directional motion instead")
      elif walled:
        position = np.clip(position, size, 1.0 - size)
      else:
        position = np.mod(position, 1.0)
      spec = dataclasses.replace(spec, start_xy=tuple(position))
    clip, path = synthetic_shapes.render_clip(spec, segment.end - segment.start, height, width)
    frames.append(clip)
    centers.append(path["center_xy"])
    position = path["center_xy"][-1].astype(np.float64) / np.array([width, height])
  return np.concatenate(frames), np.concatenate(centers)
