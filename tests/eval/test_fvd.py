"""FVD through the converter CLI with a reference-layout I3D (tests/models/test_i3d.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artv_jax.eval import convert_feature_nets, fvd
from artv_jax.eval.convert_feature_nets import load_feature_net
from artv_jax.eval.frechet import FeatureStats
from tests.models import test_i3d

SIZE = 64  # Frames are already 64x64: preprocessing only rescales, as a 224 input would.


@pytest.fixture(scope="module")
def reference():
  return test_i3d.torch_i3d()


@pytest.fixture(scope="module")
def net(reference, tmp_path_factory):
  """The reference's state dict saved with torch.save, converted by the CLI, loaded."""
  src = tmp_path_factory.mktemp("i3d") / "i3d.pt"
  torch.save(reference.state_dict(), src)
  dst = src.parent / "converted"
  assert convert_feature_nets.main(["--kind=i3d", f"--src={src}", f"--dst={dst}"]) == 0
  return load_feature_net(dst, logits_pool=test_i3d.LOGITS_POOL)


def _videos(seed: int) -> np.ndarray:
  """uint8 clips [2, 8, 64, 64, 3]."""
  return np.random.default_rng(seed).integers(0, 256, test_i3d.CLIP_SHAPE, np.uint8)


def test_converted_i3d_features_match_reference(reference, net):
  videos = _videos(0)

  got = fvd.i3d_features(net, videos, size=SIZE)

  with torch.no_grad():  # The reference pipeline: [0, 255] -> [-1, 1], NCDHW.
    want = reference(torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1)
  np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4 * want.abs().max().item())


def test_fvd_is_zero_for_identical_sets(net):
  batches = [_videos(1), _videos(2)]

  real = fvd.video_statistics(net, batches, size=SIZE)
  same = fvd.video_statistics(net, [b.copy() for b in batches], size=SIZE)
  other = fvd.video_statistics(net, [_videos(3), _videos(4)], size=SIZE)

  assert fvd.fvd(real, same) == pytest.approx(0.0, abs=1e-6 * np.trace(real.covariance))
  assert fvd.fvd(real, other) > 1e-3 * np.trace(real.covariance)


def test_statistics_accumulate_over_batches(net):
  batches = [_videos(5), _videos(6)]

  stats = fvd.video_statistics(net, batches, size=SIZE)

  features = np.concatenate([fvd.i3d_features(net, b, size=SIZE) for b in batches])
  want = FeatureStats.of(features)
  np.testing.assert_allclose(stats.mean, want.mean, rtol=1e-12)
  np.testing.assert_allclose(stats.covariance, want.covariance, rtol=1e-9, atol=1e-12)


def test_preprocess_matches_torch_bilinear_resize_and_centre_crop():
  videos = np.random.default_rng(7).integers(0, 256, (1, 2, 12, 20, 3), np.uint8)

  got = np.asarray(fvd.preprocess(videos, size=24))

  # VideoGPT's recipe: shorter side to 24 (long side ceil(20 * 2) = 40), then centre crop.
  frames = torch.from_numpy(videos[0]).permute(0, 3, 1, 2).float() / 255
  frames = F.interpolate(frames, size=(24, 40), mode="bilinear", align_corners=False)
  want = (frames[:, :, :, 8:32].permute(0, 2, 3, 1).numpy() * 2 - 1)[None]
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_float_frames_in_minus_one_one_equal_their_uint8():
  videos = _videos(8)[:, :1, :4, :4]  # Preprocessing only: tiny.

  as_float = videos.astype(np.float32) / 127.5 - 1

  np.testing.assert_allclose(fvd.preprocess(as_float, size=4), fvd.preprocess(videos, size=4),
                             atol=1e-6)


def test_cli_names_a_file_without_i3d_weights(tmp_path):
  src = tmp_path / "other.pt"
  torch.save({"conv.weight": torch.zeros(2, 2)}, src)

  assert convert_feature_nets.main(["--kind=i3d", f"--src={src}",
                                    f"--dst={tmp_path / 'out'}"]) == 2
