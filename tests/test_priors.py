"""Learned priors: the mixture log-density against PyTorch, the Monte-Carlo KL against float64 NumPy and against the
closed form where the prior reduces to N(0, I), gradients through the VampPrior, sampling, and learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from tests.conftest import MNIST
from vae_jax import builders, configs, distributions, evaluate, figures, models, objective, priors, train
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


def _linear_vae(prior=None):
    config = configs.ModelConfig(LATENT, encoder_hidden=(), decoder_hidden=(16,))
    model = builders.build_model(config, MNIST)
    model = models.VAE(model.encoder, model.decoder, prior)
    return model, model.init(jax.random.key(0), jnp.zeros(784))


def _standard_normal_vamp():
    """A VampPrior whose pseudo-inputs (all 0.5) the bias-shifted linear encoder maps to exactly mean 0, logvar 0."""
    model, params = _linear_vae(priors.VampPrior(num_components=4, num_pixels=784))
    params["prior"] = jax.tree.map(jnp.zeros_like, params["prior"])
    kernel = params["encoder"]["params"]["Dense_0"]["kernel"]
    params["encoder"]["params"]["Dense_0"]["bias"] = -0.5 * jnp.sum(kernel, axis=0)
    return model, params


def _standard_normal_mixture():
    model, params = _linear_vae(priors.MixturePrior(num_components=5, latent_dim=LATENT))
    params["prior"] = jax.tree.map(jnp.zeros_like, params["prior"])  # every component N(0, I)
    return model, params


@pytest.mark.parametrize("make", [_standard_normal_mixture, _standard_normal_vamp])
def test_monte_carlo_kl_matches_float64_numpy_and_is_unbiased_for_the_analytic_kl(make, binary_pixels):
    model, params = make()
    components = model.prior.apply(params["prior"], lambda u: model.posterior(params, u), method="components")
    np.testing.assert_allclose(components, 0.0, atol=1e-5)

    x = jnp.asarray(binary_pixels[0], jnp.float32)
    eps = jax.random.normal(jax.random.key(2), (100_000, LATENT))
    mc = objective.elbo_terms_from_samples(model.joint_samples_from_noise(params, x, eps))
    plain, plain_params = _linear_vae()
    exact = objective.elbo_terms_from_samples(plain.joint_samples_from_noise(
        {**plain_params, "encoder": params["encoder"], "decoder": params["decoder"]}, x, eps))
    assert mc.kl_per_dim.shape == (0,) and exact.kl_per_dim.shape == (LATENT,)
    np.testing.assert_allclose(mc.rec, exact.rec, rtol=1e-6)  # the same draws of z
    # Per-draw log q(z_s|x) - log p(z_s) in float64 NumPy, p the mixture of 4-5 identical N(0, I) components.
    mean, logvar = (np.asarray(a, np.float64) for a in model.posterior(params, x))
    e = np.asarray(eps, np.float64)
    z = mean + np.exp(0.5 * logvar) * e
    log_q = np.sum(-0.5 * np.log(2 * np.pi * np.exp(logvar)) - (z - mean) ** 2 / (2 * np.exp(logvar)), axis=1)
    log_p = np.sum(-0.5 * np.log(2 * np.pi) - z ** 2 / 2, axis=1)
    draws = log_q - log_p
    np.testing.assert_allclose(float(mc.kl), draws.mean(), rtol=1e-4, atol=1e-5)
    stderr = draws.std() / np.sqrt(len(draws))
    assert 0 < stderr < 0.01
    assert abs(float(mc.kl) - float(exact.kl)) < 4 * stderr, (float(mc.kl), float(exact.kl), stderr)


def test_iwae_bound_with_a_standard_normal_mixture_equals_the_plain_bound(binary_pixels):
    model, params = _standard_normal_mixture()
    plain, _ = _linear_vae()
    x, key = jnp.asarray(binary_pixels[1], jnp.float32), jax.random.key(3)
    plain_bound = objective.iwae_bound(plain, params, x, key, 50)
    mixed = objective.iwae_bound(model, params, x, key, 50, chunk_size=7)
    np.testing.assert_allclose(mixed, plain_bound, rtol=1e-6)


def test_vamp_prior_gradients_reach_the_pseudo_inputs_and_the_encoder(binary_pixels):
    base = builders.build_model(configs.ModelConfig(LATENT, encoder_hidden=(16,), decoder_hidden=(16,)), MNIST)
    model = models.VAE(base.encoder, base.decoder, priors.VampPrior(num_components=6, num_pixels=784))
    params = model.init(jax.random.key(0), jnp.zeros(784))
    assert params["prior"]["params"]["pseudo_input_logits"].shape == (6, 784)
    x = jnp.asarray(binary_pixels[2], jnp.float32)
    eps = jax.random.normal(jax.random.key(4), (2, LATENT))

    def kl(p, m=model):
        return objective.elbo_terms_from_samples(m.joint_samples_from_noise(p, x, eps)).kl

    grads = jax.grad(kl)(params)
    pseudo = np.asarray(grads["prior"]["params"]["pseudo_input_logits"])
    assert np.all(np.isfinite(pseudo)) and np.abs(pseudo).max() > 0
    # The encoder's gradient has a part through the prior: a mixture prior holding the same components as
    # constants gives the same KL but a different encoder gradient.
    means, logvars = model.prior.apply(params["prior"], lambda u: model.posterior(params, u), method="components")
    frozen_model = models.VAE(base.encoder, base.decoder, priors.MixturePrior(num_components=6, latent_dim=LATENT))
    frozen = {**params, "prior": {"params": {"means": means, "logvars": logvars}}}
    np.testing.assert_allclose(kl(frozen, frozen_model), kl(params), rtol=1e-6)
    frozen_grads = jax.grad(lambda p: kl(p, frozen_model))(frozen)
    kernel = grads["encoder"]["params"]["MLP_0"]["Dense_0"]["kernel"]
    assert not np.allclose(frozen_grads["encoder"]["params"]["MLP_0"]["Dense_0"]["kernel"], kernel)


@pytest.mark.parametrize("prior_name", ["mixture", "vamp"])
def test_training_with_a_learned_prior_lowers_the_loss_and_samples_from_it(prior_name, binary_pixels):
    model = builders.build_model(configs.ModelConfig(LATENT, encoder_hidden=(32,), decoder_hidden=(32,),
                                                     prior=prior_name, prior_components=8), MNIST)
    state = train.create_train_state(jax.random.key(0), model, optax.adam(3e-3), (784,))
    before = np.array(jax.tree.leaves(state.params["prior"])[0])
    state, first = train.train_epoch_jit(state, jnp.asarray(binary_pixels), jax.random.key(1), batch_size=16)
    for epoch in range(2, 30):
        state, last = train.train_epoch_jit(state, jnp.asarray(binary_pixels), jax.random.key(epoch), batch_size=16)
    assert int(last.failed_step) == -1
    assert float(np.mean(last.terms.nelbo)) < float(np.mean(first.terms.nelbo)) - 20
    assert float(np.min(last.terms.kl)) > 0  # a Monte-Carlo KL of a batch mean: positive once the encoder has learned
    assert not np.allclose(before, np.asarray(jax.tree.leaves(state.params["prior"])[0])), "the prior did not learn"
    samples = figures.generate(state.model, state.params, jax.random.key(5), 9)
    assert samples.shape == (9, 784) and 0 <= float(samples.min()) and float(samples.max()) <= 1
    terms = evaluate.evaluate_elbo(state.model, state.params, jnp.asarray(binary_pixels), jax.random.key(6),
                                   batch_size=32)
    assert evaluate.summarize(terms)["kl_per_dim"] == []


def test_settings_that_need_a_per_dimension_kl_are_refused():
    with pytest.raises(ConfigError, match="free_bits"):
        configs.apply_overrides(configs.get_config("cs236"), ["model.prior=vamp", "free_bits=0.1"])
    with pytest.raises(ConfigError, match="free_bits"):
        configs.apply_overrides(configs.get_config("cs236"), ["model.stochastic_layers=2", "free_bits=0.1"])
    with pytest.raises(ConfigError, match="unknown prior"):
        configs.apply_overrides(configs.get_config("cs236"), ["model.prior=flow"])
