"""How close a model's samples come to the data, measured on features of a classifier (`vae_jax.features`):

- FID (Heusel et al., 2017): the Fréchet distance between Gaussians fitted to the two sets of features,
  ||mu_r - mu_g||^2 + tr(C_r + C_g - 2 (C_r C_g)^(1/2)).
- KID (Bińkowski et al., 2018): the squared MMD under the cubic polynomial kernel k(a, b) = (a.b / F + 1)^3, the
  unbiased U-statistic over all pairs, with its two-sample jackknife standard error.
- Precision and recall (Kynkäänniemi et al., 2019): the fraction of generated samples inside the real data's manifold
  (the union of balls around each real point reaching its k-th nearest real neighbour), and of real points inside
  the generated one; k = 3 as in the paper.
- Density and coverage (Naeem et al., 2020): how many real balls each generated sample falls in, over k (1 on
  average when the two distributions agree), and the fraction of real balls holding any generated sample; k = 5
  as in the paper.

Everything is computed in float64 with NumPy, in blocks of rows, so that 10,000 x 10,000 distances never sit in
memory at once. `real` and `fake` are `[N, F]` and `[M, F]` features throughout.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

PRECISION_RECALL_K = 3  # Kynkäänniemi et al. (2019)
DENSITY_COVERAGE_K = 5  # Naeem et al. (2020)
BLOCK_ROWS = 1000  # rows of a distance or kernel matrix computed at once (memory only)
MEASURES = ("fid", "kid", "kid_stderr", "precision", "recall", "density", "coverage")


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean `[F]` and the unbiased covariance `[F, F]` of `[N, F]` features, in float64."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root `[F, F]` of a symmetric positive semi-definite `[F, F]` matrix, by its
    eigendecomposition (eigenvalues that rounding made slightly negative count as 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(mean_a, cov_a) and N(mean_b, cov_b) (`[F]`, `[F, F]`).

    tr (C_a C_b)^(1/2) is taken as tr (C_a^(1/2) C_b C_a^(1/2))^(1/2), the same number (the two products are
    similar) from a symmetric matrix, whose square root `sqrtm_psd` takes exactly.
    """
    root_a = sqrtm_psd(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(cross, 0.0, None)).sum()
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between `[N, F]` and `[M, F]` features (in squared feature units)."""
    return frechet_distance(*gaussian_statistics(real), *gaussian_statistics(fake))


def _blocks(rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """`(start, rows[start:start + BLOCK_ROWS])` over `[N, F]` rows."""
    for start in range(0, len(rows), BLOCK_ROWS):
        yield start, rows[start:start + BLOCK_ROWS]


def _kernel_sums(a: np.ndarray, b: np.ndarray, same: bool) -> np.ndarray:
    """`[N]`: for each row a_i of `[N, F]`, sum_j k(a_i, b_j) over the `[M, F]` rows of `b` (j != i when `same`)."""
    sums = np.empty(len(a))
    for start, block in _blocks(a):
        kernel = (block @ b.T / a.shape[1] + 1.0) ** 3
        if same:
            kernel[np.arange(len(block)), start + np.arange(len(block))] = 0.0
        sums[start:start + len(block)] = kernel.sum(axis=1)
    return sums


def kid(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """KID between `[N, F]` and `[M, F]` features (N, M >= 3): the unbiased estimate of MMD^2 and its standard
    error, from the delete-one jackknife of a two-sample U-statistic (Arvesen, 1969).

    MMD^2_u = S_rr / (N (N-1)) + S_gg / (M (M-1)) - 2 S_rg / (N M), with S the kernel sums over distinct pairs.
    Deleting real point i takes 2 r_i from S_rr and c_i from S_rg (r_i, c_i its row sums), so every leave-one-out
    estimate comes from the row sums, and the variance is (N-1)/N sum_i (t_-i - mean)^2 plus the same over fakes.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    n, m = len(real), len(fake)
    if min(n, m) < 3:
        raise ValueError(f"KID needs at least 3 samples on each side, got {n} and {m}")
    row_rr, row_gg = _kernel_sums(real, real, True), _kernel_sums(fake, fake, True)
    row_rg, row_gr = _kernel_sums(real, fake, False), _kernel_sums(fake, real, False)
    s_rr, s_gg, s_rg = row_rr.sum(), row_gg.sum(), row_rg.sum()

    def estimate(s_rr: np.ndarray, s_gg: np.ndarray, s_rg: np.ndarray, n: int, m: int) -> np.ndarray:
        return s_rr / (n * (n - 1)) + s_gg / (m * (m - 1)) - 2.0 * s_rg / (n * m)

    without_real = estimate(s_rr - 2.0 * row_rr, s_gg, s_rg - row_rg, n - 1, m)
    without_fake = estimate(s_rr, s_gg - 2.0 * row_gg, s_rg - row_gr, n, m - 1)
    variance = ((n - 1) / n * np.sum((without_real - without_real.mean()) ** 2)
                + (m - 1) / m * np.sum((without_fake - without_fake.mean()) ** 2))
    return float(estimate(s_rr, s_gg, s_rg, n, m)), float(np.sqrt(variance))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`[N, M]` squared Euclidean distances between the rows of `[N, F]` and `[M, F]` (never below 0)."""
    squared = np.sum(a**2, axis=1)[:, None] + np.sum(b**2, axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(squared, 0.0)


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """`[N]`: each row's squared distance to its k-th nearest other row of `[N, F]` features (N > k)."""
    if not 0 < k < len(features):
        raise ValueError(f"k-nearest-neighbour radii need 0 < k < N, got k={k} for N={len(features)}")
    radii = np.empty(len(features))
    for start, block in _blocks(features):
        squared = _squared_distances(block, features)
        radii[start:start + len(block)] = np.partition(squared, k, axis=1)[:, k]  # column 0: the row itself
    return radii


def _balls_holding(centres: np.ndarray, radii: np.ndarray, points: np.ndarray) -> Iterator[np.ndarray]:
    """Per block of `[N, F]` centres with squared radii `[N]`: `[B, M]`, True where point j of `[M, F]` lies in
    centre i's ball."""
    for start, block in _blocks(centres):
        yield _squared_distances(block, points) <= radii[start:start + len(block), None]


def _fraction_inside(centres: np.ndarray, radii: np.ndarray, points: np.ndarray) -> float:
    """The fraction of `[M, F]` points inside any ball of `[N, F]` centres with squared radii `[N]`."""
    inside = np.zeros(len(points), bool)
    for block in _balls_holding(centres, radii, points):
        inside |= block.any(axis=0)
    return float(inside.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PRECISION_RECALL_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of `[M, F]` fakes against `[N, F]` real features."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    return (_fraction_inside(real, knn_radii(real, k), fake), _fraction_inside(fake, knn_radii(fake, k), real))


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = DENSITY_COVERAGE_K) -> tuple[float, float]:
    """Density and coverage (Naeem et al., 2020) of `[M, F]` fakes against `[N, F]` real features:
    density = (1 / kM) sum_j #{i : fake_j in ball_i}, coverage = (1 / N) #{i : ball_i holds a fake}."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    held, covered = 0, []
    for block in _balls_holding(real, knn_radii(real, k), fake):
        held += int(block.sum())
        covered.append(block.any(axis=1))
    return held / (k * len(fake)), float(np.concatenate(covered).mean())


def sample_quality(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """All of `MEASURES` for `[M, F]` fake against `[N, F]` real features."""
    kid_value, kid_stderr = kid(real, fake)
    precision, recall = precision_recall(real, fake)
    density, coverage = density_coverage(real, fake)
    return {"fid": fid(real, fake), "kid": kid_value, "kid_stderr": kid_stderr, "precision": precision,
            "recall": recall, "density": density, "coverage": coverage}
