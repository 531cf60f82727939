"""Feature statistics and the Fréchet distance between them (the math of FVD and FID).

The Fréchet distance between the Gaussians N(mu1, S1) and N(mu2, S2) fitted to two sets of
feature vectors is

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2).

The last term equals ``tr(sqrtm(S1 @ S2))`` of the usual formulation (the two matrices are
similar), but ``S1^1/2 S2 S1^1/2`` is symmetric positive semi-definite, so both square roots
come from ``eigh`` with tiny negative eigenvalues clipped: no complex parts, no inverse, and
rank-deficient covariances (fewer videos than feature dimensions) are exact rather than an
ill-conditioned ``sqrtm``.

Statistics accumulate in float64 as (count, mean, scatter) and merge with Chan et al.'s pairwise
update, so streaming over batches gives the batch statistics without forming
``E[x x^T] - mu mu^T``, which cancels catastrophically for large means.
"""
import dataclasses
import io

from etils import epath
import numpy as np

from artv_jax import paths


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Count, mean and scatter of a set of feature vectors; grows by :meth:`update`.

  Attributes:
    count: number of vectors seen.
    mean: [D] float64.
    scatter: [D, D] float64, the sum over vectors of (x - mean)(x - mean)^T.
  """
  count: int
  mean: np.ndarray
  scatter: np.ndarray

  @classmethod
  def empty(cls, dim: int) -> "FeatureStats":
    return cls(0, np.zeros(dim), np.zeros((dim, dim)))

  @classmethod
  def of(cls, features: np.ndarray) -> "FeatureStats":
    """Statistics of ``features`` [N, D]."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
      raise ValueError(f"features must be [N, D], got shape {features.shape}")
    if not len(features):
      return cls.empty(features.shape[1])
    mean = features.mean(axis=0)
    centred = features - mean
    return cls(len(features), mean, centred.T @ centred)

  def update(self, features: np.ndarray) -> "FeatureStats":
    """These statistics with the vectors ``features`` [N, D] added."""
    return self.merge(FeatureStats.of(features))

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """Statistics of the union of the two sets (Chan, Golub & LeVeque's pairwise update)."""
    if self.mean.shape != other.mean.shape:
      raise ValueError(f"cannot merge statistics of {self.mean.shape[0]}-d and "
                       f"{other.mean.shape[0]}-d features")
    count = self.count + other.count
    if not count:
      return self
    delta = other.mean - self.mean
    mean = self.mean + delta * (other.count / count)
    scatter = (self.scatter + other.scatter
               + np.outer(delta, delta) * (self.count * other.count / count))
    return FeatureStats(count, mean, scatter)

  @property
  def covariance(self) -> np.ndarray:
    """[D, D] unbiased sample covariance (``np.cov(features, rowvar=False)``)."""
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
    return self.scatter / (self.count - 1)

  def save(self, path: paths.PathLike) -> None:
    """Writes the statistics to an ``.npz`` file (local or a URI), e.g. to reuse a reference
    set's."""
    npz = io.BytesIO()
    np.savez(npz, count=self.count, mean=self.mean, scatter=self.scatter)
    paths.write_atomic(path, npz.getvalue())

  @classmethod
  def load(cls, path: paths.PathLike) -> "FeatureStats":
    with np.load(io.BytesIO(epath.Path(path).read_bytes())) as data:
      return cls(int(data["count"]), data["mean"], data["scatter"])


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray,
                     cov2: np.ndarray) -> float:
  """Squared Fréchet distance between N(mean1, cov1) and N(mean2, cov2).

  Args:
    mean1, mean2: [D].
    cov1, cov2: [D, D] symmetric positive semi-definite (rank-deficient is fine).

  Returns:
    d^2 >= 0 (rounding below zero is clipped; identical inputs give ~0).
  """
  mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  dim = mean1.shape[-1]
  if not mean1.shape == mean2.shape == (dim,) or not cov1.shape == cov2.shape == (dim, dim):
    raise ValueError(f"shapes do not fit: means {mean1.shape}, {mean2.shape}; covariances "
                     f"{cov1.shape}, {cov2.shape}")
  sqrt1 = _psd_sqrt(cov1)
  trace_sqrt = np.sqrt(_psd_eigenvalues(sqrt1 @ cov2 @ sqrt1)).sum()
  diff = mean1 - mean2
  return max(float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt), 0.0)


def _psd_eigenvalues(matrix: np.ndarray) -> np.ndarray:
  """Eigenvalues of a symmetric PSD matrix, symmetrised and clipped at 0 against rounding."""
  return np.clip(np.linalg.eigvalsh((matrix + matrix.T) / 2), 0.0, None)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """The symmetric PSD square root of a symmetric PSD matrix."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
