"""Fréchet Video Distance (Unterthiner et al., 2018).

FVD fits a Gaussian to the I3D features of a set of real clips and one to those of generated
clips and reports the Fréchet distance between them (:mod:`artv_jax.eval.frechet`). Lower is
better; 0 means identical feature statistics.

Conventions, those of the FVD paper and of the common PyTorch re-implementations (VideoGPT,
StyleGAN-V): the I3D trained on Kinetics-400 (converted by ``convert_feature_nets --kind=i3d``),
clips of 16 frames, frames resized (shorter side, bilinear) and centre-cropped to 224x224 and
scaled to [-1, 1], features = the 400 logits (``features='pool'`` gives the 1024-d pooled
features before them instead). The value depends on the number of clips (the literature uses
2048 or more per set) and on these choices: compare only numbers computed the same way.

    net = load_feature_net(config.eval.i3d)                    # the converted I3D
    real = video_statistics(net, real_batches)                 # cache with real.save(...)
    fake = video_statistics(net, generated_batches)
    score = fvd(real, fake)
"""
import functools
from typing import Iterable

import jax
import numpy as np

from artv_jax.eval.convert_feature_nets import FeatureNet
from artv_jax.eval.frames import resize_center_crop, to_unit_interval
from artv_jax.eval.frechet import FeatureStats, frechet_distance

FVD_NUM_FRAMES = 16  # Clip length of the FVD paper.
I3D_SIZE = 224  # Input side of the I3D.


def preprocess(videos: jax.Array, size: int = I3D_SIZE) -> jax.Array:
  """The I3D's input: videos [B, T, H, W, 3] uint8 in [0, 255] or float in [-1, 1] ->
  [B, T, size, size, 3] float32 in [-1, 1], shorter side resized (bilinear), centre cropped."""
  return resize_center_crop(to_unit_interval(videos), size, "bilinear") * 2.0 - 1.0


@functools.partial(jax.jit, static_argnames=("model", "features", "size"))
def _features(model, variables, videos, features, size):
  return model.apply(variables, preprocess(videos, size), features=features)


def i3d_features(net: FeatureNet, videos: np.ndarray, *, features: str = "logits",
                 size: int = I3D_SIZE) -> np.ndarray:
  """I3D features of each clip.

  Args:
    net: the converted I3D (``load_feature_net``).
    videos: [B, T, H, W, 3] uint8 in [0, 255] or float in [-1, 1]; T = 16 for FVD. One
      compilation per distinct shape: keep the batch shape fixed.
    features: 'logits' ([B, 400] for Kinetics-400) or 'pool' ([B, 1024]).
    size: the side frames are resized to (224 for FVD).

  Returns:
    [B, D] float32.
  """
  if net.kind != "i3d":
    raise ValueError(f"FVD needs the I3D feature network, got a {net.kind!r} one; convert "
                     f"it with python -m artv_jax.eval.convert_feature_nets --kind=i3d")
  return np.asarray(_features(net.model, net.variables, videos, features, size))


def video_statistics(net: FeatureNet, batches: Iterable[np.ndarray], *,
                     features: str = "logits", size: int = I3D_SIZE) -> FeatureStats:
  """Statistics of the I3D features of all clips in ``batches`` (each [B, T, H, W, 3]),
  accumulated batch by batch."""
  stats = None
  for videos in batches:
    batch = FeatureStats.of(i3d_features(net, videos, features=features, size=size))
    stats = batch if stats is None else stats.merge(batch)
  if stats is None:
    raise ValueError("no videos: the batches were empty")
  return stats


def fvd(real: FeatureStats, generated: FeatureStats) -> float:
  """FVD between the feature statistics of real and generated clips."""
  return frechet_distance(real.mean, real.covariance, generated.mean, generated.covariance)
