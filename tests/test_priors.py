"""Learned priors: the mixture log-density against PyTorch, the Monte-Carlo KL against the closed form where the
prior reduces to N(0, I), gradients through the VampPrior, sampling, and learning on a small problem."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from vae_jax import configs, distributions, evaluate, models, objective, priors, train
from vae_jax.errors import ConfigError

LATENT = 3


def _torch_mixture_log_prob(z, means, logvars):
    components = torch.distributions.Independent(
        torch.distributions.Normal(torch.tensor(means), torch.tensor(np.exp(0.5 * logvars))), 1)
    uniform = torch.distributions.Categorical(logits=torch.zeros(len(means), dtype=torch.float64))
    return torch.distributions.MixtureSameFamily(uniform, components).log_prob(torch.tensor(z)).numpy()


def test_mixture_log_prob_matches_pytorch():
    rng = np.random.default_rng(0)
    means, logvars = rng.normal(size=(7, LATENT)), rng.normal(scale=0.5, size=(7, LATENT))
    z = rng.normal(scale=3.0, size=(11, LATENT))  # some points far from every component
    with jax.enable_x64(True):
        ours = np.asarray(distributions.mixture_log_prob(z, means, logvars))
    np.testing.assert_allclose(ours, _torch_mixture_log_prob(z, means, logvars), rtol=1e-12)
    # One component is one Gaussian.
    np.testing.assert_allclose(distributions.mixture_log_prob(z[:, :2], means[:1, :2], logvars[:1, :2]),
                               distributions.gaussian_log_prob(z[:, :2], means[0, :2], logvars[0, :2]), rtol=1e-6)


def test_mixture_samples_have_the_mixture_moments():
    means = jnp.array([[-2.0, 0.0], [3.0, 1.0]])
    logvars = jnp.log(jnp.array([[0.25, 1.0], [1.0, 4.0]]))
    z = np.asarray(distributions.sample_mixture(jax.random.key(0), means, logvars, 200_000))
    # Mean of an equal mixture: the average of the means; variance: average variance + variance of the means.
    np.testing.assert_allclose(z.mean(axis=0), [0.5, 0.5], atol=0.02)
    np.testing.assert_allclose(z.var(axis=0), [0.625 + 6.25, 2.5 + 0.25], rtol=0.01)


def _standard_normal_vamp(encoder, encoder_params):
    """A VampPrior whose pseudo-inputs (all 0.5) the bias-shifted linear encoder maps to exactly mean 0, logvar 0."""
    vamp = priors.VampPrior(num_components=4)
    prior_params = jax.tree.map(jnp.zeros_like, vamp.init(jax.random.key(1), functools.partial(
        encoder.apply, encoder_params)))
    kernel = encoder_params["params"]["Dense_0"]["kernel"]
    encoder_params = jax.tree.map(lambda p: p, encoder_params)
    encoder_params["params"]["Dense_0"]["bias"] = -0.5 * jnp.sum(kernel, axis=0)
    return vamp, prior_params, encoder_params


def _linear_vae():
    encoder, decoder = models.build_models(configs.ModelConfig(LATENT, encoder_hidden=(), decoder_hidden=(16,)))
    return encoder, decoder, train.init_params(jax.random.key(0), encoder, decoder)


@pytest.mark.parametrize("prior_name", ["mixture", "vamp"])
def test_monte_carlo_kl_is_unbiased_for_the_analytic_kl_when_the_prior_is_standard_normal(prior_name, binary_pixels):
    encoder, decoder, params = _linear_vae()
    if prior_name == "mixture":  # every component N(0, I)
        prior = priors.MixturePrior(num_components=5, latent_dim=LATENT)
        prior_params = jax.tree.map(jnp.zeros_like, prior.init(jax.random.key(1), None))
    else:
        prior, prior_params, params["encoder"] = _standard_normal_vamp(encoder, params["encoder"])
    means, logvars = objective.prior_components({**params, "prior": prior_params}, encoder=encoder, prior=prior)
    np.testing.assert_allclose(means, 0.0, atol=1e-5)
    np.testing.assert_allclose(logvars, 0.0, atol=1e-5)

    x = jnp.asarray(binary_pixels[0], jnp.float32)
    eps = jax.random.normal(jax.random.key(2), (100_000, LATENT))
    mc = objective.elbo_terms_from_noise({**params, "prior": prior_params}, x, eps, encoder=encoder,
                                         decoder=decoder, prior=prior)
    exact = objective.elbo_terms_from_noise(params, x, eps, encoder=encoder, decoder=decoder)
    assert mc.kl_per_dim.shape == (0,) and exact.kl_per_dim.shape == (LATENT,)
    np.testing.assert_allclose(mc.rec, exact.rec, rtol=1e-6)  # the same draws of z
    # Per-draw estimates log q(z_s|x) - log N(z_s; 0, I): their mean is the MC KL, their spread its error.
    mean, logvar = encoder.apply(params["encoder"], x)
    z = distributions.reparameterize(mean, logvar, eps)
    draws = np.asarray(distributions.gaussian_log_prob(z, mean, logvar)
                       - distributions.gaussian_log_prob(z, jnp.zeros(LATENT), jnp.zeros(LATENT)), np.float64)
    np.testing.assert_allclose(mc.kl, draws.mean(), rtol=1e-4, atol=1e-5)
    stderr = draws.std() / np.sqrt(len(draws))
    assert 0 < stderr < 0.01
    assert abs(float(mc.kl) - float(exact.kl)) < 4 * stderr, (float(mc.kl), float(exact.kl), stderr)


def test_iwae_bound_with_a_standard_normal_mixture_equals_the_plain_bound(binary_pixels):
    encoder, decoder, params = _linear_vae()
    prior = priors.MixturePrior(num_components=3, latent_dim=LATENT)
    prior_params = jax.tree.map(jnp.zeros_like, prior.init(jax.random.key(1), None))
    x, key = jnp.asarray(binary_pixels[1], jnp.float32), jax.random.key(3)
    plain = objective.iwae_bound(params, x, key, encoder=encoder, decoder=decoder, num_samples=50)
    mixed = objective.iwae_bound({**params, "prior": prior_params}, x, key, encoder=encoder, decoder=decoder,
                                 prior=prior, num_samples=50, chunk_size=7)
    np.testing.assert_allclose(mixed, plain, rtol=1e-6)


def test_vamp_prior_gradients_reach_the_pseudo_inputs_and_the_encoder(binary_pixels):
    encoder, decoder = models.build_models(configs.ModelConfig(LATENT, encoder_hidden=(16,), decoder_hidden=(16,)))
    prior = priors.VampPrior(num_components=6)
    params = train.init_params(jax.random.key(0), encoder, decoder, prior=prior)
    assert params["prior"]["params"]["pseudo_input_logits"].shape == (6, 784)
    x = jnp.asarray(binary_pixels[2], jnp.float32)
    eps = jax.random.normal(jax.random.key(4), (2, LATENT))

    def kl(p):
        return objective.elbo_terms_from_noise(p, x, eps, encoder=encoder, decoder=decoder, prior=prior).kl

    grads = jax.grad(kl)(params)
    pseudo = np.asarray(grads["prior"]["params"]["pseudo_input_logits"])
    assert np.all(np.isfinite(pseudo)) and np.abs(pseudo).max() > 0
    # The encoder's gradient has a part through the prior: a mixture prior holding the same components as
    # constants gives the same KL but a different encoder gradient.
    means, logvars = objective.prior_components(params, encoder=encoder, prior=prior)
    frozen_prior = priors.MixturePrior(num_components=6, latent_dim=LATENT)
    frozen = {**params, "prior": {"params": {"means": means, "logvars": logvars}}}

    def frozen_kl(p):
        return objective.elbo_terms_from_noise(p, x, eps, encoder=encoder, decoder=decoder, prior=frozen_prior).kl

    np.testing.assert_allclose(frozen_kl(frozen), kl(params), rtol=1e-6)
    frozen_grads = jax.grad(frozen_kl)(frozen)
    kernel = grads["encoder"]["params"]["MLP_0"]["Dense_0"]["kernel"]
    assert not np.allclose(frozen_grads["encoder"]["params"]["MLP_0"]["Dense_0"]["kernel"], kernel)


@pytest.mark.parametrize("prior_name", ["mixture", "vamp"])
def test_training_with_a_learned_prior_lowers_the_loss_and_samples_from_it(prior_name, binary_pixels):
    model_config = configs.ModelConfig(LATENT, encoder_hidden=(32,), decoder_hidden=(32,), prior=prior_name,
                                       prior_components=8)
    encoder, decoder = models.build_models(model_config)
    prior = models.build_prior(model_config)
    state = train.create_train_state(jax.random.key(0), encoder, decoder, optax.adam(3e-3), prior=prior)
    before = np.array(state.params["prior"]["params"][next(iter(state.params["prior"]["params"]))])
    state, first = train.train_epoch_jit(state, jnp.asarray(binary_pixels), jax.random.key(1), batch_size=16)
    for epoch in range(2, 30):
        state, last = train.train_epoch_jit(state, jnp.asarray(binary_pixels), jax.random.key(epoch), batch_size=16)
    assert int(last.failed_step) == -1
    assert float(np.mean(last.nelbo)) < float(np.mean(first.nelbo)) - 20
    assert float(np.min(last.kl)) > 0  # a Monte-Carlo KL of a batch mean: positive once the encoder has learned
    after = np.asarray(state.params["prior"]["params"][next(iter(state.params["prior"]["params"]))])
    assert not np.allclose(before, after), "the prior's parameters did not learn"
    samples = evaluate.sample_prior(state.params, jax.random.key(5), **state.models, num_images=9, latent_dim=LATENT)
    assert samples.shape == (9, 784) and 0 <= float(samples.min()) and float(samples.max()) <= 1


def test_free_bits_need_the_standard_normal_prior():
    with pytest.raises(ConfigError, match="free_bits"):
        configs.apply_overrides(configs.get_config("cs236"), ["model.prior=vamp", "free_bits=0.1"])
    with pytest.raises(ConfigError, match="unknown prior"):
        configs.apply_overrides(configs.get_config("cs236"), ["model.prior=flow"])
