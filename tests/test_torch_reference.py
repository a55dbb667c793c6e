"""vae_jax against an independent PyTorch implementation with copied weights and the same noise.

Tolerances: float64 agrees to 1e-10 relative (only summation order differs); float32 to 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from tests.torch_reference import TorchVAE, flax_dense_layers
from vae_jax import configs, models, objective, train

LATENT, ENCODER_HIDDEN, DECODER_HIDDEN = 4, (32, 24), (24, 32)
BATCH, SAMPLES = 8, 3


def _setup(dtype):
    encoder, decoder = models.build_models(configs.ModelConfig(LATENT, ENCODER_HIDDEN, DECODER_HIDDEN, "elu"))
    params = jax.tree.map(lambda p: p.astype(dtype), train.init_params(jax.random.key(0), encoder, decoder))
    rng = np.random.default_rng(1)
    x = (rng.random((BATCH, 784)) < 0.3).astype(np.float64)
    eps = rng.normal(size=(BATCH, SAMPLES, LATENT))
    return encoder, decoder, params, x, eps


def _jax_batch_loss(params, x, eps, encoder, decoder):
    def per_example(xi, ei):
        return objective.elbo_terms_from_noise(params, xi, ei, encoder=encoder, decoder=decoder)

    terms = jax.vmap(per_example)(x, eps)
    return jnp.mean(terms.nelbo), terms


@pytest.mark.parametrize("jax_dtype,torch_dtype,rtol", [
    (jnp.float64, torch.float64, 1e-10),
    (jnp.float32, torch.float32, 1e-5),
])
def test_terms_and_gradients_agree(jax_dtype, torch_dtype, rtol):
    with jax.enable_x64(jax_dtype == jnp.float64):
        encoder, decoder, params, x, eps = _setup(jax_dtype)
        (loss, terms), grads = jax.value_and_grad(_jax_batch_loss, has_aux=True)(
            params, jnp.asarray(x, jax_dtype), jnp.asarray(eps, jax_dtype), encoder, decoder)
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


def test_adam_steps_agree_in_float64():
    with jax.enable_x64(True):
        encoder, decoder, params, x, _ = _setup(jnp.float64)
        reference = TorchVAE(LATENT, list(ENCODER_HIDDEN), list(DECODER_HIDDEN)).load_flax(params, torch.float64)
        torch_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
        tx = optax.adam(1e-2)
        opt_state = tx.init(params)
        grad_fn = jax.jit(jax.grad(lambda p, xb, eb: _jax_batch_loss(p, xb, eb, encoder, decoder)[0]))
        rng = np.random.default_rng(2)
        for _ in range(5):
            eps = rng.normal(size=(BATCH, SAMPLES, LATENT))
            updates, opt_state = tx.update(grad_fn(params, jnp.asarray(x), jnp.asarray(eps)), opt_state, params)
            params = optax.apply_updates(params, updates)
            torch_opt.zero_grad()
            reference.terms(torch.tensor(x), torch.tensor(eps))[0].mean().backward()
            torch_opt.step()
        after = TorchVAE(LATENT, list(ENCODER_HIDDEN), list(DECODER_HIDDEN)).load_flax(params, torch.float64)
        for ours, theirs in zip(after.parameters(), reference.parameters()):
            np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=1e-9, atol=1e-12)
        # The parameters did move: five steps of size ~1e-2 each.
        moved = np.abs(next(after.parameters()).detach().numpy() - np.asarray(
            flax_dense_layers(_setup(jnp.float64)[2])["encoder"][0][0]).T).max()
        assert moved > 1e-3


def test_importance_weighted_bound_agrees_in_float64():
    with jax.enable_x64(True):
        encoder, decoder, params, x, _ = _setup(jnp.float64)
        eps = np.random.default_rng(3).normal(size=(BATCH, 50, LATENT))

        def bound(xi, ei):
            log_w = objective.log_importance_weights_from_noise(params, xi, ei, encoder=encoder, decoder=decoder)
            return jax.nn.logsumexp(log_w) - jnp.log(50.0)

        ours = jax.vmap(bound)(jnp.asarray(x), jnp.asarray(eps))
        reference = TorchVAE(LATENT, list(ENCODER_HIDDEN), list(DECODER_HIDDEN)).load_flax(params, torch.float64)
        theirs = reference.iwae_bound(torch.tensor(x), torch.tensor(eps)).detach().numpy()
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-10)


def test_conv_encoder_and_decoder_match_pytorch():
    from tests.torch_reference import conv_decoder, conv_encoder

    config = configs.ModelConfig(LATENT, (24,), (24,), "elu", architecture="conv", conv_channels=(4, 8))
    encoder, decoder = models.build_models(config)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), train.init_params(jax.random.key(0), encoder, decoder))
        rng = np.random.default_rng(2)
        x, z = (rng.random((BATCH, 784)) < 0.3).astype(np.float64), rng.normal(size=(BATCH, LATENT))
        mean, logvar = encoder.apply(params["encoder"], x)
        logits = decoder.apply(params["decoder"], z)
    theirs_mean, theirs_logvar = conv_encoder(params["encoder"], torch.tensor(x))
    np.testing.assert_allclose(mean, theirs_mean.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logvar, theirs_logvar.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logits, conv_decoder(params["decoder"], torch.tensor(z), channels=8).numpy(),
                               rtol=1e-10, atol=1e-12)
