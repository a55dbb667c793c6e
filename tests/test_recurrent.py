"""The sequence models of `vae_jax.recurrent`: the VRNN against an independent float64 PyTorch implementation with
copied weights and the same noise (per-sequence terms and gradients, to 1e-10 relative), padding that changes
nothing, the baseline's probabilities that sum to 1 over every sequence of a tiny space, the frame logits of
the figures that are the model's own likelihood, and the closed-form KL between two Gaussians against
PyTorch's."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vae_jax import distributions, objective, recurrent
from vae_jax.contract import as_model
from vae_jax.sequences import Sequence

LATENT, HIDDEN, FEATURES, KEYS = 3, 6, 5, 7
SMALL = dict(latent_dim=LATENT, hidden=HIDDEN, features=FEATURES)
MODELS = {
    "rnn": recurrent.RNNBaseline(hidden=HIDDEN, features=FEATURES),
    "vrnn": recurrent.VRNN(**SMALL),
    "srnn": recurrent.SRNN(**SMALL),
    "dmm": recurrent.DMM(**SMALL),
}


def _rolls(seed: int, num_frames: int, keys: int = KEYS) -> np.ndarray:
    return (np.random.default_rng(seed).random((num_frames, keys)) < 0.3).astype(np.uint8)


def _init(model, frames: np.ndarray, dtype=jnp.float64):
    """The model's float32 initial parameters (initialized outside float64 mode), as `dtype`."""
    with jax.enable_x64(False):
        params = as_model(model).init(jax.random.key(0), Sequence(jnp.asarray(frames), jnp.asarray(len(frames))))
    return jax.tree.map(lambda p: p.astype(dtype), params)


def _layer(params, dtype=torch.float64):
    return torch.tensor(np.asarray(params["kernel"]), dtype=dtype).T, torch.tensor(np.asarray(params["bias"]),
                                                                                  dtype=dtype)


class TorchVRNN:
    """The VRNN of Chung et al. (2015), written step by step in PyTorch from the paper's equations (with a GRU), its
    weights copied from vae_jax's `VRNN` parameters."""

    def __init__(self, params):
        step = params["params"]["step"]
        self.weights = {name: [t.requires_grad_() for t in _layer(step[name]["Dense_0"])]
                        for name in ("phi_x", "phi_z", "prior", "encoder", "decoder")}
        for name in ("prior_head", "encoder_head", "logits"):
            self.weights[name] = [t.requires_grad_() for t in _layer(step[name])]
        self.gru = torch.nn.GRUCell(FEATURES * 2, HIDDEN, dtype=torch.float64)
        with torch.no_grad():
            for part, suffix in (("input", "ih"), ("hidden", "hh")):
                kernel, bias = _layer(step["rnn"][part])
                getattr(self.gru, f"weight_{suffix}").copy_(kernel)
                getattr(self.gru, f"bias_{suffix}").copy_(bias)

    def _dense(self, name, h, relu=True):
        kernel, bias = self.weights[name]
        out = torch.nn.functional.linear(h, kernel, bias)
        return torch.relu(out) if relu else out

    def _gaussian(self, body, head, h):
        mean, raw = self._dense(head, self._dense(body, h), relu=False).chunk(2, dim=-1)
        logvar = 10.0 * torch.tanh(raw / 10.0)  # the models' default logvar_bound
        return torch.distributions.Normal(mean, torch.exp(0.5 * logvar)), mean, logvar

    def terms(self, frames, length, eps):
        """Sums over the first `length` steps of log p(x|z), log p(z), log q(z|x) and the step KLs, each `[S]`."""
        samples = eps.shape[1]
        h = torch.zeros(samples, HIDDEN, dtype=torch.float64)
        totals = [torch.zeros(samples, dtype=torch.float64) for _ in range(4)]
        for t in range(length):
            x = frames[t]
            phi_x = self._dense("phi_x", x).expand(samples, FEATURES)
            prior, _, _ = self._gaussian("prior", "prior_head", h)
            posterior, mean, logvar = self._gaussian("encoder", "encoder_head", torch.cat([phi_x, h], -1))
            z = mean + torch.exp(0.5 * logvar) * eps[t]
            phi_z = self._dense("phi_z", z)
            logits = self._dense("logits", self._dense("decoder", torch.cat([phi_z, h], -1)), relu=False)
            step_terms = (torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1),
                          prior.log_prob(z).sum(-1), posterior.log_prob(z).sum(-1),
                          torch.distributions.kl_divergence(posterior, prior).sum(-1))
            totals = [total + term for total, term in zip(totals, step_terms)]
            h = self.gru(torch.cat([phi_x, phi_z], -1), h)
        return tuple(totals)


def test_vrnn_terms_and_gradients_equal_a_pytorch_reference_in_float64():
    frames, length, samples = _rolls(1, 9), 7, 4  # two padded frames at the end
    eps = np.random.default_rng(2).normal(size=(9, samples, LATENT))
    with jax.enable_x64(True):
        model = MODELS["vrnn"]
        params = _init(model, frames)
        x = Sequence(jnp.asarray(frames), jnp.asarray(length))

        def nelbo(params):
            joint = model.apply(params, x, jnp.asarray(eps), method=recurrent.VRNN.joint_samples_from_noise)
            return objective.elbo_terms_from_samples(joint).nelbo, joint

        (loss, joint), grads = jax.value_and_grad(nelbo, has_aux=True)(params)
        reference = TorchVRNN(params)
        log_likelihood, log_prior, log_posterior, kl = reference.terms(
            torch.tensor(frames, dtype=torch.float64), length, torch.tensor(eps))
        reference_loss = -log_likelihood.mean() + kl.mean()
        reference_loss.backward()
    for ours, theirs in ((joint.log_likelihood, log_likelihood), (joint.log_prior, log_prior),
                         (joint.log_posterior, log_posterior), (joint.kl, kl), (loss, reference_loss)):
        np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=1e-10)
    step_grads = grads["params"]["step"]
    for name, (kernel, bias) in reference.weights.items():
        ours = step_grads[name]["Dense_0"] if "Dense_0" in step_grads[name] else step_grads[name]
        np.testing.assert_allclose(np.asarray(ours["kernel"]).T, kernel.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(ours["bias"]), bias.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(step_grads["rnn"]["hidden"]["kernel"]).T,
                               reference.gru.weight_hh.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_padding_and_what_lies_in_it_change_nothing(name):
    model, frames = as_model(MODELS[name]), _rolls(3, 11)
    with jax.enable_x64(True):
        params = _init(MODELS[name], frames)
        alone = model.joint_samples(params, Sequence(jnp.asarray(frames), jnp.asarray(11)), jax.random.key(5), 3)
        padded = np.concatenate([frames, _rolls(4, 8)])  # the padding holds notes, which must be ignored
        batch = Sequence(jnp.asarray(np.stack([padded, _rolls(6, 19)])), jnp.asarray([11, 19]))
        in_batch = jax.vmap(lambda x: model.joint_samples(params, x, jax.random.key(5), 3))(batch)
    for ours, padded_ones in zip(alone, in_batch):
        if ours is not None:
            np.testing.assert_allclose(np.asarray(padded_ones[0]), np.asarray(ours), rtol=1e-12, atol=1e-12)
    assert np.asarray(in_batch.log_likelihood[1] != in_batch.log_likelihood[0]).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_frame_logits_are_the_likelihood_the_model_scores(name):
    """Bernoulli log-probabilities of the frames under `frame_logits`, summed over the sequence's own frames, equal
    the log-likelihood of its joint samples drawn with the same noise (an independent NumPy sum; the padding's
    logits are left out)."""
    model, frames = MODELS[name], np.concatenate([_rolls(8, 9), _rolls(9, 4)])
    x = Sequence(jnp.asarray(frames), jnp.asarray(9))
    with jax.enable_x64(True):
        params = _init(model, frames)
        eps = recurrent.step_noise(jax.random.key(3), 13, 2, LATENT, jnp.float64)
        logits = model.apply(params, x, eps, method=type(model).frame_logits)
        joint = (as_model(model).joint_samples(params, x, jax.random.key(0), 2) if name == "rnn"
                 else model.apply(params, x, eps, method=type(model).joint_samples_from_noise))
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits)[:9]))
    log_p = np.sum(np.where(frames[:9, None] == 1, np.log(p), np.log1p(-p)), axis=(0, 2))
    assert p.shape == (9, 1 if name == "rnn" else 2, KEYS)
    np.testing.assert_allclose(np.broadcast_to(log_p, joint.log_likelihood.shape), np.asarray(joint.log_likelihood),
                               rtol=1e-10)


def test_the_baseline_is_a_distribution_over_sequences():
    """Its probabilities of all 2^(T D) binary sequences of T = 2 frames of D = 3 keys sum to 1."""
    model = recurrent.RNNBaseline(hidden=HIDDEN, features=FEATURES)
    sequences = np.array(list(itertools.product([0, 1], repeat=6)), np.uint8).reshape(64, 2, 3)
    with jax.enable_x64(True):
        params = _init(model, sequences[0])
        log_p = jax.vmap(lambda f: as_model(model).joint_samples(params, Sequence(f, jnp.asarray(2)),
                                                                 jax.random.key(0), 1).log_likelihood[0])(
            jnp.asarray(sequences))
        assert abs(float(jnp.sum(jnp.exp(log_p))) - 1.0) < 1e-12
        # and the first frame alone: a sequence of length 1 sums to 1 over its 8 values
        first = jax.vmap(lambda f: as_model(model).joint_samples(params, Sequence(f, jnp.asarray(1)),
                                                                 jax.random.key(0), 1).log_likelihood[0])(
            jnp.asarray(sequences[::8]))
        assert abs(float(jnp.sum(jnp.exp(first))) - 1.0) < 1e-12


@pytest.mark.parametrize("name", ["vrnn", "srnn", "dmm"])
def test_the_elbo_of_a_latent_model_lies_below_its_importance_weighted_bound(name):
    model, frames = as_model(MODELS[name]), _rolls(7, 12)
    with jax.enable_x64(True):
        params = _init(MODELS[name], frames)
        x = Sequence(jnp.asarray(frames), jnp.asarray(12))
        samples = objective.importance_samples(model, params, x, jax.random.key(1), jnp.arange(64))
        weights = objective.log_weights(samples)
        iwae = jax.nn.logsumexp(weights) - jnp.log(64.0)
        # the closed-form step KLs average, over the same samples, to within Monte-Carlo error of log q - log p
        kl_estimate = samples.log_posterior - samples.log_prior
        difference = np.asarray(kl_estimate - samples.kl)
        mean_weight = float(jnp.mean(weights))
    assert mean_weight < float(iwae)
    assert abs(difference.mean()) < 4 * difference.std() / 8.0


def test_gaussian_kl_between_two_diagonal_gaussians_equals_pytorch_and_the_standard_case():
    rng = np.random.default_rng(0)
    mean_q, logvar_q, mean_p, logvar_p = (rng.normal(size=(5, 4)) * 2 for _ in range(4))
    with jax.enable_x64(True):
        ours = distributions.gaussian_kl_per_dim_between(mean_q, logvar_q, mean_p, logvar_p)
        standard = distributions.gaussian_kl_per_dim_between(mean_q, logvar_q, 0.0, 0.0)
        expected_standard = distributions.gaussian_kl_per_dim(mean_q, logvar_q)
    normal = lambda m, lv: torch.distributions.Normal(torch.tensor(m), torch.tensor(np.exp(0.5 * lv)))  # noqa: E731
    theirs = torch.distributions.kl_divergence(normal(mean_q, logvar_q), normal(mean_p, logvar_p)).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(standard), np.asarray(expected_standard), rtol=1e-12)
