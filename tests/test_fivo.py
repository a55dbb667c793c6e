"""FIVO, the particle-filter bound of `vae_jax.particles`: its pieces against closed forms, one particle that is
the ELBO's own sample, padding that changes nothing, and, on a linear-Gaussian state-space model whose exact
log p(x) a Kalman filter gives, an estimate exp(FIVO) that is unbiased, a bound below log p(x) that tightens with K,
and, on a long sequence, a bound tighter than the importance-weighted one with the same K."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.state_space import kalman_log_likelihood
from tests.test_recurrent import KEYS, LATENT, MODELS, _init, _rolls
from vae_jax import distributions, evaluate, particles, recurrent
from vae_jax.sequences import Sequence

LATENT_MODELS = ("vrnn", "srnn", "dmm")


@pytest.fixture(autouse=True)
def float64():
    """Every number here in float64 (the models' parameters are initialized in float32, then cast)."""
    with jax.enable_x64(True):
        yield


def test_effective_sample_size_is_the_closed_form():
    weights = np.array([0.5, 0.1, 2.0, 0.0, 1.4])
    expected = weights.sum() ** 2 / (weights ** 2).sum()
    with np.errstate(divide="ignore"):
        got = particles.effective_sample_size(jnp.log(jnp.asarray(weights, jnp.float64)))
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)
    assert float(particles.effective_sample_size(jnp.zeros(7))) == pytest.approx(7.0, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_systematic_resampling_picks_each_particle_k_w_times_rounded(seed):
    """Particle k is picked floor(K w_k) or ceil(K w_k) times (the property that makes it low-variance)."""
    rng = np.random.default_rng(seed)
    weights = rng.gamma(0.5, size=16)
    indices = particles.systematic_indices(jax.random.key(seed), jnp.log(jnp.asarray(weights)))
    counts = np.bincount(np.asarray(indices), minlength=16)
    expected = 16 * weights / weights.sum()
    assert counts.sum() == 16
    assert np.all(counts >= np.floor(expected - 1e-6)) and np.all(counts <= np.ceil(expected + 1e-6))


def test_without_resampling_the_estimate_is_the_importance_weighted_bound():
    """Increments that never let the ESS fall below K/2 leave log (1/K) sum_k exp(sum_t increments_k)."""
    increments = jnp.asarray(np.random.default_rng(0).normal(scale=0.1, size=(6, 8)))  # [T, K]
    carry = particles.start(jnp.zeros((8, 2)), jnp.float64)
    for t in range(6):
        carry = particles.step(carry, carry[0], increments[t], jax.random.key(t), jnp.asarray(1.0))
        assert float(particles.effective_sample_size(carry[1])) > 4  # no resampling took place
    totals = np.asarray(increments).sum(axis=0)
    expected = np.log(np.mean(np.exp(totals - totals.max()))) + totals.max()
    np.testing.assert_allclose(float(particles.finish(carry)), expected, rtol=1e-12)


def test_a_resampling_step_banks_the_mean_weight_and_restarts_the_weights():
    state = jnp.arange(4.0)[:, None]
    increments = jnp.log(jnp.asarray([1e-6, 1e-6, 1e-6, 8.0]))  # ESS about 1 < K/2
    state, log_weights, log_estimate = particles.step(particles.start(state, jnp.float64), state, increments,
                                                      jax.random.key(0), jnp.asarray(1.0))
    np.testing.assert_allclose(float(log_estimate), math.log((8.0 + 3e-6) / 4), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(log_weights), 0.0)
    np.testing.assert_array_equal(np.asarray(state)[:, 0], 3.0)  # all descend from the one heavy particle
    # at padding (mask 0) nothing is resampled, whatever the weights
    _, kept, banked = particles.step(particles.start(state, jnp.float64), state, increments, jax.random.key(0),
                                     jnp.asarray(0.0))
    np.testing.assert_allclose(np.asarray(kept), np.asarray(increments))
    assert float(banked) == 0.0


@pytest.mark.parametrize("name", LATENT_MODELS)
def test_one_particle_is_the_elbo_of_the_same_noise(name):
    """With K = 1 nothing is resampled: FIVO is log p(x, z) - log q(z | x) of the sample drawn by the same noise."""
    model, frames = MODELS[name], _rolls(1, 9)
    x, key = Sequence(jnp.asarray(frames), jnp.asarray(9)), jax.random.key(3)
    params = _init(model, frames)
    bound = model.apply(params, x, key, 1, method=type(model).fivo_bound)
    eps = recurrent.step_noise(jax.random.fold_in(key, 0), 9, 1, LATENT, jnp.float64)
    joint = model.apply(params, x, eps, method=type(model).joint_samples_from_noise)
    np.testing.assert_allclose(float(bound), float(joint.log_likelihood[0] + joint.log_prior[0]
                                                   - joint.log_posterior[0]), rtol=1e-12)


@pytest.mark.parametrize("name", LATENT_MODELS)
def test_padding_changes_nothing(name):
    """A sequence alone and the same sequence padded with 5 frames of ones give the same FIVO estimate."""
    model, frames = MODELS[name], _rolls(2, 10)
    padded = np.concatenate([frames, np.ones((5, KEYS), np.uint8)])
    params = _init(model, frames)
    bounds = [float(model.apply(params, Sequence(jnp.asarray(f), jnp.asarray(10)), jax.random.key(4), 16,
                                method=type(model).fivo_bound)) for f in (frames, padded)]
    np.testing.assert_allclose(bounds[0], bounds[1], rtol=1e-12)


def test_evaluate_fivo_keys_each_sequence_by_its_index():
    """Sequence i's bound is `fivo_bound` with the noise key of `fold_in(key, i)`, whatever the batch size."""
    model, params = MODELS["vrnn"], _init(MODELS["vrnn"], _rolls(0, 8))
    frames = np.stack([_rolls(seed, 8) for seed in range(5)])
    lengths = np.array([8, 3, 5, 8, 1])
    split = Sequence(jnp.asarray(frames), jnp.asarray(lengths))
    by_batch = [evaluate.evaluate_fivo(model, params, split, jax.random.key(7), num_particles=4, batch_size=b)
                for b in (1, 2, 5)]
    i = 3
    noise_key = jax.random.split(jax.random.fold_in(jax.random.key(7), i))[1]
    alone = model.apply(params, Sequence(jnp.asarray(frames[i]), jnp.asarray(lengths[i])), noise_key, 4,
                        method=type(model).fivo_bound)
    for bounds in by_batch[1:]:
        np.testing.assert_allclose(np.asarray(bounds), np.asarray(by_batch[0]), rtol=1e-12)
    np.testing.assert_allclose(float(by_batch[0][i]), float(alone), rtol=1e-12)


# A linear-Gaussian state-space model with the bootstrap proposal (q = the transition prior), through the same
# particle filter: z_0 = 0, z_t = A z_{t-1} + N(0, diag q), x_t = C z_t + N(0, diag r).
A = np.array([[0.8, 0.3], [-0.3, 0.8]])
C = np.array([[1.0, 0.5], [-0.4, 1.2], [0.3, -0.7]])
Q, R = np.array([0.5, 0.3]), np.array([0.4, 0.3, 0.5])


class _BootstrapStep(nn.Module):
    """One step for K particles: `(z_prev [K, J], (x_t [D], eps_t [K, J], mask_t)) -> (z_t, (StepTerms, None))`."""

    @nn.compact
    def __call__(self, z_previous, inputs):
        frame, eps, mask = inputs
        mean, logvar = z_previous @ A.T, jnp.broadcast_to(jnp.log(Q), z_previous.shape)
        z = distributions.reparameterize(mean, logvar, eps)
        log_prior = distributions.gaussian_log_prob(z, mean, logvar)
        log_likelihood = distributions.gaussian_log_prob(frame, z @ C.T, jnp.log(R))
        terms = recurrent.StepTerms(log_likelihood * mask, log_prior * mask, log_prior * mask, jnp.zeros_like(z))
        return jnp.where(mask > 0, z, z_previous), (terms, None)


class _BootstrapFilter(nn.Module):
    @nn.compact
    def __call__(self, frames, eps, key):
        mask = jnp.ones(frames.shape[0], frames.dtype)
        return particles.filter_steps(_BootstrapStep(), jnp.zeros(eps.shape[1:], frames.dtype), (frames, eps, mask),
                                      key)


def _simulate(num_frames: int) -> np.ndarray:
    rng, z, frames = np.random.default_rng(0), np.zeros(2), []
    for _ in range(num_frames):
        z = A @ z + rng.normal(size=2) * np.sqrt(Q)
        frames.append(C @ z + rng.normal(size=3) * np.sqrt(R))
    return np.array(frames)


def _bounds(frames: np.ndarray, num_particles: int, replicates: int) -> tuple[np.ndarray, np.ndarray]:
    """`[replicates]` FIVO estimates and the importance-weighted bounds of the same particles' noise."""
    filter_model = _BootstrapFilter()

    def one(key):
        eps = jax.random.normal(jax.random.fold_in(key, 0), (len(frames), num_particles, 2), jnp.float64)
        fivo = filter_model.apply({}, jnp.asarray(frames), eps, jax.random.fold_in(key, 1))
        z, log_weights = jnp.zeros((num_particles, 2)), jnp.zeros(num_particles)
        for t in range(len(frames)):  # the same particles without resampling
            z = z @ A.T + jnp.sqrt(Q) * eps[t]
            log_weights += distributions.gaussian_log_prob(jnp.asarray(frames[t]), z @ C.T, jnp.log(R))
        return fivo, jax.nn.logsumexp(log_weights) - math.log(num_particles)

    fivo, iwae = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), replicates))
    return np.asarray(fivo), np.asarray(iwae)


def _exact(frames: np.ndarray) -> float:
    return kalman_log_likelihood(frames, len(frames), A, C, np.diag(Q), np.diag(R), np.zeros(2), np.diag(Q))


def test_exp_fivo_is_an_unbiased_estimate_of_the_likelihood():
    """E[p_hat(x)] = p(x): the mean of p_hat / p over 2,000 filters is 1 within 4 standard errors; and
    E[log p_hat] < log p(x) (Jensen's gap)."""
    frames = _simulate(20)
    fivo, _ = _bounds(frames, 8, 2000)
    ratio = np.exp(fivo - _exact(frames))
    assert abs(ratio.mean() - 1) < 4 * ratio.std(ddof=1) / math.sqrt(len(ratio)), ratio.mean()
    assert fivo.mean() + 3 * fivo.std(ddof=1) / math.sqrt(len(fivo)) < _exact(frames)


def test_fivo_tightens_with_k_and_beats_the_importance_weighted_bound_on_a_long_sequence():
    """On 60 steps the bootstrap proposal's weights degenerate: without resampling the K = 16 bound stays tens of
    nats below log p(x); with it FIVO is within a few nats, and closer with K = 64 than with K = 4."""
    frames = _simulate(60)
    exact = _exact(frames)
    gaps = {}
    for k in (4, 16, 64):
        fivo, iwae = _bounds(frames, k, 200)
        gaps[k] = exact - fivo.mean()
        if k == 16:
            assert exact - iwae.mean() > 3 * gaps[k], (exact - iwae.mean(), gaps[k])
    assert 0 < gaps[64] < gaps[16] < gaps[4], gaps
