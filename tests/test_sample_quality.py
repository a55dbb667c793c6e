"""The sample-quality measures against closed forms, SciPy and direct (unblocked) computations.

Each check was made to fail once by a mutation of `vae_jax.sample_quality` (listed in the commit that added it)."""

import numpy as np
import pytest
import scipy.linalg

from vae_jax import sample_quality as sq


def _spd(rng: np.random.Generator, size: int, rank: int | None = None) -> np.ndarray:
    factor = rng.normal(size=(size, rank or size))
    return factor @ factor.T / size + (0 if rank else 0.1 * np.eye(size))


@pytest.mark.parametrize("rank", [None, 3])
def test_sqrtm_psd_equals_scipy_in_float64(rank):
    matrix = _spd(np.random.default_rng(0), 12, rank)
    root = sq.sqrtm_psd(matrix)
    np.testing.assert_allclose(root, scipy.linalg.sqrtm(matrix).real, atol=1e-7 if rank else 1e-12)
    np.testing.assert_allclose(root @ root, matrix, atol=1e-12)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(1)
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    std_a, std_b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    diagonal = sq.frechet_distance(mean_a, np.diag(std_a**2), mean_b, np.diag(std_b**2))
    assert diagonal == pytest.approx(np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2), rel=1e-12)
    cov_a, cov_b = _spd(rng, 6), _spd(rng, 6)  # not commuting: the general formula with SciPy's root of C_a C_b
    scipy_value = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b)
                   - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real)
    assert sq.frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(scipy_value, rel=1e-10)
    assert sq.frechet_distance(mean_a, cov_a, mean_a, cov_a) == pytest.approx(0.0, abs=1e-10)


def test_gaussian_statistics_are_the_mean_and_unbiased_covariance():
    mean, cov = sq.gaussian_statistics(np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]]))
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(cov, [[4.0, 3.0], [3.0, 3.0]])  # sums of products over N - 1 = 2


def test_fid_of_gaussian_features_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    mean_a, mean_b, cov_a, cov_b = rng.normal(size=4), rng.normal(size=4), _spd(rng, 4), _spd(rng, 4)
    real = rng.multivariate_normal(mean_a, cov_a, size=200_000)
    fake = rng.multivariate_normal(mean_b, cov_b, size=200_000)
    assert sq.fid(real, fake) == pytest.approx(sq.frechet_distance(mean_a, cov_a, mean_b, cov_b), rel=0.02)


def _direct_kid(real: np.ndarray, fake: np.ndarray) -> float:
    kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
    k_rr, k_gg, k_rg = kernel(real, real), kernel(fake, fake), kernel(real, fake)
    n, m = len(real), len(fake)
    return ((k_rr.sum() - np.trace(k_rr)) / (n * (n - 1)) + (k_gg.sum() - np.trace(k_gg)) / (m * (m - 1))
            - 2 * k_rg.mean())


def test_kid_and_its_jackknife_equal_direct_computations(monkeypatch):
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(30, 5)), rng.normal(0.3, 1.2, size=(25, 5))
    monkeypatch.setattr(sq, "BLOCK_ROWS", 7)  # several blocks
    value, stderr = sq.kid(real, fake)
    assert value == pytest.approx(_direct_kid(real, fake), rel=1e-12)
    leave_real = np.array([_direct_kid(np.delete(real, i, 0), fake) for i in range(len(real))])
    leave_fake = np.array([_direct_kid(real, np.delete(fake, j, 0)) for j in range(len(fake))])
    variance = (29 / 30 * np.sum((leave_real - leave_real.mean()) ** 2)
                + 24 / 25 * np.sum((leave_fake - leave_fake.mean()) ** 2))
    assert stderr == pytest.approx(np.sqrt(variance), rel=1e-9)


def test_kid_is_unbiased_and_its_stderr_calibrated():
    rng = np.random.default_rng(4)
    same = np.array([sq.kid(rng.normal(size=(20, 4)), rng.normal(size=(20, 4))) for _ in range(400)])
    assert abs(same[:, 0].mean()) < 3 * same[:, 0].std() / np.sqrt(len(same))  # a V-statistic is biased upward
    shifted = np.array([sq.kid(rng.normal(size=(20, 4)), rng.normal(0.5, 1, size=(20, 4))) for _ in range(400)])
    large, _ = sq.kid(rng.normal(size=(3000, 4)), rng.normal(0.5, 1, size=(3000, 4)))
    assert shifted[:, 0].mean() == pytest.approx(large, abs=3 * shifted[:, 0].std() / np.sqrt(len(shifted)))
    assert shifted[:, 1].mean() == pytest.approx(shifted[:, 0].std(), rel=0.25)


def test_precision_recall_on_known_configurations():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(2000, 2))
    assert sq.precision_recall(real, real.copy()) == (1.0, 1.0)
    assert sq.precision_recall(real, real + 100.0) == (0.0, 0.0)
    precision, recall = sq.precision_recall(real, rng.normal(size=(2000, 2)))
    assert precision > 0.95 and recall > 0.95
    collapsed = rng.normal(scale=0.2, size=(2000, 2))  # every fake in the bulk, most of the data unreached
    precision, recall = sq.precision_recall(real, collapsed)
    assert precision > 0.95 and recall < 0.3


def test_density_and_coverage_have_their_expected_values_on_one_distribution():
    """Naeem et al. (2020): for fakes and reals of one distribution E[density] = 1 and
    E[coverage] = 1 - prod_{j<k} (N - 1 - j) / (N + M - 1 - j), exactly."""
    rng = np.random.default_rng(6)
    n = m = 300
    values = np.array([sq.density_coverage(rng.normal(size=(n, 3)), rng.normal(size=(m, 3))) for _ in range(60)])
    expected_coverage = 1 - np.prod([(n - 1 - j) / (n + m - 1 - j) for j in range(sq.DENSITY_COVERAGE_K)])
    for column, expected in zip(values.T, (1.0, expected_coverage)):
        assert column.mean() == pytest.approx(expected, abs=3 * column.std() / np.sqrt(len(column)) + 1e-3)


def test_the_measures_do_not_depend_on_the_blocks(monkeypatch):
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(230, 6)), rng.normal(0.2, 1, size=(170, 6))
    whole = sq.sample_quality(real, fake)
    monkeypatch.setattr(sq, "BLOCK_ROWS", 64)
    assert sq.sample_quality(real, fake) == pytest.approx(whole, rel=1e-12)
    assert tuple(whole) == sq.MEASURES


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(ValueError, match="at least 3 samples"):
        sq.kid(np.zeros((2, 4)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="0 < k < N"):
        sq.knn_radii(np.zeros((3, 4)), 3)
