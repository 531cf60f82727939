"""Feature statistics and the Fréchet distance against direct numpy/scipy computations."""
import numpy as np
import pytest
import scipy.linalg

from artv_jax.eval.frechet import FeatureStats, frechet_distance

DIM = 16


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
  """The textbook formula on two feature sets [N, D], with scipy's general sqrtm."""
  mean1, mean2 = a.mean(0), b.mean(0)
  cov1, cov2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(cov1 @ cov2).real
  return float(np.sum((mean1 - mean2)**2) + np.trace(cov1 + cov2 - 2 * covmean))


def _features(seed: int, count: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(DIM, DIM))  # Correlated features, not a diagonal covariance.
  return shift + scale * rng.normal(size=(count, DIM)) @ mixing


def _distance(a: np.ndarray, b: np.ndarray) -> float:
  sa, sb = FeatureStats.of(a), FeatureStats.of(b)
  return frechet_distance(sa.mean, sa.covariance, sb.mean, sb.covariance)


def test_matches_scipy_for_full_rank_covariances():
  a, b = _features(0, 200), _features(1, 300, scale=1.5, shift=0.3)

  np.testing.assert_allclose(_distance(a, b), _scipy_frechet(a, b), rtol=1e-8)


def test_matches_scipy_for_rank_deficient_covariances():
  # 5 vectors in 16 dimensions: each covariance has rank 4, in different subspaces.
  a, b = _features(2, 5), _features(3, 5, shift=1.0)
  assert np.linalg.matrix_rank(np.cov(a, rowvar=False)) == 4

  np.testing.assert_allclose(_distance(a, b), _scipy_frechet(a, b), rtol=1e-6)


def test_diagonal_gaussians_have_the_closed_form():
  rng = np.random.default_rng(4)
  mean1, mean2 = rng.normal(size=DIM), rng.normal(size=DIM)
  var1, var2 = rng.uniform(0, 2, DIM), rng.uniform(0, 2, DIM)
  var1[:3] = 0.0  # Singular.

  got = frechet_distance(mean1, np.diag(var1), mean2, np.diag(var2))

  want = np.sum((mean1 - mean2)**2) + np.sum((np.sqrt(var1) - np.sqrt(var2))**2)
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_identical_sets_are_at_distance_zero():
  a = _features(5, 50, scale=10.0, shift=100.0)

  assert _distance(a, a.copy()) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(a.T)))


def test_streaming_statistics_equal_batch_statistics():
  # A large offset makes E[xx^T] - mu mu^T lose every digit; the pairwise update does not.
  features = _features(6, 103, shift=1e6)
  stats = FeatureStats.empty(DIM)
  for start, stop in [(0, 1), (1, 40), (40, 40), (40, 103)]:  # Uneven, one empty, one single.
    stats = stats.update(features[start:stop])

  assert stats.count == 103
  np.testing.assert_allclose(stats.mean, features.mean(0), rtol=1e-14)
  np.testing.assert_allclose(stats.covariance, np.cov(features, rowvar=False), rtol=1e-9)


def test_statistics_survive_save_and_load(tmp_path):
  stats = FeatureStats.of(_features(7, 10))

  stats.save(tmp_path / "stats.npz")
  loaded = FeatureStats.load(tmp_path / "stats.npz")

  assert loaded.count == stats.count
  np.testing.assert_array_equal(loaded.mean, stats.mean)
  np.testing.assert_array_equal(loaded.scatter, stats.scatter)


def test_covariance_of_one_vector_is_an_error():
  with pytest.raises(ValueError, match="at least 2"):
    _ = FeatureStats.of(_features(8, 1)).covariance


def test_mismatched_shapes_are_an_error():
  with pytest.raises(ValueError, match="shapes"):
    frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
