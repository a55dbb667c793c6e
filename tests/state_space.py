"""A linear-Gaussian state-space model (LG-SSM), whose exact log-likelihood a Kalman filter computes, as a sequence
model that keeps the vae_jax contract (test code for tests/test_sequence_bounds.py).

    z_1 ~ N(m0, P0),   z_t = A z_{t-1} + N(0, Q),   x_t = C z_t + N(0, R)       (z_t `[J]`, x_t `[D]`)

`kalman_log_likelihood` is log p(x_1:length) by the prediction-error decomposition (float64 NumPy);
`joint_gaussian_log_density` is the same number from the joint Gaussian of x_1:length written out in full (an
independent check of the filter). `LinearGaussianSSM` samples z_1:T from a filtering proposal q(z_t | z_{t-1}, x_t)
between the transition prior (parameter `proposal_weight` 0) and the locally optimal proposal p(z_t | z_{t-1}, x_t)
(`proposal_weight` 1).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.stats

from vae_jax.contract import JointSamples, Params
from vae_jax.sequences import Sequence

LOG_2PI = math.log(2 * math.pi)


def _numpy_log_normal(residual: np.ndarray, cov: np.ndarray) -> float:
    """log N(residual; 0, cov) of a `[n]` residual and `[n, n]` covariance, by slogdet and solve."""
    _, log_det = np.linalg.slogdet(cov)
    return float(-0.5 * (residual @ np.linalg.solve(cov, residual) + log_det + len(residual) * LOG_2PI))


def kalman_log_likelihood(frames: np.ndarray, length: int, A: np.ndarray, C: np.ndarray, Q: np.ndarray,
                          R: np.ndarray, m0: np.ndarray, P0: np.ndarray) -> float:
    """Exact log p(x_1:length) of the LG-SSM: sum_t log N(x_t; C m_t|t-1, C P_t|t-1 C^T + R) (Kalman filter).

    Args:
        frames: `[T, D]` observations; only the first `length` count.
        length: number of real frames, 1 <= length <= T.
        A: `[J, J]` transition matrix.
        C: `[D, J]` emission matrix.
        Q: `[J, J]` transition noise covariance.
        R: `[D, D]` emission noise covariance.
        m0: `[J]` mean of z_1.
        P0: `[J, J]` covariance of z_1.

    Returns:
        log p(x_1:length) in nats (float64).
    """
    frames, A, C, Q, R, m0, P0 = (np.asarray(a, np.float64) for a in (frames, A, C, Q, R, m0, P0))
    mean, cov, total = m0, P0, 0.0
    for t in range(int(length)):
        if t > 0:  # predict: p(z_t | x_1:t-1)
            mean, cov = A @ mean, A @ cov @ A.T + Q
        innovation_cov = C @ cov @ C.T + R
        innovation = frames[t] - C @ mean
        total += _numpy_log_normal(innovation, innovation_cov)
        gain = cov @ C.T @ np.linalg.inv(innovation_cov)  # update: p(z_t | x_1:t)
        mean = mean + gain @ innovation
        cov = cov - gain @ innovation_cov @ gain.T
    return total


def joint_gaussian_log_density(frames: np.ndarray, length: int, A: np.ndarray, C: np.ndarray, Q: np.ndarray,
                               R: np.ndarray, m0: np.ndarray, P0: np.ndarray) -> float:
    """log p(x_1:length) from the joint Gaussian of x_1:n (n = length) built explicitly, no recursion.

    z_t = A^(t-1) m0 + sum_{s<=t} A^(t-s) e_s with independent e_1 ~ N(0, P0), e_s ~ N(0, Q): z = mu + M e, so
    Cov(z) = M blockdiag(P0, Q, ..., Q) M^T, and x = (I_n kron C) z + noise of covariance I_n kron R.
    Arguments as `kalman_log_likelihood`; returns log p(x_1:length) by scipy.stats.multivariate_normal.
    """
    frames, A, C, Q, R, m0, P0 = (np.asarray(a, np.float64) for a in (frames, A, C, Q, R, m0, P0))
    n, J = int(length), len(m0)
    powers = [np.linalg.matrix_power(A, k) for k in range(n)]
    mixing = np.zeros((n * J, n * J))
    for t in range(n):
        for s in range(t + 1):
            mixing[t * J:(t + 1) * J, s * J:(s + 1) * J] = powers[t - s]
    z_mean = np.concatenate([powers[t] @ m0 for t in range(n)])
    z_cov = mixing @ scipy.linalg.block_diag(P0, *[Q] * (n - 1)) @ mixing.T
    emission = np.kron(np.eye(n), C)
    x_cov = emission @ z_cov @ emission.T + np.kron(np.eye(n), R)
    return float(scipy.stats.multivariate_normal(emission @ z_mean, x_cov).logpdf(frames[:n].reshape(-1)))


def gaussian_log_density(value: jax.Array, mean: jax.Array, cov: jax.Array) -> jax.Array:
    """log N(value; mean, cov) of `[S, n]` values and means under one `[n, n]` covariance; `[S]`. The residuals are
    whitened by a matrix product with L^-1 (cov = L L^T), which batches better than a triangular solve."""
    chol = jnp.linalg.cholesky(cov)
    whitening = jax.scipy.linalg.solve_triangular(chol, jnp.eye(len(cov), dtype=cov.dtype), lower=True)
    whitened = (value - mean) @ whitening.T  # [S, n]
    return (-0.5 * jnp.sum(whitened ** 2, axis=-1) - jnp.sum(jnp.log(jnp.diag(chol)))
            - 0.5 * value.shape[-1] * LOG_2PI)


def condition_on_frame(mean: jax.Array, cov: jax.Array, frame: jax.Array, C: jax.Array,
                       R: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Kalman update of N(mean, cov) by x = C z + N(0, R): the Gaussian p(z | x), analytic.

    Args:
        mean: `[S, J]` means (one per sample).
        cov: `[J, J]` their common covariance.
        frame: `[D]` the observation x.
        C: `[D, J]` emission matrix.
        R: `[D, D]` emission noise covariance.

    Returns:
        The `[S, J]` posterior means and their common `[J, J]` covariance.
    """
    innovation_cov = C @ cov @ C.T + R
    gain = jnp.linalg.solve(innovation_cov, C @ cov).T  # cov C^T S^-1 (cov and S symmetric), [J, D]
    post_mean = mean + (frame - mean @ C.T) @ gain.T
    post_cov = cov - gain @ innovation_cov @ gain.T
    return post_mean, 0.5 * (post_cov + post_cov.T)


@dataclasses.dataclass(frozen=True)
class LinearGaussianSSM:
    """The LG-SSM as a vae_jax sequence model: `joint_samples` of a `Sequence` with a filtering proposal.

    q(z_t | z_{t-1}, x_t) = N((1 - w) a + w b, (1 - w) P + w B), where N(a, P) is the transition prior
    p(z_t | z_{t-1}) (N(m0, P0) at t = 1) and N(b, B) the locally optimal proposal p(z_t | z_{t-1}, x_t); w is
    the parameter `proposal_weight` (`[]`, in [0, 1]; `init` gives 1, the optimal proposal; 0 is the transition
    prior, a poor proposal). A parameter rather than a field, so one compiled program serves every proposal. Both
    Gaussians are exact, so every term is.

    Attributes:
        latent_dim: J.
    """

    latent_dim: int = 2

    def init(self, key: jax.Array, x: Sequence) -> Params:
        """Stable random dynamics and the optimal proposal.

        Args:
            key: the parameters' key.
            x: a `Sequence`; its `[T, D]` frames set D and the dtype.

        Returns:
            {"A": `[J, J]` a rotation scaled by 0.7 plus noise, "C": `[D, J]` standard normal, "log_q": `[J]` and
            "log_r": `[D]` log-diagonals of Q and R (about 0.5 I), "m0": `[J]` zeros, "log_p0": `[J]` zeros
            (P0 = I), "proposal_weight": `[]` 1}.
        """
        J, D, dtype = self.latent_dim, x.frames.shape[-1], x.frames.dtype
        keys = jax.random.split(key, 5)
        angle = 0.3 * jnp.arange(1, J + 1, dtype=dtype)[:, None] * jnp.arange(J, dtype=dtype)[None, :]
        rotation, _ = jnp.linalg.qr(jnp.cos(angle) + 0.5 * jax.random.normal(keys[0], (J, J), dtype))
        return {"A": 0.7 * rotation + 0.05 * jax.random.normal(keys[1], (J, J), dtype),
                "C": jax.random.normal(keys[2], (D, J), dtype),
                "log_q": math.log(0.5) + 0.3 * jax.random.normal(keys[3], (J,), dtype),
                "log_r": math.log(0.5) + 0.3 * jax.random.normal(keys[4], (D,), dtype),
                "m0": jnp.zeros(J, dtype), "log_p0": jnp.zeros(J, dtype), "proposal_weight": jnp.ones((), dtype)}

    def joint_samples(self, params: Params, x: Sequence, key: jax.Array, num_samples: int) -> JointSamples:
        """S joint samples z_1:T ~ q(z | x) in one `lax.scan` over the frames, each term summed over t < length.

        Args:
            params: the parameters (`init`).
            x: the `Sequence`: `[T, D]` frames and its `[]` length.
            key: step t draws its `[S, J]` noise from `fold_in(key, t)`, so padding changes nothing.
            num_samples: S.

        Returns:
            `JointSamples` of `[S]` sums over the real frames of log p(x_t | z_t), log p(z_t | z_t-1) and
            log q(z_t | z_t-1, x_t).
        """
        A, C, Q, R, P0 = matrices(params)
        frames, length = x.frames, jnp.asarray(x.length)
        w = params["proposal_weight"]

        def step(carry: tuple[jax.Array, jax.Array], inputs: tuple[jax.Array, jax.Array]):
            previous, totals = carry  # [S, J], [3, S]
            frame, t = inputs
            prior_mean = jnp.where(t == 0, params["m0"], previous @ A.T)
            prior_cov = jnp.where(t == 0, P0, Q)
            optimal_mean, optimal_cov = condition_on_frame(prior_mean, prior_cov, frame, C, R)
            q_mean = prior_mean + w * (optimal_mean - prior_mean)
            q_cov = (1 - w) * prior_cov + w * optimal_cov
            eps = jax.random.normal(jax.random.fold_in(key, t), previous.shape, previous.dtype)
            z = q_mean + eps @ jnp.linalg.cholesky(q_cov).T
            terms = jnp.stack([gaussian_log_density(jnp.broadcast_to(frame, (len(z), len(frame))), z @ C.T, R),
                               gaussian_log_density(z, prior_mean, prior_cov),
                               gaussian_log_density(z, q_mean, q_cov)])
            return (z, totals + jnp.where(t < length, terms, 0.0)), None

        dtype = frames.dtype
        start = (jnp.zeros((num_samples, self.latent_dim), dtype), jnp.zeros((3, num_samples), dtype))
        (_, totals), _ = jax.lax.scan(step, start, (frames, jnp.arange(len(frames), dtype=length.dtype)))
        return JointSamples(log_likelihood=totals[0], log_prior=totals[1], log_posterior=totals[2])


def matrices(params: Params) -> tuple[jax.Array, ...]:
    """(A `[J, J]`, C `[D, J]`, Q `[J, J]`, R `[D, D]`, P0 `[J, J]`) from the parameters (covariances from their
    log-diagonals)."""
    return (params["A"], params["C"], jnp.diag(jnp.exp(params["log_q"])), jnp.diag(jnp.exp(params["log_r"])),
            jnp.diag(jnp.exp(params["log_p0"])))


def simulate(params: Params, lengths: list[int], num_frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences drawn from the LG-SSM, padded to `num_frames` with large garbage (uniform in [-50, 50]), so a
    padding frame that counted would show.

    Args:
        params: the model's parameters.
        lengths: `[N]` the sequences' lengths, each <= num_frames.
        num_frames: T.
        seed: NumPy seed.

    Returns:
        `[N, T, D]` frames (float64) and `[N]` lengths (int32).
    """
    A, C, Q, R, P0 = (np.asarray(m, np.float64) for m in matrices(params))
    m0 = np.asarray(params["m0"], np.float64)
    rng = np.random.default_rng(seed)
    frames = rng.uniform(-50, 50, (len(lengths), num_frames, C.shape[0]))
    for i, length in enumerate(lengths):
        z = rng.multivariate_normal(m0, P0)
        for t in range(length):
            if t > 0:
                z = A @ z + rng.multivariate_normal(np.zeros(len(z)), Q)
            frames[i, t] = C @ z + rng.multivariate_normal(np.zeros(len(R)), R)
    return frames, np.asarray(lengths, np.int32)


def exact_log_likelihood(params: Params, frames: np.ndarray, length: int) -> float:
    """`kalman_log_likelihood` of a `[T, D]` sequence under the model's parameters."""
    A, C, Q, R, P0 = (np.asarray(m, np.float64) for m in matrices(params))
    return kalman_log_likelihood(frames, length, A, C, Q, R, np.asarray(params["m0"], np.float64), P0)
