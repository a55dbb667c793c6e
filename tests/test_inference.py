"""Per-example inference: L[q] <= L[q*] <= log p(x) by quadrature on a 1-D latent space, the same q* alone or in a
batch, and the same Adam steps as PyTorch on the same noise (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from tests.conftest import MNIST
from tests.torch_reference import TorchVAE
from vae_jax import builders, configs, inference, objective

GRID = np.linspace(-12, 12, 48001)


def _log_joint_on_grid(model, params, x):
    """log p(x, z) on `GRID`, in float64."""
    logits = np.asarray(model.decoder.apply(params["decoder"], jnp.asarray(GRID[:, None], jnp.float32)), np.float64)
    return np.sum(x * logits - np.logaddexp(0.0, logits), axis=-1) - 0.5 * (GRID ** 2 + np.log(2 * np.pi))


def _elbo_by_quadrature(log_joint, mean, logvar):
    """E_q[log p(x, z) - log q(z)] for q = N(mean, exp(logvar)), by quadrature on `GRID`."""
    log_q = -0.5 * ((GRID - mean) ** 2 / np.exp(logvar) + logvar + np.log(2 * np.pi))
    return float(np.sum(np.exp(log_q) * (log_joint - log_q)) * (GRID[1] - GRID[0]))


def test_refined_elbo_lies_between_the_amortized_elbo_and_log_p_by_quadrature(one_dimensional_model):
    from scipy.optimize import minimize

    model, params = one_dimensional_model
    pixels = (np.random.default_rng(3).random((6, 784)) < 0.3).astype(np.uint8)
    refined = inference.refine_posteriors(model, params, jnp.asarray(pixels), jax.random.key(0), steps=1500,
                                          num_samples=8, learning_rate=0.1, batch_size=4)
    for i, x in enumerate(pixels.astype(np.float64)):
        log_joint = _log_joint_on_grid(model, params, x)
        peak = log_joint.max()
        log_px = peak + np.log(np.sum(np.exp(log_joint - peak)) * (GRID[1] - GRID[0]))
        mean, logvar = (float(a[0]) for a in model.posterior(params, jnp.asarray(x, jnp.float32)))
        amortized = _elbo_by_quadrature(log_joint, mean, logvar)
        found = _elbo_by_quadrature(log_joint, float(refined.mean[i, 0]), float(refined.logvar[i, 0]))
        # The best Gaussian, by Nelder-Mead on the ELBO by quadrature.
        best = minimize(lambda p, joint=log_joint: -_elbo_by_quadrature(joint, *p), [mean, logvar],
                        method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10})
        # Tolerances: quadrature error < 1e-6 nats; Adam's noisy optimum within 0.01 nats of the best Gaussian.
        assert amortized <= found + 1e-6 <= log_px + 2e-6, (amortized, found, log_px)
        assert -best.fun - found < 0.01, (-best.fun, found)
        assert -best.fun <= log_px + 2e-6  # the best Gaussian's ELBO is a lower bound too


def test_one_example_alone_gets_the_same_posterior_as_inside_a_batch(small_model, binary_pixels):
    params = small_model.init(jax.random.key(0), jnp.zeros(784))
    pixels = jnp.asarray(binary_pixels[:9])
    options = {"steps": 25, "num_samples": 3, "learning_rate": 1e-2}
    batched = inference.refine_posteriors(small_model, params, pixels, jax.random.key(1), batch_size=4, **options)
    # Example 6 alone: its key is fold_in(key, 6), so refine it as the seventh row of a split of its own.
    alone = inference.refine_one(small_model, params, pixels[6].astype(jnp.float32),
                                 jax.random.split(jax.random.fold_in(jax.random.key(1), 6))[1],
                                 small_model.posterior(params, pixels[6].astype(jnp.float32)), **options)
    np.testing.assert_allclose(alone[0], batched.mean[6], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone[1], batched.logvar[6], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone[2], batched.trace[6], rtol=1e-5)
    assert not np.allclose(batched.mean[6], batched.mean[7])
    # From the prior: the same steps from mean 0 and log-variance 0.
    from_prior = inference.refine_posteriors(small_model, params, pixels, jax.random.key(1), batch_size=4,
                                             start="prior", **options)
    alone = inference.refine_one(small_model, params, pixels[6].astype(jnp.float32),
                                 jax.random.split(jax.random.fold_in(jax.random.key(1), 6))[1],
                                 (jnp.zeros(3), jnp.zeros(3)), **options)
    np.testing.assert_allclose(alone[0], from_prior.mean[6], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone[2], from_prior.trace[6], rtol=1e-5)
    assert not np.allclose(from_prior.mean[6], batched.mean[6])


def test_refinement_takes_pytorch_s_adam_steps_on_the_same_noise_in_float64(binary_pixels):
    model = builders.build_model(configs.ModelConfig(3, (16,), (16,)), MNIST)
    params = model.init(jax.random.key(0), jnp.zeros(784))
    x = np.asarray(binary_pixels[4], np.float64)
    steps, samples, learning_rate = 6, 5, 3e-2
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        key = jax.random.key(7)
        start = model.posterior(params, jnp.asarray(x))
        mean, logvar, trace = inference.refine_one(model, params, jnp.asarray(x), key, start, steps=steps,
                                                   num_samples=samples, learning_rate=learning_rate)
        noise = [np.asarray(inference.gaussian_noise(jax.random.fold_in(key, t), start[0], samples))
                 for t in range(steps)]
    reference = TorchVAE(3, [16], [16]).load_flax(params, torch.float64)
    phi_mean = torch.tensor(np.asarray(start[0]), requires_grad=True)
    phi_logvar = torch.tensor(np.asarray(start[1]), requires_grad=True)
    adam = torch.optim.Adam([phi_mean, phi_logvar], lr=learning_rate)
    alpha = inference.FINAL_LEARNING_RATE_FRACTION
    cosine = torch.optim.lr_scheduler.LambdaLR(  # optax.cosine_decay_schedule, written out
        adam, lambda t: (1 - alpha) * 0.5 * (1 + np.cos(np.pi * min(t, steps) / steps)) + alpha)
    losses = []
    for eps in noise:
        adam.zero_grad()
        z = phi_mean + torch.exp(0.5 * phi_logvar) * torch.tensor(eps)
        logits = reference.decoder(z)
        log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.tensor(x).expand_as(logits), reduction="none").sum(-1)
        kl = -0.5 * torch.sum(1 + phi_logvar - phi_mean ** 2 - phi_logvar.exp())
        loss = -log_px.mean() + kl
        loss.backward()
        adam.step()
        cosine.step()
        losses.append(loss.item())
    np.testing.assert_allclose(np.asarray(trace), losses, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(mean), phi_mean.detach().numpy(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.asarray(logvar), phi_logvar.detach().numpy(), rtol=1e-8, atol=1e-12)
    assert np.abs(np.asarray(mean) - np.asarray(start[0])).max() > 1e-2  # the steps did move it


def test_the_gaps_add_up_and_the_refined_elbo_is_at_least_the_amortized(small_model, binary_pixels):
    params = small_model.init(jax.random.key(0), jnp.zeros(784))
    gaps = inference.amortization_gaps(small_model, params, jnp.asarray(binary_pixels[:12]), jax.random.key(2),
                                       steps=100, num_samples=4, eval_samples=200, iwae_samples=500, batch_size=5)
    assert gaps.log_px.shape == gaps.elbo_refined.shape == gaps.elbo_amortized.shape == (12,)
    assert np.all(gaps.elbo_refined > gaps.elbo_amortized) and np.all(gaps.log_px > gaps.elbo_refined)
    assert gaps.encoder_seconds > 0 and gaps.refine_seconds > gaps.encoder_seconds
    # The amortized ELBO is the ordinary evaluation's, with the same number of samples.
    terms = objective.batch_elbo_terms(small_model, params, jnp.asarray(binary_pixels[:12]), jnp.arange(12),
                                       jax.random.key(2), num_samples=200)
    np.testing.assert_allclose(gaps.elbo_amortized, -np.asarray(terms.nelbo), rtol=1e-5)
