"""vae_jax against independent PyTorch implementations with copied weights and the same noise: the one-layer VAE
(terms, gradients, optimizer steps), the two-layer HVAE with and without the VampPrior, the convolutional networks.

Tolerances: float64 agrees to 1e-10 relative (only summation order differs); float32 to 1e-5.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.conftest import MNIST
from tests.torch_reference import TorchHVAE, TorchVAE, flax_dense_layers
from vae_jax import builders, configs, objective

LATENT, ENCODER_HIDDEN, DECODER_HIDDEN = 4, (32, 24), (24, 32)
BATCH, SAMPLES = 8, 3


def _setup(dtype):
    model = builders.build_model(configs.ModelConfig(LATENT, ENCODER_HIDDEN, DECODER_HIDDEN, "elu"), MNIST)
    params = jax.tree.map(lambda p: p.astype(dtype), model.init(jax.random.key(0), jnp.zeros(784, jnp.float32)))
    rng = np.random.default_rng(1)
    x = (rng.random((BATCH, 784)) < 0.3).astype(np.float64)
    eps = rng.normal(size=(BATCH, SAMPLES, LATENT))
    return model, params, x, eps


def _jax_batch_loss(params, x, eps, model):
    terms = jax.vmap(lambda xi, ei: objective.elbo_terms_from_samples(model.joint_samples_from_noise(params, xi, ei)))(
        x, eps)
    return jnp.mean(terms.nelbo), terms


@pytest.mark.parametrize("jax_dtype,torch_dtype,rtol", [
    (jnp.float64, torch.float64, 1e-10),
    (jnp.float32, torch.float32, 1e-5),
])
def test_terms_and_gradients_agree(jax_dtype, torch_dtype, rtol):
    with jax.enable_x64(jax_dtype == jnp.float64):
        model, params, x, eps = _setup(jax_dtype)
        (loss, terms), grads = jax.value_and_grad(_jax_batch_loss, has_aux=True)(
            params, jnp.asarray(x, jax_dtype), jnp.asarray(eps, jax_dtype), model)
        assert terms.nelbo.dtype == jax_dtype

        reference = TorchVAE(LATENT, list(ENCODER_HIDDEN), list(DECODER_HIDDEN)).load_flax(params, torch_dtype)
        nelbo, rec, kl = reference.terms(torch.tensor(x, dtype=torch_dtype), torch.tensor(eps, dtype=torch_dtype))
        nelbo.mean().backward()

        for ours, theirs in zip((terms.nelbo, terms.rec, terms.kl), (nelbo, rec, kl)):
            np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=rtol)
        np.testing.assert_allclose(float(loss), nelbo.mean().item(), rtol=rtol)

        ours_grads = flax_dense_layers(grads)
        theirs_grads = reference.gradients_as_flax()
        for name in ("encoder", "decoder"):
            for (gk, gb), (tk, tb) in zip(ours_grads[name], theirs_grads[name]):
                scale = np.abs(tk).max()
                np.testing.assert_allclose(np.asarray(gk), tk, rtol=rtol, atol=rtol * scale)
                np.testing.assert_allclose(np.asarray(gb), tb, rtol=rtol, atol=rtol * np.abs(tb).max())


def _torch_clip_by_global_norm(parameters, max_norm):
    """g <- g * min(1, max_norm / ||g||), ||g|| over all parameters (Pascanu et al., 2013); returns ||g||."""
    norm = math.sqrt(sum(float(torch.sum(p.grad ** 2)) for p in parameters))
    for p in parameters:
        p.grad.mul_(min(1.0, max_norm / norm))
    return norm


def _torch_normalize_each_tensor(parameters):
    """AdamNormGrad's first half, as Tomczak & Welling's code writes it: grad / (torch.norm(grad, 2) + 1e-7)."""
    for p in parameters:
        p.grad.div_(torch.norm(p.grad, 2) + 1e-7)


@pytest.mark.parametrize("name, setting", [("adam", {}), ("adam_normgrad", {}), ("adamw", {"weight_decay": 0.5}),
                                           ("adam_normgrad", {"weight_decay": 0.5}), ("sgd", {"momentum": 0.5})])
def test_optimizer_steps_agree_with_pytorch_in_float64(name, setting):
    """`builders.build_optimizer`'s whole chain, gradient clipping and the cosine schedule included, against
    torch.optim's Adam (for adam_normgrad with each tensor's normalization written out), AdamW (decoupled weight
    decay, scaled by the scheduled rate; for adam_normgrad with a weight decay, AdamW on the normalized gradient) and
    SGD with momentum, with clipping written out and the cosine schedule as a LambdaLR."""
    optim = configs.OptimConfig(name=name, learning_rate=1e-2, schedule="cosine", final_lr_fraction=0.1,
                                grad_clip_norm=5.0, **setting)
    total_steps = 6
    with jax.enable_x64(True):
        model, params, x, _ = _setup(jnp.float64)
        reference = TorchVAE(LATENT, list(ENCODER_HIDDEN), list(DECODER_HIDDEN)).load_flax(params, torch.float64)
        parameters = list(reference.parameters())
        torch_class = (torch.optim.SGD if name == "sgd" else torch.optim.AdamW if "weight_decay" in setting
                       else torch.optim.Adam)
        torch_opt = torch_class(parameters, lr=optim.learning_rate, **setting)
        alpha = optim.final_lr_fraction

        def cosine_factor(t):  # the learning rate of step t over the peak: cosine decay from 1 to alpha
            return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(t, total_steps) / total_steps)) + alpha

        cosine = torch.optim.lr_scheduler.LambdaLR(torch_opt, cosine_factor)
        tx = builders.build_optimizer(optim, total_steps)
        opt_state = tx.init(params)
        grad_fn = jax.jit(jax.grad(lambda p, xb, eb: _jax_batch_loss(p, xb, eb, model)[0]))
        rng = np.random.default_rng(2)
        norms = []
        for _ in range(total_steps + 2):  # two steps past the schedule's end, at its final rate
            eps = rng.normal(size=(BATCH, SAMPLES, LATENT))
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = tx.update(grad_fn(params, jnp.asarray(x), jnp.asarray(eps)), opt_state, params)
            params = jax.tree.map(lambda p, u: p + u, params, updates)
            torch_opt.zero_grad()
            reference.terms(torch.tensor(x), torch.tensor(eps))[0].mean().backward()
            norms.append(_torch_clip_by_global_norm(parameters, optim.grad_clip_norm))
            if name == "adam_normgrad":
                _torch_normalize_each_tensor(parameters)
            torch_opt.step()
            cosine.step()
        after = TorchVAE(LATENT, list(ENCODER_HIDDEN), list(DECODER_HIDDEN)).load_flax(params, torch.float64)
        for ours, theirs in zip(after.parameters(), reference.parameters()):
            np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert min(norms) > optim.grad_clip_norm, "clipping must be active in every step for the test to check it"
    # The parameters did move: eight steps of size ~1e-2 or less.
    moved = np.abs(next(after.parameters()).detach().numpy() - np.asarray(
        flax_dense_layers(_setup(jnp.float32)[1])["encoder"][0][0]).T).max()
    assert moved > 1e-3


def test_importance_weighted_bound_agrees_in_float64():
    with jax.enable_x64(True):
        model, params, x, _ = _setup(jnp.float64)
        eps = np.random.default_rng(3).normal(size=(BATCH, 50, LATENT))

        def bound(xi, ei):
            log_w = objective.log_weights(model.joint_samples_from_noise(params, xi, ei))
            return jax.nn.logsumexp(log_w) - jnp.log(50.0)

        ours = jax.vmap(bound)(jnp.asarray(x), jnp.asarray(eps))
        reference = TorchVAE(LATENT, list(ENCODER_HIDDEN), list(DECODER_HIDDEN)).load_flax(params, torch.float64)
        theirs = reference.iwae_bound(torch.tensor(x), torch.tensor(eps)).detach().numpy()
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-10)


@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_hierarchical_vae_log_weights_and_gradients_agree_in_float64(prior):
    config = configs.ModelConfig(latent_dim=LATENT, encoder_hidden=(24, 16), decoder_hidden=(16, 20),
                                 activation="gated", logvar_bound=6.0, prior=prior, prior_components=7,
                                 stochastic_layers=2)
    model = builders.build_model(config, MNIST)
    params = model.init(jax.random.key(0), jnp.zeros(784))
    rng = np.random.default_rng(4)
    x = (rng.random((3, 784)) < 0.3).astype(np.float64)
    eps1, eps2 = rng.normal(size=(2, 3, SAMPLES, LATENT))
    module = model.module
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        # Biases away from Flax's zeros, so that below each parameter is told apart by its values.
        params = jax.tree_util.tree_map_with_path(
            lambda path, p: p + 0.1 * rng.standard_normal(p.shape) if path[-1].key == "bias" else p, params)

        def loss(p):
            def one(xi, e1, e2):
                return module.apply(p, xi, e1, e2, method=module.joint_samples_from_noise)

            samples = jax.vmap(one)(jnp.asarray(x), jnp.asarray(eps1), jnp.asarray(eps2))
            return jnp.mean(jax.vmap(objective.elbo_terms_from_samples)(samples).nelbo), samples

        (ours_loss, samples), grads = jax.value_and_grad(loss, has_aux=True)(params)
    reference = TorchHVAE(params, bound=6.0, dtype=torch.float64)
    theirs = [reference.log_densities(torch.tensor(xi), torch.tensor(e1), torch.tensor(e2))
              for xi, e1, e2 in zip(x, eps1, eps2)]
    for field, index in (("log_likelihood", 0), ("log_prior", 1), ("log_posterior", 2)):
        expected = np.stack([t[index].detach().numpy() for t in theirs])
        np.testing.assert_allclose(np.asarray(getattr(samples, field)), expected, rtol=1e-10)
    log_w = np.stack([(t[0] + t[1] - t[2]).detach().numpy() for t in theirs])
    np.testing.assert_allclose(np.asarray(objective.log_weights(samples)), log_w, rtol=1e-10)
    # -ELBO with the Monte-Carlo KL, and its gradient with respect to every parameter.
    theirs_loss = torch.stack([-(t[0] + t[1] - t[2]).mean() for t in theirs]).mean()
    theirs_loss.backward()
    np.testing.assert_allclose(float(ours_loss), theirs_loss.item(), rtol=1e-10)
    ours = {jax.tree_util.keystr(path): (np.asarray(value), np.asarray(grad)) for (path, value), grad in
            zip(jax.tree_util.tree_leaves_with_path(params["params"]), jax.tree.leaves(grads["params"]))}
    compared = set()
    for name, parameter in reference.named_parameters():
        as_flax = (lambda a: a.T) if name.endswith("weight") else (lambda a: a)  # torch weights are [out, in]
        value = as_flax(parameter.detach().numpy())
        [path] = [path for path, (ours_value, _) in ours.items() if np.array_equal(ours_value, value)]
        theirs_grad = as_flax(parameter.grad.numpy())
        np.testing.assert_allclose(ours[path][1], theirs_grad, rtol=1e-10, atol=1e-10 * np.abs(theirs_grad).max(),
                                   err_msg=path)
        compared.add(path)
    assert compared == set(ours) and len(ours) == (49 if prior == "vamp" else 48)


def test_conv_encoder_and_decoder_match_pytorch():
    from tests.torch_reference import conv_decoder, conv_encoder

    config = configs.ModelConfig(LATENT, (24,), (24,), "elu", architecture="conv", conv_channels=(4, 8))
    model = builders.build_model(config, MNIST)
    params = model.init(jax.random.key(0), jnp.zeros(784))
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        rng = np.random.default_rng(2)
        x, z = (rng.random((BATCH, 784)) < 0.3).astype(np.float64), rng.normal(size=(BATCH, LATENT))
        mean, logvar = model.posterior(params, x)
        logits = model.decoder.apply(params["decoder"], z)
    theirs_mean, theirs_logvar = conv_encoder(params["encoder"], torch.tensor(x))
    np.testing.assert_allclose(mean, theirs_mean.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logvar, theirs_logvar.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logits, conv_decoder(params["decoder"], torch.tensor(z), channels=8).numpy(),
                               rtol=1e-10, atol=1e-12)
