"""TFDS builder for the synthetic shapes videos (`synthetic_shapes.py`).

Builds offline into any data_dir, with no download:

  builder = ArtvSyntheticShapes(data_dir=data_dir, config="32px")
  builder.download_and_prepare()
  clips = builder.as_data_source(split="train")  # Random access: clips[i].

Splits: "train" (every colour/shape/motion triple except the held-out ones) and
"heldout" (only `synthetic_shapes.HELDOUT_COMBINATIONS`). Clip `index` of a split is
`synthetic_shapes.generate_clip(config.seed, split, index, ...)`, so evaluation can
re-render any stored clip, at any length, from the stored index.

Train clips may turn, once (`turn_probability`) or every few frames (`segment_frames`):
such a clip has several prompts, "prompts" with their first frames in "prompt_starts",
and the training pipeline captions each target frame with the prompt of its segment.
"caption", "motion" and "velocity_xy" describe the first segment.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from artv_jax.data import synthetic_shapes


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
  height: int = 32
  width: int = 32
  num_frames: int = 24
  num_train: int = 4000  # Clips in the train split.
  num_heldout: int = 400  # Clips in the heldout split.
  turn_probability: float = 0.5  # Train clips with a directional motion that turn once.
  # (lo, hi): train clips turn instead after every segment of U{lo..hi} frames.
  segment_frames: tuple[int, int] | None = None
  seed: int = 0
  # What `synthetic_shapes.sample_spec` draws from: sizes and speeds in frame fractions.
  size_range: tuple[float, float] = synthetic_shapes.SIZE_RANGE
  speed_range: tuple[float, float] = synthetic_shapes.SPEED_RANGE
  backgrounds: tuple[str, ...] = tuple(synthetic_shapes.BACKGROUNDS)
  walled: bool = False  # Directional motions stop at the frame's edge instead of wrapping.

  def distribution(self) -> dict:
    """The keyword arguments of `synthetic_shapes.generate_clip` that set the clip mix."""
    return dict(size_range=self.size_range, speed_range=self.speed_range,
                backgrounds=self.backgrounds, walled=self.walled)

  def turning(self, split: str) -> dict:
    """The keyword arguments of `generate_clip` that make `split`'s clips turn (train
    clips only: a held-out clip is one prompt)."""
    if split != "train":
      return {}
    return dict(turn_probability=self.turn_probability, segment_frames=self.segment_frames)


class ArtvSyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes moving on a textured background, captioned."""

  name = "artv_synthetic_shapes"
  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Train clips may turn: 'prompts' and 'prompt_starts'.",
                   "1.2.0": "Walled clips, and clips that turn every few frames; the demo "
                            "mix has both.",
                   "1.3.0": "The demo mix is 16x16 (16px_demo, was 32px_demo), its objects "
                            "larger and faster (2 pixels a frame), its turns every 3 to 8 "
                            "frames."}
  BUILDER_CONFIGS = [
      SyntheticShapesConfig(name="32px", description="32x32, 24 frames."),
      SyntheticShapesConfig(name="64px", height=64, width=64,
                            description="64x64, 24 frames."),
      # The demo's: a model trained in minutes learns motion it can see, so its objects are
      # large (a radius of 4 to 5 of 16 pixels), move a fixed 2 pixels a frame, and stand on
      # one background. They are walled: a wrapping object this size is split across an
      # edge in most frames, and a small UNet does not learn to join the halves, so it loses
      # the shape. Turning every few frames, they cross the frame and rest against its edges
      # in every clip.
      SyntheticShapesConfig(name="16px_demo", height=16, width=16, size_range=(0.25, 0.3),
                            speed_range=(0.125, 0.125), backgrounds=("gray",),
                            walled=True, turn_probability=0.0, segment_frames=(3, 8),
                            description="16x16, 24 frames; large walled objects, fixed "
                                        "speed, gray; a turn every 3 to 8 frames."),
  ]

  def __init__(self, **kwargs):
    super().__init__(**{"file_format": "array_record", **kwargs})  # Random access.

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    frames = (c.num_frames,)
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # Lossless: evaluation measures drift against these exact pixels.
            "frames": tfds.features.Tensor(
                shape=frames + (c.height, c.width, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB),
            "caption": tfds.features.Text(),
            "prompts": tfds.features.Sequence(tfds.features.Text()),
            "prompt_starts": tfds.features.Sequence(np.int32),
            "index": tfds.features.Scalar(dtype=np.int64),
            "color": tfds.features.ClassLabel(names=list(synthetic_shapes.COLORS)),
            "color_rgb": tfds.features.Tensor(shape=(3,), dtype=np.uint8),
            "shape": tfds.features.ClassLabel(names=list(synthetic_shapes.SHAPES)),
            "motion": tfds.features.ClassLabel(names=list(synthetic_shapes.MOTIONS)),
            "background": tfds.features.ClassLabel(
                names=list(synthetic_shapes.BACKGROUNDS)),
            "background_rgb": tfds.features.Tensor(shape=(3,), dtype=np.uint8),
            # Ground truth in pixels, (x right, y down).
            "center_xy": tfds.features.Tensor(shape=frames + (2,), dtype=np.float32),
            "size": tfds.features.Tensor(shape=frames, dtype=np.float32),
            # Pixels per frame; "bounce" reflects it at the edges.
            "velocity_xy": tfds.features.Tensor(shape=(2,), dtype=np.float32),
        }),
        homepage="https://arxiv.org/abs/2311.18834",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Generated, nothing to download.
    c = self.builder_config
    return {
        "train": self._generate_examples("train", c.num_train),
        "heldout": self._generate_examples("heldout", c.num_heldout),
    }

  def _generate_examples(self, split: str, num_clips: int):
    c = self.builder_config
    for index in range(num_clips):
      clip = synthetic_shapes.generate_clip(
          c.seed, split, index, num_frames=c.num_frames, height=c.height,
          width=c.width, **c.turning(split), **c.distribution())
      spec = clip.spec
      starts, prompts = zip(*spec.schedule)
      vx, vy = synthetic_shapes.velocity_xy(spec)
      yield index, {
          "frames": clip.frames,
          "caption": spec.caption,
          "prompts": list(prompts),
          "prompt_starts": np.asarray(starts, np.int32),
          "index": index,
          "color": spec.color,
          "color_rgb": synthetic_shapes.COLORS[spec.color],
          "shape": spec.shape,
          "motion": spec.motion,
          "background": spec.background,
          "background_rgb": synthetic_shapes.BACKGROUNDS[spec.background],
          "center_xy": clip.center_xy,
          "size": clip.size,
          "velocity_xy": [vx * c.width, vy * c.height],  # Pixels per frame.
      }


def builder_config(resolution: int, variant: str = "") -> SyntheticShapesConfig:
  """The config of clip mix `variant` ("" for the standard one) at square `resolution`:
  the predefined "{resolution}px[_{variant}]", or for a standard mix at another resolution a
  new config of that name."""
  name = f"{resolution}px_{variant}" if variant else f"{resolution}px"
  predefined = ArtvSyntheticShapes.builder_configs
  if name in predefined:
    return predefined[name]
  if variant:
    raise ValueError(f"synthetic_shapes has no variant {variant!r} at {resolution} px; "
                     f"its configs are {sorted(predefined)}")
  return SyntheticShapesConfig(name=name, height=resolution, width=resolution)
