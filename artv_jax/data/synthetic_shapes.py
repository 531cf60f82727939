"""Synthetic text-to-video clips: a coloured shape moving on a textured background.

This is the data set the demo trains on and the drift benchmark scores against, so
every clip keeps its ground truth: the object's colour, shape and motion, the
background, and the per-frame trajectory (centre and size in pixels).

Conventions:
  * Positions, sizes and speeds in a `ClipSpec` are fractions of the frame, so one
    spec renders at any resolution; trajectories are returned in pixels of the
    rendered resolution, `center_xy` as (x to the right, y down).
  * Directional motions ("right", "left", "up", "down") wrap around the frame
    (the frame is a torus): an object leaving on the right re-enters on the left, so
    a clip of any length keeps its caption true. In a `walled` clip they stop at the
    frame's edge instead: the object moves until it touches the edge and rests
    against it, whole in every frame. "bounce" moves diagonally and reflects off the
    frame's edges.
  * A directional clip may turn: at each of its `turns` the object takes a new
    direction and the clip a new caption, so a clip carries a prompt schedule, as a
    multi-prompt video does. Training on turns teaches a model to take the direction
    from the text rather than from the motion of the frames before.
  * The background is static (a vertical brightness gradient plus a faint
    checkerboard), so appearance drift of the background is measurable and a
    perfect model can copy it from the reference frame.

Held-out split: the (colour, shape, motion) triples in `HELDOUT_COMBINATIONS` never
occur in the "train" split and are the only ones in the "heldout" split. Each of
their colours, shapes and motions, and every pair of them, does occur in training,
so held-out prompts test composition, not unseen words.
"""

import dataclasses
import functools
import itertools
import math
import re

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (235, 210, 30),
    "green": (30, 180, 50),
    "blue": (30, 60, 220),
    "purple": (140, 50, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("right", "left", "up", "down", "bounce")
# Achromatic, so the saturated object colours segment cleanly from them.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 30),
    "gray": (128, 128, 128),
    "white": (215, 215, 215),
}
SPLITS: tuple[str, ...] = ("train", "heldout")

# Two triples per motion; every colour and shape is held out at least once.
HELDOUT_COMBINATIONS: tuple[tuple[str, str, str], ...] = (
    ("blue", "circle", "right"),
    ("orange", "triangle", "right"),
    ("red", "triangle", "left"),
    ("purple", "square", "left"),
    ("orange", "circle", "up"),
    ("green", "square", "up"),
    ("green", "triangle", "down"),
    ("yellow", "circle", "down"),
    ("yellow", "square", "bounce"),
    ("blue", "triangle", "bounce"),
)
TRAIN_COMBINATIONS: tuple[tuple[str, str, str], ...] = tuple(
    c for c in itertools.product(COLORS, SHAPES, MOTIONS)
    if c not in HELDOUT_COMBINATIONS)

# Unit velocity of each directional motion in (x, y) image coordinates (y down).
_DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
# Ranges `sample_spec` draws from (fractions of the frame).
SIZE_RANGE = (0.12, 0.2)  # Radius / half-extent, as a fraction of min(H, W).
SPEED_RANGE = (0.02, 0.05)  # Frame fractions per frame.
_GRADIENT = 0.3  # Background brightness varies by +-15% from top to bottom.
_TEXTURE = 8.0  # Checkerboard amplitude, in uint8 levels.
_CHECKER_CELLS = 8  # Checkerboard cells across the frame.


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Everything that determines a clip, independent of resolution and length.

  The defaults give a centred, medium-sized, medium-speed object, so evaluation can
  render ground truth for a prompt with `ClipSpec(**parse_caption(prompt))`.
  """
  color: str
  shape: str
  motion: str
  background: str = "gray"
  start_xy: tuple[float, float] = (0.5, 0.5)  # Centre at frame 0, frame fractions.
  size: float = 0.16  # Radius / half-extent, as a fraction of min(H, W).
  speed: float = 0.035  # Frame fractions per frame.
  bounce_angle: float = 45.0  # Degrees, direction of "bounce" (y down); else unused.
  # (frame, direction): from that frame on, the object moves that way (directional
  # motions only; frames increasing, > 0).
  turns: tuple[tuple[int, str], ...] = ()
  # Directional motions stop at the frame's edge instead of wrapping around it.
  walled: bool = False

  def __post_init__(self):
    for value, allowed, what in ((self.color, COLORS, "colour"),
                                 (self.shape, SHAPES, "shape"),
                                 (self.motion, MOTIONS, "motion"),
                                 (self.background, BACKGROUNDS, "background")):
      if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {list(allowed)}")
    if self.turns and self.motion == "bounce":
      raise ValueError("a bouncing object cannot turn; turns are for directional motions")
    frames = [frame for frame, _ in self.turns]
    if any(f <= 0 for f in frames) or frames != sorted(set(frames)):
      raise ValueError(f"turn frames {frames} must be positive and increasing")
    for _, direction in self.turns:
      if direction not in _DIRECTIONS:
        raise ValueError(f"unknown turn direction {direction!r}; choose one of "
                         f"{list(_DIRECTIONS)}")

  @property
  def caption(self) -> str:
    """The caption of the first frame (of the whole clip when it does not turn)."""
    return make_caption(self.color, self.shape, self.motion, self.background)

  @property
  def schedule(self) -> tuple[tuple[int, str], ...]:
    """((start frame, caption), ...): the clip's prompt schedule, one entry per segment."""
    return ((0, self.caption),) + tuple(
        (frame, make_caption(self.color, self.shape, direction, self.background))
        for frame, direction in self.turns)

  @property
  def wraps(self) -> bool:
    """Whether the object wraps around the frame's edges (the frame is a torus)."""
    return self.motion != "bounce" and not self.walled

  @property
  def heldout(self) -> bool:
    return (self.color, self.shape, self.motion) in HELDOUT_COMBINATIONS


def make_caption(color: str, shape: str, motion: str,
                 background: str | None = None) -> str:
  """'a red circle moves right on a gray background' (background optional).

  Bouncing objects read 'an orange square bounces around ...'.
  """
  verb = "bounces around" if motion == "bounce" else f"moves {motion}"
  caption = f"{_article(color)} {color} {shape} {verb}"
  if background is None:
    return caption
  return f"{caption} on {_article(background)} {background} background"


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def all_captions() -> list[str]:
  """Every caption of either split, with and without background: a tokenizer's text."""
  return [make_caption(*triple, background)
          for triple in itertools.product(COLORS, SHAPES, MOTIONS)
          for background in (None, *BACKGROUNDS)]


_CAPTION_RE = re.compile(
    r"^an? (?P<color>\w+) (?P<shape>\w+) "
    r"(?:moves (?P<direction>\w+)|(?P<bounce>bounces around))"
    r"(?: on an? (?P<background>\w+) background)?\.?$")


def parse_caption(caption: str) -> dict[str, str]:
  """Inverse of `make_caption`: {'color', 'shape', 'motion'[, 'background']}."""
  match = _CAPTION_RE.match(caption.strip().lower())
  if match is None:
    raise ValueError(
        f"caption {caption!r} is not of the form "
        f"'a <colour> <shape> moves <direction> [on a <background> background]' "
        f"or 'a <colour> <shape> bounces around [...]'")
  attributes = {
      "color": match["color"],
      "shape": match["shape"],
      "motion": "bounce" if match["bounce"] else match["direction"],
  }
  if match["background"]:
    attributes["background"] = match["background"]
  for key, allowed in (("color", COLORS), ("shape", SHAPES), ("motion", MOTIONS),
                       ("background", BACKGROUNDS)):
    if key in attributes and attributes[key] not in allowed:
      raise ValueError(f"caption {caption!r}: unknown {key} {attributes[key]!r}; "
                       f"choose one of {list(allowed)}")
  return attributes


def combinations(split: str) -> tuple[tuple[str, str, str], ...]:
  """The (colour, shape, motion) triples a split draws from."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
  return TRAIN_COMBINATIONS if split == "train" else HELDOUT_COMBINATIONS


def sample_spec(rng: np.random.Generator, split: str, *, num_frames: int = 24,
                turn_probability: float = 0.0,
                segment_frames: tuple[int, int] | None = None,
                size_range: tuple[float, float] = SIZE_RANGE,
                speed_range: tuple[float, float] = SPEED_RANGE,
                backgrounds: tuple[str, ...] = tuple(BACKGROUNDS),
                walled: bool = False) -> ClipSpec:
  """Draws a random clip of `split` (uniform over its triples and `backgrounds`).

  A directional clip turns once, with `turn_probability`, at a frame in the middle half of
  its `num_frames`; or, given `segment_frames` (lo, hi), after every segment of
  U{lo..hi} frames. Each turn takes another direction whose triple is also in `split`.
  Sizes and speeds are uniform in their ranges (frame fractions; a range (a, a) fixes the
  value). A `walled` clip starts with its object whole inside the frame.
  """
  triples = combinations(split)
  if not backgrounds or any(b not in BACKGROUNDS for b in backgrounds):
    raise ValueError(f"backgrounds {backgrounds} must be a non-empty subset of "
                     f"{list(BACKGROUNDS)}")
  for name, (low, high) in (("size_range", size_range), ("speed_range", speed_range)):
    if not 0 < low <= high < 0.5:
      raise ValueError(f"{name} ({low}, {high}) must satisfy 0 < low <= high < 0.5 "
                       "(frame fractions)")
  if segment_frames is not None and (turn_probability or not 1 <= segment_frames[0]
                                     <= segment_frames[1]):
    raise ValueError(f"segment_frames {segment_frames} must satisfy 1 <= lo <= hi, and "
                     f"excludes turn_probability ({turn_probability})")
  color, shape, motion = triples[rng.integers(len(triples))]
  size = rng.uniform(*size_range)
  # An object that cannot wrap must start fully inside the frame; wrapping ones anywhere.
  low = size if motion == "bounce" or walled else 0.0
  background = backgrounds[rng.integers(len(backgrounds))]
  start_xy = tuple(float(v) for v in rng.uniform(low, 1.0 - low, size=2))
  speed = float(rng.uniform(*speed_range))
  bounce_angle = float(rng.uniform(20.0, 70.0) + 90.0 * rng.integers(4))
  turns = []
  if motion != "bounce":
    if segment_frames is not None:
      frames = np.cumsum(rng.integers(segment_frames[0], segment_frames[1] + 1,
                                      size=num_frames // segment_frames[0] + 1))
      frames = frames[frames < num_frames]
    elif rng.uniform() < turn_probability:
      frames = [max(1, int(rng.integers(num_frames // 4, 3 * num_frames // 4 + 1)))]
    else:
      frames = []
    direction = motion
    for frame in frames:
      new_directions = [d for d in _DIRECTIONS
                        if d != direction and (color, shape, d) in triples]
      if not new_directions:
        break
      direction = new_directions[rng.integers(len(new_directions))]
      turns.append((int(frame), direction))
  return ClipSpec(
      color=color,
      shape=shape,
      motion=motion,
      background=background,
      start_xy=start_xy,
      size=float(size),
      speed=speed,
      # Steep or shallow, never axis-aligned, in any of the four quadrants.
      bounce_angle=bounce_angle,
      turns=tuple(turns),
      walled=walled,
  )


def velocity_xy(spec: ClipSpec) -> tuple[float, float]:
  """Initial velocity (x, y) in frame fractions per frame (before any turn)."""
  if spec.motion == "bounce":
    angle = math.radians(spec.bounce_angle)
    return spec.speed * math.cos(angle), spec.speed * math.sin(angle)
  dx, dy = _DIRECTIONS[spec.motion]
  return spec.speed * dx, spec.speed * dy


def trajectory(spec: ClipSpec, num_frames: int, height: int,
               width: int) -> dict[str, np.ndarray]:
  """Ground-truth path in pixels.

  Returns:
    {'center_xy': [T, 2] float32 (x, y) pixel coordinates of the object's centre
     (wrapped into [0, W) x [0, H) for directional motions; in a walled clip, kept
     where the object is whole, [size, W - size] x [size, H - size]),
     'size': [T] float32 radius / half-extent in pixels}.
  """
  t = np.arange(num_frames, dtype=np.float64)
  size = spec.size * min(height, width)
  center = []
  for axis, (start, extent) in enumerate(zip(spec.start_xy, (width, height))):
    if spec.motion == "bounce":
      position = start * extent + velocity_xy(spec)[axis] * extent * t
      position = _reflect(position, size, extent - size)
    else:
      # Frame i moved from frame i - 1 the way frame i's segment says.
      steps = spec.speed * extent * np.array(
          [_DIRECTIONS[motion_at(spec, i)][axis] for i in range(1, num_frames)])
      if spec.walled:
        position = [np.clip(start * extent, size, extent - size)]
        for step in steps:
          position.append(np.clip(position[-1] + step, size, extent - size))
        position = np.array(position)
      else:
        distance = np.concatenate([[0.0], np.cumsum(steps)])
        position = np.mod(start * extent + distance, extent)
    center.append(position)
  center = np.stack(center, axis=-1).astype(np.float32)
  extent = np.array([width, height], np.float32)
  # Rounding to float32 can turn 47.99999999 into 48: keep [0, W) x [0, H).
  center = np.where(center >= extent, center - extent, center)
  return {
      "center_xy": center,
      "size": np.full([num_frames], size, np.float32),
  }


def motion_at(spec: ClipSpec, frame: int) -> str:
  """The motion of `frame`'s segment."""
  motion = spec.motion
  for start, direction in spec.turns:
    if frame >= start:
      motion = direction
  return motion


def _reflect(position: np.ndarray, low: float, high: float) -> np.ndarray:
  """Folds free motion into [low, high] as an elastic bounce (a triangle wave)."""
  span = high - low
  phase = np.mod(position - low, 2.0 * span)
  return low + np.where(phase > span, 2.0 * span - phase, phase)


def render_clip(spec: ClipSpec, num_frames: int, height: int,
                width: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Renders `spec` as frames: [T, H, W, 3] uint8, plus its `trajectory`."""
  path = trajectory(spec, num_frames, height, width)
  # Offsets of pixel centres from the object's, kept separable until the distance
  # broadcasts them to [T, H, W]: far fewer operations than on full frames.
  center = path["center_xy"][:, :, None, None]  # [T, 2, 1, 1]
  dx = np.arange(width, dtype=np.float32) + 0.5 - center[:, 0]  # [T, 1, W]
  dy = np.arange(height, dtype=np.float32)[:, None] + 0.5 - center[:, 1]  # [T, H, 1]
  if spec.wraps:  # Toroidal offsets: the object shows on both edges.
    dx = np.mod(dx + width / 2, width) - width / 2
    dy = np.mod(dy + height / 2, height) - height / 2
  distance = _signed_distance(spec.shape, dx, dy, path["size"][:, None, None])
  # One pixel of linear coverage across the edge: anti-aliased, so sub-pixel motion
  # changes the frames smoothly.
  alpha = np.clip(0.5 - distance, 0.0, 1.0)[..., None]  # [T, H, W, 1]
  background = background_image(spec.background, height, width)
  color = np.asarray(COLORS[spec.color], np.float32)
  frames = background + alpha * (color - background)
  return np.round(frames).astype(np.uint8), path


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray,
                     size: np.ndarray) -> np.ndarray:
  """Pixels outside (+) / inside (-) the shape; exact along edges."""
  if shape == "circle":
    return np.sqrt(dx * dx + dy * dy) - size
  if shape == "square":
    return np.maximum(np.abs(dx), np.abs(dy)) - size
  # Triangle with apex (0, -s) and base from (-s, s) to (s, s): fills half its box.
  # Sides' outward unit normals are (+-2, -1) / sqrt(5); both pass through the apex.
  sides = (2.0 * np.abs(dx) - (dy + size)) / math.sqrt(5.0)
  return np.maximum(sides, dy - size)


@functools.lru_cache(maxsize=32)
def _background(name: str, height: int, width: int) -> np.ndarray:
  ys, xs = np.mgrid[0:height, 0:width]
  gradient = 1.0 + _GRADIENT * ((ys + 0.5) / height - 0.5)  # [H, W]
  cell_y = ys * _CHECKER_CELLS // height
  cell_x = xs * _CHECKER_CELLS // width
  checker = np.where((cell_y + cell_x) % 2 == 0, _TEXTURE, -_TEXTURE)
  rgb = np.asarray(BACKGROUNDS[name], np.float32)
  image = rgb * gradient[..., None] + checker[..., None]
  image = np.clip(image, 0.0, 255.0).astype(np.float32)
  image.setflags(write=False)  # Shared by every clip through the cache.
  return image


def background_image(name: str, height: int, width: int) -> np.ndarray:
  """The static background: [H, W, 3] float32 in [0, 255] (read-only)."""
  if name not in BACKGROUNDS:
    raise ValueError(f"unknown background {name!r}; choose one of {list(BACKGROUNDS)}")
  return _background(name, height, width)


@dataclasses.dataclass(frozen=True)
class Clip:
  spec: ClipSpec
  frames: np.ndarray  # [T, H, W, 3] uint8
  center_xy: np.ndarray  # [T, 2] float32, pixels
  size: np.ndarray  # [T] float32, pixels


def generate_clip(seed: int, split: str, index: int, *, num_frames: int = 24,
                  height: int = 32, width: int = 32, turn_probability: float = 0.0,
                  **distribution) -> Clip:
  """Clip number `index` of `split`: a pure function of its arguments.

  `distribution`: `sample_spec`'s size_range, speed_range and backgrounds.
  """
  combinations(split)  # Validates `split`.
  rng = np.random.default_rng((seed, SPLITS.index(split), index))
  spec = sample_spec(rng, split, num_frames=num_frames, turn_probability=turn_probability,
                     **distribution)
  frames, path = render_clip(spec, num_frames, height, width)
  return Clip(spec=spec, frames=frames, **path)
