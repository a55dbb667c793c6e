"""Where a trained VAE's samples start: densities over its latent space other than the prior it was trained with.

A VAE's prior p(z) and its aggregate posterior q(z) = E_x q(z|x) differ; decoding prior draws that fall where q(z)
has little mass gives the blurry or malformed samples VAEs are known for. Each sampler here maps a key to one code
`[J]`, which the model's `decode` turns into an image (`vae_jax.generation.draw_images`):

- `temperature_sampler`: z = T eps, eps ~ N(0, I): the prior scaled (T < 1 trades diversity for typicality); for
  models whose prior is N(0, I).
- `GaussianMixture`: ex-post density estimation (Ghosh et al., 2020): a full-covariance Gaussian mixture fitted by
  EM (Dempster et al., 1977) to codes of the training split.
- `SecondStage`: the two-stage VAE (Dai & Wipf, 2019): a second, small VAE with a Gaussian likelihood of learned
  variance gamma, fitted to the codes; samples are its draws u ~ N(0, I), z ~ p(z|u).

The codes to fit are `aggregate_posterior_codes`: one draw z ~ q(z|x_n) per training example, keyed by the example's
index, i.e. a sample of q(z) itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.special

from vae_jax import distributions, models
from vae_jax.contract import Params
from vae_jax.evaluate import map_in_chunks

LatentSampler = Callable[[jax.Array], jax.Array]  # key -> one code `[J]`


def temperature_sampler(latent_dim: int, temperature: float) -> LatentSampler:
    """Codes z = T eps, eps ~ N(0, I_J): the N(0, I) prior with its standard deviation scaled by `temperature`."""
    if temperature <= 0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    return lambda key: temperature * jax.random.normal(key, (latent_dim,))


def aggregate_posterior_codes(model: Any, params: Params, pixels: jax.Array, key: jax.Array,
                              batch_size: int = 1000) -> np.ndarray:
    """`[N, J]` float64: one code z_n ~ q(z|x_n) per example of `[N, D]` inputs (as the encoder reads them: 0/1 or
    grey levels), drawn with `fold_in(key, n)`; needs the contract's optional `posterior`."""
    if not hasattr(model, "posterior"):
        raise TypeError(f"{type(model).__name__} has no `posterior(params, x)`; ex-post densities need one")

    def one(x: jax.Array, index: jax.Array) -> jax.Array:
        mean, logvar = model.posterior(params, x.astype(jnp.float32))
        eps = jax.random.normal(jax.random.fold_in(key, index), mean.shape, mean.dtype)
        return distributions.reparameterize(mean, logvar, eps)

    return map_in_chunks(jax.vmap(one), len(pixels), (pixels,), batch_size).astype(np.float64)


class GaussianMixture(NamedTuple):
    """A mixture of K full-covariance Gaussians over `[J]` codes.

    Attributes:
        log_weights: `[K]` log mixing weights.
        means: `[K, J]`.
        cholesky: `[K, J, J]` lower Cholesky factors of the covariances.
    """

    log_weights: np.ndarray
    means: np.ndarray
    cholesky: np.ndarray

    def log_density(self, codes: np.ndarray) -> np.ndarray:
        """`[N]` log-density of `[N, J]` codes, in nats."""
        return scipy.special.logsumexp(_component_log_densities(self, codes), axis=1)

    def sampler(self) -> LatentSampler:
        """Codes drawn from the mixture: a component by its weight, then its Gaussian (float32)."""
        log_weights, means, cholesky = (jnp.asarray(a, jnp.float32) for a in self)

        def sample(key: jax.Array) -> jax.Array:
            component_key, noise_key = jax.random.split(key)
            component = jax.random.categorical(component_key, log_weights)
            return means[component] + cholesky[component] @ jax.random.normal(noise_key, means.shape[1:])
        return sample


def _component_log_densities(mixture: GaussianMixture, codes: np.ndarray) -> np.ndarray:
    """`[N, K]`: log w_k + log N(z_n | mu_k, Sigma_k) of `[N, J]` codes."""
    centred = codes[:, None, :] - mixture.means[None]  # [N, K, J]
    solved = np.stack([np.linalg.solve(factor, centred[:, k].T).T for k, factor in enumerate(mixture.cholesky)], 1)
    log_det = 2 * np.log(np.diagonal(mixture.cholesky, axis1=1, axis2=2)).sum(axis=1)
    dim = codes.shape[1]
    return mixture.log_weights - 0.5 * (np.sum(solved**2, axis=2) + log_det + dim * distributions.LOG_2PI)


def fit_gaussian_mixture(codes: np.ndarray, num_components: int, key: jax.Array, iterations: int = 100,
                         ridge: float = 1e-6) -> tuple[GaussianMixture, np.ndarray]:
    """EM for a full-covariance Gaussian mixture on `[N, J]` codes, in float64.

    Starts from K codes drawn without replacement (by `key`) as means, the codes' covariance for every component and
    equal weights; `ridge` is added to each covariance's diagonal. Returns the mixture and `[iterations]` mean
    log-likelihood per code before each M-step (non-decreasing: EM's guarantee).
    """
    codes = np.asarray(codes, np.float64)
    count, dim = codes.shape
    start = np.asarray(jax.random.choice(key, count, (num_components,), replace=False))
    cholesky = np.linalg.cholesky(np.cov(codes, rowvar=False) + ridge * np.eye(dim))
    mixture = GaussianMixture(np.full(num_components, -np.log(num_components)), codes[start],
                              np.repeat(cholesky[None], num_components, axis=0))
    history = []
    for _ in range(iterations):
        joint = _component_log_densities(mixture, codes)
        log_evidence = scipy.special.logsumexp(joint, axis=1)
        history.append(log_evidence.mean())
        responsibilities = np.exp(joint - log_evidence[:, None])  # [N, K]
        totals = responsibilities.sum(axis=0) + 1e-12
        means = responsibilities.T @ codes / totals[:, None]
        covariances = [(responsibilities[:, k, None] * (codes - means[k])).T @ (codes - means[k]) / totals[k]
                       + ridge * np.eye(dim) for k in range(num_components)]
        mixture = GaussianMixture(np.log(totals / count), means, np.linalg.cholesky(np.stack(covariances)))
    return mixture, np.array(history)


class SecondStageVAE(nn.Module):
    """The second stage of Dai & Wipf (2019): a VAE over `[J]` codes z with latents u of the same size,
    q(u|z) = N(mean(z), diag exp(logvar(z))), p(u) = N(0, I), p(z|u) = N(decoded(u), gamma I) with a learned gamma.

    Attributes:
        code_dim: J.
        hidden: widths of both networks' hidden layers.
    """

    code_dim: int
    hidden: tuple[int, ...] = (512, 512)

    def setup(self) -> None:
        self.encoder = models.Encoder(self.code_dim, self.hidden)
        self.decoder = nn.Sequential([models.MLP(self.hidden), nn.Dense(self.code_dim)])
        self.log_gamma = self.param("log_gamma", nn.initializers.zeros, ())

    def __call__(self, z: jax.Array, eps: jax.Array) -> jax.Array:
        """The one-sample negative ELBO `[]` of one code `z [J]` with noise `eps [J]`, in nats:
        1/2 (|z - decoded(u)|^2 / gamma + J log(2 pi gamma)) + KL(q(u|z) || N(0, I))."""
        mean, logvar = self.encoder(z)
        u = distributions.reparameterize(mean, logvar, eps)
        log_likelihood = distributions.gaussian_log_prob(z, self.decoder(u), jnp.full_like(z, self.log_gamma))
        return -log_likelihood + jnp.sum(distributions.gaussian_kl_per_dim(mean, logvar))

    def decode(self, u: jax.Array) -> jax.Array:
        """The mean of p(z|u), `[..., J] -> [..., J]`."""
        return self.decoder(u)


class SecondStage(NamedTuple):
    """A fitted second-stage VAE: its `module`, `params` and `[epochs]` mean negative ELBO per code."""

    module: SecondStageVAE
    params: Params
    history: np.ndarray

    def sampler(self) -> LatentSampler:
        """Codes drawn from the second stage's model of q(z): u ~ N(0, I), then z ~ p(z|u) = N(decoded(u), gamma I).
        Dai & Wipf (2019) decode the mean alone, for a first stage whose gamma went to 0 on a manifold; the
        aggregate posterior of a Bernoulli VAE has full-rank noise (its inactive units are N(0, 1) in q(z)), which the
        gamma term carries."""
        def sample(key: jax.Array) -> jax.Array:
            u_key, z_key = jax.random.split(key)
            dim = self.module.code_dim
            mean = self.module.apply(self.params, jax.random.normal(u_key, (dim,)), method=SecondStageVAE.decode)
            noise = jax.random.normal(z_key, (dim,))
            return mean + jnp.exp(0.5 * self.params["params"]["log_gamma"]) * noise
        return sample


def fit_second_stage(codes: np.ndarray, key: jax.Array, *, epochs: int = 30, batch_size: int = 100,
                     learning_rate: float = 1e-3, hidden: tuple[int, ...] = (512, 512)) -> SecondStage:
    """Fits a `SecondStageVAE` to `[N, J]` codes by Adam on the one-sample negative ELBO. Epoch e visits the codes in
    the order `permutation(fold_in(train_key, e))`; code n's noise in it is `fold_in(fold_in(train_key, e), n)`
    (`init_key, train_key = split(key)`)."""
    codes = jnp.asarray(codes, jnp.float32)
    module = SecondStageVAE(codes.shape[1], hidden)
    init_key, key = jax.random.split(key)
    params = module.init(init_key, codes[0], jnp.zeros(codes.shape[1]))
    optimizer = optax.adam(learning_rate)
    steps = len(codes) // batch_size
    epoch = jax.jit(functools.partial(_second_stage_epoch, module, optimizer, codes, steps=steps,
                                      batch_size=batch_size))
    carry, history = (params, optimizer.init(params)), []
    for number in range(epochs):
        carry, losses = epoch(carry, jax.random.fold_in(key, number))
        history.append(float(losses.mean()))
    return SecondStage(module, carry[0], np.array(history))


def _second_stage_epoch(module: SecondStageVAE, optimizer: optax.GradientTransformation, codes: jax.Array,
                        carry: tuple[Params, Any], epoch_key: jax.Array, *, steps: int,
                        batch_size: int) -> tuple[tuple[Params, Any], jax.Array]:
    """One epoch of `fit_second_stage` as a scan over its `steps` batches; returns the carry and `[steps]` losses."""
    order = jax.random.permutation(epoch_key, len(codes))[:steps * batch_size].reshape(steps, batch_size)

    def loss(params: Params, indices: jax.Array) -> jax.Array:
        eps = jax.vmap(lambda n: jax.random.normal(jax.random.fold_in(epoch_key, n), codes.shape[1:]))(indices)
        return jnp.mean(jax.vmap(lambda z, e: module.apply(params, z, e))(codes[indices], eps))

    def step(carry: tuple[Params, Any], indices: jax.Array) -> tuple[tuple[Params, Any], jax.Array]:
        params, opt_state = carry
        value, grads = jax.value_and_grad(loss)(params, indices)
        with jax.numpy_dtype_promotion("standard"):  # Optax mixes its int32 step count with floats
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return jax.lax.scan(step, carry, order)
