"""Flax I3D against a PyTorch reference in the layout of ``pytorch_i3d.InceptionI3d``.

No pip package ships that network, so :class:`TorchInceptionI3d` below re-states it in torch
with the reference's module and parameter names and its forward pass: explicit per-input
'SAME' padding (``compute_pad``) with ``F.pad``, Conv3d without bias, BatchNorm3d(eps=1e-3),
zero-padded max pools, AvgPool3d before the 1x1x1 ``logits`` conv, spatial squeeze, then the
mean over time. Torch's NCDHW convolutions and explicit padding are an independent
formulation of what the Flax port does with NDHWC and ``padding='SAME'``.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from artv_jax.checkpoints.rename import CheckpointMismatchError
from artv_jax.eval.convert_feature_nets import i3d_variables
from artv_jax.models.i3d import InceptionI3d

# 8 frames at 64x64 leave a 1x2x2 Mixed_5c map; the head pools it whole, as (2, 7, 7) does for
# 16 frames at 224x224.
CLIP_SHAPE = (2, 8, 64, 64, 3)  # [B, T, H, W, C]
LOGITS_POOL = (1, 2, 2)
NUM_CLASSES = 10


def _same_pads(sizes, kernel, stride):
  """pytorch_i3d's compute_pad, as F.pad's (w_front, w_back, h_front, h_back, t_f, t_b)."""
  pads = []
  for size, k, s in zip(sizes, kernel, stride):
    total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    pads.append((total // 2, total - total // 2))
  return [p for pair in reversed(pads) for p in pair]


class TorchMaxPool3dSamePadding(nn.MaxPool3d):

  def forward(self, x):
    return super().forward(F.pad(x, _same_pads(x.shape[2:], self.kernel_size, self.stride)))


class TorchUnit3D(nn.Module):

  def __init__(self, in_channels, out_channels, kernel=(1, 1, 1), stride=(1, 1, 1),
               use_batch_norm=True, use_bias=False, relu=True):
    super().__init__()
    self.kernel, self.stride, self.relu = kernel, stride, relu
    self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=use_bias)
    self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01) if use_batch_norm else None

  def forward(self, x):
    x = self.conv3d(F.pad(x, _same_pads(x.shape[2:], self.kernel, self.stride)))
    if self.bn is not None:
      x = self.bn(x)
    return F.relu(x) if self.relu else x


class TorchInceptionModule(nn.Module):

  def __init__(self, in_channels, out):
    super().__init__()
    self.b0 = TorchUnit3D(in_channels, out[0])
    self.b1a = TorchUnit3D(in_channels, out[1])
    self.b1b = TorchUnit3D(out[1], out[2], (3, 3, 3))
    self.b2a = TorchUnit3D(in_channels, out[3])
    self.b2b = TorchUnit3D(out[3], out[4], (3, 3, 3))
    self.b3a = TorchMaxPool3dSamePadding((3, 3, 3), (1, 1, 1))
    self.b3b = TorchUnit3D(in_channels, out[5])

  def forward(self, x):
    return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                      self.b3b(self.b3a(x))], dim=1)


class TorchInceptionI3d(nn.Module):
  """pytorch_i3d.InceptionI3d's modules, names and forward (logits averaged over time)."""
  MIXED = [("Mixed_3b", 192, [64, 96, 128, 16, 32, 32]),
           ("Mixed_3c", 256, [128, 128, 192, 32, 96, 64]),
           ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
           ("Mixed_4b", 480, [192, 96, 208, 16, 48, 64]),
           ("Mixed_4c", 512, [160, 112, 224, 24, 64, 64]),
           ("Mixed_4d", 512, [128, 128, 256, 24, 64, 64]),
           ("Mixed_4e", 512, [112, 144, 288, 32, 64, 64]),
           ("Mixed_4f", 528, [256, 160, 320, 32, 128, 128]),
           ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
           ("Mixed_5b", 832, [256, 160, 320, 32, 128, 128]),
           ("Mixed_5c", 832, [384, 192, 384, 48, 128, 128])]

  def __init__(self, num_classes, avg_pool, in_channels=3):
    super().__init__()
    self.end_points = [  # Registered at top level, under these names, as in the reference.
        ("Conv3d_1a_7x7", TorchUnit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))),
        ("MaxPool3d_2a_3x3", TorchMaxPool3dSamePadding((1, 3, 3), (1, 2, 2))),
        ("Conv3d_2b_1x1", TorchUnit3D(64, 64)),
        ("Conv3d_2c_3x3", TorchUnit3D(64, 192, (3, 3, 3))),
        ("MaxPool3d_3a_3x3", TorchMaxPool3dSamePadding((1, 3, 3), (1, 2, 2))),
    ] + [(name, TorchMaxPool3dSamePadding(a, b) if name.startswith("MaxPool")
          else TorchInceptionModule(a, b)) for name, a, b in self.MIXED]
    for name, block in self.end_points:
      self.add_module(name, block)
    self.avg_pool = nn.AvgPool3d(avg_pool, stride=(1, 1, 1))
    self.logits = TorchUnit3D(1024, num_classes, use_batch_norm=False, use_bias=True,
                              relu=False)

  def extract_features(self, x):
    for _, block in self.end_points:
      x = block(x)
    return self.avg_pool(x)

  def forward(self, x):
    return self.logits(self.extract_features(x)).squeeze(3).squeeze(3).mean(dim=2)


def torch_i3d(num_classes: int = NUM_CLASSES, avg_pool=LOGITS_POOL,
              seed: int = 0) -> TorchInceptionI3d:
  """A reference I3D with every weight and running statistic off its initial value."""
  torch.manual_seed(seed)
  model = TorchInceptionI3d(num_classes, avg_pool).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm3d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  return model


def torch_state_dict(model: TorchInceptionI3d) -> dict:
  return {k: v.numpy() for k, v in model.state_dict().items()}


def clips(seed: int = 0, shape=CLIP_SHAPE) -> np.ndarray:
  """Random clips [B, T, H, W, 3] in [-1, 1]."""
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.fixture(scope="module")
def reference():
  """(torch model, Flax model, converted variables)."""
  model = torch_i3d()
  flax_model = InceptionI3d(num_classes=NUM_CLASSES, logits_pool=LOGITS_POOL)
  variables, _ = i3d_variables(torch_state_dict(model), flax_model)
  return model, flax_model, variables


def test_logits_match_reference(reference):
  model, flax_model, variables = reference
  videos = clips()

  with torch.no_grad():
    want = model(torch.from_numpy(videos).permute(0, 4, 1, 2, 3)).numpy()
  got = np.asarray(jax.jit(flax_model.apply)(variables, videos))

  assert got.shape == want.shape == (2, NUM_CLASSES)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_pool_features_match_reference(reference):
  model, flax_model, variables = reference
  videos = clips(1)

  with torch.no_grad():
    want = model.extract_features(torch.from_numpy(videos).permute(0, 4, 1, 2, 3))
  want = want.mean(dim=(2, 3, 4)).numpy()
  got = np.asarray(jax.jit(flax_model.apply, static_argnames="features")(
      variables, videos, features="pool"))

  assert got.shape == want.shape == (2, 1024)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_conversion_puts_running_statistics_in_batch_stats(reference):
  model, _, variables = reference

  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_4b"]["b1b"]["bn"]["var"],
                                model.Mixed_4b.b1b.bn.running_var.numpy())
  np.testing.assert_array_equal(
      variables["params"]["Conv3d_1a_7x7"]["conv3d"]["kernel"],
      model.Conv3d_1a_7x7.conv3d.weight.detach().numpy().transpose(2, 3, 4, 1, 0))


def test_conversion_names_a_missing_key():
  state_dict = torch_state_dict(torch_i3d())
  del state_dict["Mixed_5c.b3b.bn.running_var"]

  with pytest.raises(CheckpointMismatchError, match="Mixed_5c/b3b/bn/var"):
    i3d_variables(state_dict, InceptionI3d(num_classes=NUM_CLASSES, logits_pool=LOGITS_POOL))


def test_too_short_clip_is_an_error():
  model = InceptionI3d()  # The reference head: needs 9+ frames at 193+ pixels.

  with pytest.raises(ValueError, match="at least 9 frames"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 224, 224, 3)))


def test_wrong_channel_count_is_an_error():
  with pytest.raises(ValueError, match="channels"):
    jax.eval_shape(InceptionI3d().init, jax.random.key(0), jnp.zeros((1, 16, 224, 224, 1)))


def test_from_config_rejects_unknown_fields():
  with pytest.raises(ValueError, match="spatial_squeeze"):
    InceptionI3d.from_config({"num_classes": 400, "spatial_squeeze": True})
