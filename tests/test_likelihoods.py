"""Likelihoods: the 256 levels' probabilities sum to 1, the edge levels take the tails, extreme parameters stay
finite, values equal an independent NumPy transcription of PixelCNN++'s loss, draws follow the probabilities, a tiny
VAE learns with the mixture, and `Bernoulli` is where it was."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import expit, logsumexp

import vae_jax
from vae_jax import contract, likelihoods, models, objective

LEVELS = np.arange(256.0)


def pixelcnn_reference(x: np.ndarray, params: np.ndarray) -> np.ndarray:
    """log p(x) `[N]` of images `x [N, H, W, C]` (levels 0..255, C = 1 or 3) under PixelCNN++'s mixture with
    parameters `params [N, H, W, 10 K]` (C = 3; its `l`) or `[N, H, W, 3 K]` (C = 1), in float64: a line-by-line
    NumPy transcription of `discretized_mix_logistic_loss` (openai/pixel-cnn, nn.py; Salimans et al., 2017,
    eq. 2-3), negated and summed per image, written apart from vae_jax."""
    channels = x.shape[-1]
    x = x / 127.5 - 1.0
    nr_mix = params.shape[-1] // (10 if channels == 3 else 3)
    logit_probs = params[..., :nr_mix]
    params = params[..., nr_mix:].reshape(*x.shape, -1)
    means = params[..., :nr_mix]
    log_scales = np.maximum(params[..., nr_mix:2 * nr_mix], -7.0)
    x = x[..., None] + np.zeros((*x.shape, nr_mix))
    if channels == 3:
        coeffs = np.tanh(params[..., 2 * nr_mix:3 * nr_mix])
        m2 = means[..., 1, :] + coeffs[..., 0, :] * x[..., 0, :]
        m3 = means[..., 2, :] + coeffs[..., 1, :] * x[..., 0, :] + coeffs[..., 2, :] * x[..., 1, :]
        means = np.stack([means[..., 0, :], m2, m3], axis=-2)
    centered_x = x - means
    inv_stdv = np.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1.0 / 255.0)
    cdf_plus = expit(plus_in)
    min_in = inv_stdv * (centered_x - 1.0 / 255.0)
    cdf_min = expit(min_in)
    log_cdf_plus = plus_in - np.logaddexp(0.0, plus_in)
    log_one_minus_cdf_min = -np.logaddexp(0.0, min_in)
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered_x
    log_pdf_mid = mid_in - log_scales - 2.0 * np.logaddexp(0.0, mid_in)
    log_probs = np.where(x < -0.999, log_cdf_plus, np.where(
        x > 0.999, log_one_minus_cdf_min,
        np.where(cdf_delta > 1e-5, np.log(np.maximum(cdf_delta, 1e-12)), log_pdf_mid - np.log(127.5))))
    log_probs = log_probs.sum(3) + logit_probs - logsumexp(logit_probs, axis=-1, keepdims=True)
    return logsumexp(log_probs, axis=-1).sum(axis=(1, 2))


def random_out(rng: np.random.Generator, shape: tuple[int, ...], channels: int, k: int) -> np.ndarray:
    """Mixture parameters `[*shape, K (1 + C blocks)]` in the documented layout: logits, then per channel K means,
    K log-scales (some below the clamp) and, for C = 3, K coefficients."""
    blocks = [rng.normal(size=(*shape, k))]
    for _ in range(channels):
        blocks += [rng.uniform(-1.2, 1.2, (*shape, k)), rng.uniform(-8.0, 0.5, (*shape, k))]
        blocks += [rng.normal(size=(*shape, k))] if channels == 3 else []
    return np.concatenate(blocks, axis=-1)


def probabilities_of_levels(likelihood, out: jax.Array) -> np.ndarray:
    """P(x) of a one-pixel, one-channel likelihood at the 256 levels, `[..., 256]`."""
    return np.exp(np.asarray(jax.vmap(lambda v: likelihood.log_prob(v[None], out), out_axes=-1)(jnp.asarray(LEVELS))))


@pytest.fixture(scope="module")
def colour_grid():
    """A one-pixel colour mixture (K = 3) in float64, its parameters, and P(r, g) and P(r, b), summed from P over
    all 256^3 colours (a red level at a time)."""
    likelihood = likelihoods.DiscretizedLogisticMixture((1, 1, 3), 3)
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
        out = jnp.asarray(random_out(np.random.default_rng(3), (), 3, 3))
        levels = jnp.asarray(LEVELS)
        green_blue = jnp.stack(jnp.meshgrid(levels, levels, indexing="ij"), axis=-1).reshape(-1, 2)

        def of_red(red):
            x = jnp.concatenate([jnp.full((green_blue.shape[0], 1), red), green_blue], axis=-1)
            p = jnp.exp(likelihood.log_prob(x, out)).reshape(256, 256)
            return p.sum(axis=1), p.sum(axis=0)

        red_green, red_blue = jax.jit(lambda: jax.lax.map(of_red, levels))()
        return likelihood, np.asarray(out), np.asarray(red_green), np.asarray(red_blue)


@pytest.mark.parametrize("likelihood", [likelihoods.DiscretizedLogistic((1, 1, 1)),
                                        likelihoods.DiscretizedLogisticMixture((1, 1, 1), 5)])
def test_the_256_levels_sum_to_one_in_float64(likelihood):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        if isinstance(likelihood, likelihoods.DiscretizedLogistic):
            out = np.stack([rng.uniform(-1.5, 1.5, 200), rng.uniform(-8.0, 3.0, 200)], axis=-1)
        else:
            out = random_out(rng, (200,), 1, 5)
        totals = probabilities_of_levels(likelihood, jnp.asarray(out)).sum(axis=-1)
    # Not exactly 1: bins of mass below 1e-5 take PixelCNN++'s stand-in (density at the centre times the width).
    np.testing.assert_allclose(totals, 1.0, atol=3e-5)


def test_the_colour_mixture_sums_to_one_over_all_colours(colour_grid):
    _, _, red_green, red_blue = colour_grid
    np.testing.assert_allclose([red_green.sum(), red_blue.sum()], 1.0, atol=2e-6)


@pytest.mark.parametrize("mean, log_scale", [(-3.0, -2.0), (3.0, -2.0), (-0.4, -1.5), (0.9, 0.5), (-1.2, -7.0)])
def test_the_edge_levels_take_the_tails(mean, log_scale):
    with jax.enable_x64(True):
        p = probabilities_of_levels(likelihoods.DiscretizedLogistic((1, 1, 1)), jnp.array([mean, log_scale]))
    s = math.exp(log_scale)
    np.testing.assert_allclose(p[0], expit((-1 + 1 / 255 - mean) / s), rtol=1e-12)
    np.testing.assert_allclose(p[255], expit(-(1 - 1 / 255 - mean) / s), rtol=1e-12)  # 1 - sigmoid(a)
    if abs(mean) > 1:  # far outside: the nearer edge level holds nearly all the mass
        assert p[0 if mean < 0 else 255] > 1 - 1e-3


@pytest.mark.parametrize("log_scale", [-7.0, -7.5, -10.0, -1e3])
def test_log_scales_are_clamped_at_minus_7(log_scale):
    # The mean at the centre of level 128's bin: P(128) = sigma(h / s) - sigma(-h / s) = tanh(h / 2s), h = 1/255,
    # with s = exp(-7) for any log-scale at or below the clamp (PixelCNN++'s).
    likelihood = likelihoods.DiscretizedLogistic((1, 1, 1))
    with jax.enable_x64(True):
        got = likelihood.log_prob(jnp.asarray([128.0]), jnp.asarray([128 / 127.5 - 1, log_scale]))
    np.testing.assert_allclose(float(got), math.log(math.tanh(math.exp(7.0) / 510)), rtol=1e-12)


EXTREME_MEANS = [-1e6, -5.0, -1.0, 0.0, 0.3, 1.0, 5.0, 1e6]
EXTREME_LOG_SCALES = [-1e3, -7.0, -3.0, 0.0, 20.0, 80.0, 1e3]


def test_extreme_means_and_scales_stay_finite_in_float32():
    means, log_scales, levels = (a.ravel() for a in np.meshgrid(EXTREME_MEANS, EXTREME_LOG_SCALES,
                                                                [0.0, 1.0, 127.0, 128.0, 254.0, 255.0]))
    single = likelihoods.DiscretizedLogistic((1, 1, 1))
    out = jnp.asarray(np.stack([means, log_scales], axis=-1), jnp.float32)
    x = jnp.asarray(levels[:, None], jnp.float32)
    values, grads = jax.vmap(jax.value_and_grad(single.log_prob, argnums=1))(x, out)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))
    assert np.all(np.asarray(values) <= 0.0)
    mixture = likelihoods.DiscretizedLogisticMixture((1, 1, 3), 2)
    rng = np.random.default_rng(1)
    outs = []
    for mean, log_scale in zip(means, log_scales):
        params = rng.normal(size=(10, 2))
        params[[1, 4, 7]], params[[2, 5, 8]], params[[3, 6, 9]] = mean, log_scale, rng.choice([-50.0, 50.0])
        outs.append(params.ravel())
    colours = jnp.asarray(np.stack([levels, levels[::-1], np.roll(levels, 3)], axis=-1), jnp.float32)
    values, grads = jax.vmap(jax.value_and_grad(mixture.log_prob, argnums=1))(colours, jnp.asarray(outs, jnp.float32))
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))


@pytest.mark.parametrize("channels", [1, 3])
def test_values_match_the_pixelcnn_reference(channels):
    rng = np.random.default_rng(channels)
    likelihood = likelihoods.DiscretizedLogisticMixture((4, 4, channels), 5)
    x = rng.integers(0, 256, size=(6, 4, 4, channels)).astype(np.float64)
    x[:, 0], x[:, 1, 0] = 0.0, 255.0  # edge levels, some coupled to later channels
    out = random_out(rng, (6, 4, 4), channels, 5)
    assert out.shape[-1] * 16 == likelihood.num_params() == 16 * 5 * (10 if channels == 3 else 3)
    expected = pixelcnn_reference(x, out)
    flat_x, flat_out = x.reshape(6, -1), out.reshape(6, -1)
    with jax.enable_x64(True):
        got = likelihood.log_prob(jnp.asarray(flat_x), jnp.asarray(flat_out))
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10)
    got32 = likelihood.log_prob(jnp.asarray(flat_x, jnp.float32), jnp.asarray(flat_out, jnp.float32))
    expected32 = pixelcnn_reference(x, out.astype(np.float32).astype(np.float64))
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got32), expected32, rtol=1e-5)


def test_the_single_logistic_is_the_one_component_mixture_without_coupling():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.integers(0, 256, size=(3, 12)), jnp.float32)
    out = jnp.asarray(rng.normal(size=(3, 24)), jnp.float32)
    mean, log_scale = out[:, :12, None], out[:, 12:, None]  # documented: D means, then D log-scales
    mixture_out = jnp.concatenate([jnp.zeros_like(mean), mean, log_scale], axis=-1).reshape(3, -1)
    single = likelihoods.DiscretizedLogistic((2, 2, 3)).log_prob(x, out)
    each_channel = likelihoods.DiscretizedLogisticMixture((2, 6, 1), 1).log_prob(x, mixture_out)
    np.testing.assert_allclose(single, each_channel, rtol=1e-6)


def test_draws_follow_the_probabilities_of_one_channel():
    likelihood = likelihoods.DiscretizedLogisticMixture((1, 1, 1), 3)
    out = jnp.asarray([0.5, -0.3, 0.0, -0.6, 0.2, 0.95, -2.5, -3.5, -7.5], jnp.float32)
    draws = jax.vmap(likelihood.sample, in_axes=(0, None))(jax.random.split(jax.random.key(0), 40_000), out)
    assert draws.shape == (40_000, 1) and draws.dtype == jnp.float32
    counts = np.bincount(np.asarray(draws[:, 0]).astype(int), minlength=256) / 40_000
    probs = probabilities_of_levels(likelihood, out)
    assert 0.5 * np.abs(counts - probs).sum() < 0.03  # total variation, the sampling noise is ~0.02


def test_colour_draws_follow_the_coupled_probabilities(colour_grid):
    likelihood, out, red_green, red_blue = colour_grid
    keys = jax.random.split(jax.random.key(1), 40_000)
    draws = np.asarray(jax.vmap(likelihood.sample, in_axes=(0, None))(keys, jnp.asarray(out, jnp.float32)))
    assert set(np.unique(draws)) <= set(LEVELS)
    for joint, (a, b) in ((red_green, (0, 1)), (red_blue, (0, 2))):  # on 16 x 16 coarse bins of 16 levels
        coarse = joint.reshape(16, 16, 16, 16).sum(axis=(1, 3))
        counts = np.histogram2d(draws[:, a], draws[:, b], bins=16, range=[[0, 256], [0, 256]])[0] / len(draws)
        assert 0.5 * np.abs(counts - coarse).sum() < 0.04


def test_means_lie_in_the_unit_interval_and_follow_the_components():
    mixture = likelihoods.DiscretizedLogisticMixture((1, 1, 3), 2)
    # Component 0 certain; R mean 0.5 (0.75), G: 0.2 + tanh(atanh(0.5)) * 0.5 (0.6 -> 0.725), B: beyond 1 (1.0).
    pixel = [50.0, -50.0, 0.5, 0.0, -2.0, -2.0, math.atanh(0.5), 0.0,
             0.2, 0.0, -2.0, -2.0, 0.0, 0.0, 3.0, 0.0, -2.0, -2.0, 0.0, 0.0]
    np.testing.assert_allclose(mixture.mean(jnp.asarray(pixel, jnp.float32)), [0.75, 0.725, 1.0], rtol=1e-6)
    single = likelihoods.DiscretizedLogistic((1, 2, 1)).mean(jnp.asarray([-3.0, 0.5, 0.0, 0.0], jnp.float32))
    np.testing.assert_allclose(single, [0.0, 0.75])


def test_bits_per_dim():
    dims = 32 * 32 * 3
    np.testing.assert_allclose(likelihoods.bits_per_dim(jnp.asarray([3 * dims * math.log(2)]), dims), [3.0])
    assert vae_jax.bits_per_dim is likelihoods.bits_per_dim


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="channels in"):
        likelihoods.DiscretizedLogisticMixture((4, 4, 2), 3)
    with pytest.raises(ValueError, match=r"expected decoder output \[..., 30\], got \(29,\)"):
        likelihoods.DiscretizedLogisticMixture((1, 1, 3), 3).log_prob(jnp.zeros(3), jnp.zeros(29))
    assert hash(likelihoods.DiscretizedLogisticMixture([2, 2, 3], 3)) == hash(
        likelihoods.DiscretizedLogisticMixture((2, 2, 3), 3))


def test_bernoulli_moved_and_is_still_found_and_described_where_it_was():
    assert models.Bernoulli is likelihoods.Bernoulli is vae_jax.Bernoulli
    assert models.VAE(models.Encoder(2), models.Decoder(4)).likelihood == likelihoods.Bernoulli()
    description = contract.describe(models.VAE(models.Encoder(2), models.Decoder(4)))
    assert description["likelihood"] == {"class": "vae_jax.models.Bernoulli"}  # stored runs keep their hash


class ScaledEncoder(nn.Module):
    """`Encoder` on x / 255: the model receives grey levels, which the likelihood rescales itself."""

    latent_dim: int

    @nn.compact
    def __call__(self, x):
        return models.Encoder(self.latent_dim, hidden=(32,))(x / 255.0)


def test_a_tiny_vae_with_the_mixture_learns_8_bit_images():
    image_shape = (4, 4, 3)
    likelihood = likelihoods.DiscretizedLogisticMixture(image_shape, 2)
    model = models.VAE(ScaledEncoder(2), models.Decoder(likelihood.num_params(), hidden=(32,)),
                       likelihood=likelihood, num_pixels=48)
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, size=(4, 48))  # random 8-bit images: 4 prototypes plus noise
    noisy = prototypes[rng.integers(0, 4, 32)] + rng.integers(-8, 9, size=(32, 48))
    x = jnp.asarray(np.clip(noisy, 0, 255), jnp.float32)
    params = model.init(jax.random.key(0), x[0])
    keys = jax.random.split(jax.random.key(1), 32)

    def loss_fn(params):
        terms = jax.vmap(lambda xi, key: objective.elbo_terms(model, params, xi, key))(x, keys)
        return jnp.mean(terms.nelbo)

    tx = optax.adam(1e-2)
    opt_state, losses = tx.init(params), []
    step = jax.jit(jax.value_and_grad(loss_fn))
    for _ in range(30):
        loss, grads = step(params)
        with jax.numpy_dtype_promotion("standard"):  # Optax mixes its int32 count with floats (train.TrainState)
            updates, opt_state = tx.update(grads, opt_state)
        params, losses = optax.apply_updates(params, updates), [*losses, float(loss)]
    bits = likelihoods.bits_per_dim(jnp.asarray(losses), 48)
    # From ~9.3 bits per dimension to below the 8 of the uniform distribution over the levels.
    assert np.all(np.isfinite(losses)) and bits[-1] < min(bits[0] - 1.0, 8.0), bits
    assert model.generate(params, jax.random.key(2), 3).shape == (3, 48)
