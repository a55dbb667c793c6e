"""Latent-variable models of sequences, and the recurrent baseline without latents, as models of `vae_jax.contract`.

A sequence example is a `vae_jax.sequences.Sequence(frames [T, D], length [])` of binary frames (piano rolls). Each
model runs one `lax.scan` over time (SRNN: one per direction), with the S samples as a batch inside the step, and
sums its per-step log-densities over the sequence's own `length` frames:

    log p(x_1:T | z_1:T) = sum_t log p(x_t | z_<=t, x_<t)      log p(z_1:T) = sum_t log p(z_t | z_<t, x_<t)
    log q(z_1:T | x_1:T) = sum_t log q(z_t | z_<t, x)

The KL it reports, one per sample, is sum_t KL(q(z_t | .) || p(z_t | .)) in closed form at each step, given the
sampled z_<t: an unbiased estimate of KL(q(z_1:T | x) || p(z_1:T)), with less variance than log q - log p, whose
expectation the ELBO's is (Chung et al., 2015, eq. 11; Fraccaro et al., 2016, eq. 9). Step t's noise is
`normal(fold_in(key, t))` (`step_noise`), so padding a sequence changes none of its numbers.

- `RNNBaseline`: p(x_t | x_<t) Bernoulli from a GRU over the past frames; no latent variable (its log-weight is
  log p(x) itself), which shows what the latents add.
- `VRNN` (Chung et al., 2015): a GRU state h_t over x_<=t and z_<=t; the prior p(z_t | h_t-1) is learned, the
  posterior q(z_t | x_t, h_t-1) filters, and p(x_t | z_t, h_t-1).
- `SRNN` (Fraccaro et al., 2016): a deterministic GRU d_t over x_<t, a stochastic chain p(z_t | z_t-1, d_t), and
  a smoothing posterior q(z_t | z_t-1, a_t) from a backward GRU a_t over (d_t:T, x_t:T), whose mean is the prior's
  plus a learned correction ("resq"); p(x_t | z_t, d_t).
- `DMM`, the deep Markov model (Krishnan et al., 2017): a purely stochastic chain with a gated transition
  p(z_t | z_t-1), p(x_t | z_t), and the structured posterior q(z_t | z_t-1, a_t) of a backward GRU a_t over x_t:T
  (their "ST-R" combiner).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import distributions, models, particles
from vae_jax.contract import JointSamples
from vae_jax.sequences import Sequence


class StepTerms(NamedTuple):
    """The log-densities of one time step for S samples, 0 at padded steps.

    Attributes:
        log_likelihood: `[S]` log p(x_t | .).
        log_prior: `[S]` log p(z_t | .).
        log_posterior: `[S]` log q(z_t | .).
        kl_per_dim: `[S, J]` KL(q(z_t | .) || p(z_t | .)) of each latent dimension, in closed form.
    """

    log_likelihood: jax.Array
    log_prior: jax.Array
    log_posterior: jax.Array
    kl_per_dim: jax.Array


def step_noise(key: jax.Array, num_frames: int, num_samples: int, latent_dim: int, dtype: Any) -> jax.Array:
    """`[T, S, J]` standard normal noise, step t's drawn from `fold_in(key, t)` whatever T is."""
    return jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(key, t), (num_samples, latent_dim), dtype))(
        jnp.arange(num_frames))


def gaussian_step_terms(x: jax.Array, logits: jax.Array, eps: jax.Array, posterior: tuple[jax.Array, jax.Array],
                        prior: tuple[jax.Array, jax.Array], mask: jax.Array) -> StepTerms:
    """The `StepTerms` of one step with Gaussian q and p and Bernoulli frames.

    Args:
        x: `[D]` the frame, 0/1.
        logits: `[S, D]` Bernoulli logits of p(x_t | .).
        eps: `[S, J]` the noise that drew z_t = mean_q + sigma_q * eps.
        posterior, prior: `(mean, logvar)`, each `[S, J]`.
        mask: `[]` 1 for a real step, 0 for padding.
    """
    z = distributions.reparameterize(*posterior, eps)
    kl = distributions.gaussian_kl_per_dim_between(*posterior, *prior)
    return StepTerms(distributions.bernoulli_log_prob(x, logits) * mask,
                     distributions.gaussian_log_prob(z, *prior) * mask,
                     distributions.gaussian_log_prob_of_noise(eps, posterior[1]) * mask, kl * mask)


def sequence_samples(terms: StepTerms) -> JointSamples:
    """The `JointSamples` of a sequence from its `[T, S, ...]` step terms, summed over time: the KL one per sample
    (`[S]`, and `[S, J]` per latent dimension), the sum of its closed-form step KLs."""
    kl_per_dim = jnp.sum(terms.kl_per_dim, axis=0)
    return JointSamples(jnp.sum(terms.log_likelihood, axis=0), jnp.sum(terms.log_prior, axis=0),
                        jnp.sum(terms.log_posterior, axis=0), jnp.sum(kl_per_dim, axis=-1), kl_per_dim)


class GRU(nn.Module):
    """A GRU cell in PyTorch's form (`torch.nn.GRUCell`), with the matrix precision of `models.MLP`:

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)     u = sigmoid(W_iu x + b_iu + W_hu h + b_hu)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))   h' = (1 - u) * n + u * h

    Its variables: `input` (kernel `[I, 3H]`, bias `[3H]`) and `hidden` (`[H, 3H]`, `[3H]`), gates in the order
    r, u, n. `h [..., H], x [..., I] -> h' [..., H]`.
    """

    features: int
    precision: str | None = "float32"

    @nn.compact
    def __call__(self, h: jax.Array, x: jax.Array) -> jax.Array:
        gates_x = nn.Dense(3 * self.features, precision=self.precision, name="input")(x)
        gates_h = nn.Dense(3 * self.features, precision=self.precision, name="hidden")(h)
        reset_x, update_x, new_x = jnp.split(gates_x, 3, axis=-1)
        reset_h, update_h, new_h = jnp.split(gates_h, 3, axis=-1)
        reset, update = nn.sigmoid(reset_x + reset_h), nn.sigmoid(update_x + update_h)
        candidate = jnp.tanh(new_x + reset * new_h)
        return (1.0 - update) * candidate + update * h


def _scan_steps(cell: nn.Module, start: Any, inputs: tuple[jax.Array, ...], reverse: bool = False) -> tuple[Any, Any]:
    """`cell(carry, inputs_t) -> (carry, outputs_t)` as one `lax.scan` over the leading axis of `inputs` (from the
    last step back with `reverse`), its parameters (those of `cell`, by its name) shared by all steps:
    `(last carry, outputs [T, ...])`."""
    return nn.scan(lambda module, carry, step_inputs: module(carry, step_inputs), variable_broadcast="params",
                   split_rngs={"params": False}, reverse=reverse)(cell, start, inputs)


def _all_steps(cell: nn.Module, start: Any, inputs: tuple[jax.Array, ...]) -> tuple[StepTerms, jax.Array]:
    """A latent model's pass: `(StepTerms [T, S, ...], logits [T, S, D])` of its step `cell` over `inputs`."""
    return _scan_steps(cell, start, inputs)[1]


def _mlp(width: int, activation: str, name: str) -> nn.Module:
    return models.MLP((width,), activation, name=name)


def _frames(x: Sequence) -> tuple[jax.Array, jax.Array]:
    """`(frames [T, D] as floats, mask [T])` of a sequence example: the mask 1 for its first `length` frames, 0 for
    the padding."""
    frames = x.frames.astype(jnp.result_type(float))
    return frames, (jnp.arange(frames.shape[0]) < x.length).astype(frames.dtype)


class _RNNStep(nn.Module):
    hidden: int
    features: int
    activation: str

    @nn.compact
    def __call__(self, h: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x, mask = inputs
        logits = nn.Dense(x.shape[-1], name="logits")(_mlp(self.features, self.activation, "decoder")(h))
        h_next = GRU(self.hidden, name="rnn")(h, _mlp(self.features, self.activation, "phi_x")(x))
        return jnp.where(mask > 0, h_next, h), (distributions.bernoulli_log_prob(x, logits) * mask, logits)


class RNNBaseline(nn.Module):
    """p(x_1:T) = prod_t Bernoulli(x_t; f(h_t-1)), h_t = GRU(h_t-1, phi_x(x_t)), h_0 = 0: no latent variable.

    Attributes:
        hidden: size of the GRU state.
        features: width of the one-layer MLPs phi_x and the output's.
        activation: a name in `configs.ACTIVATIONS`.
    """

    hidden: int = 128
    features: int = 128
    activation: str = "relu"

    @nn.compact
    def _scan(self, x: Sequence) -> tuple[jax.Array, jax.Array]:
        """`(log p(x_t | x_<t) [T], logits [T, D])`, 0 at padded steps."""
        frames, mask = _frames(x)
        step = _RNNStep(self.hidden, self.features, self.activation, name="step")
        return _scan_steps(step, jnp.zeros(self.hidden, frames.dtype), (frames, mask))[1]

    def __call__(self, x: Sequence, key: jax.Array, num_samples: int) -> JointSamples:
        """The contract's samples: log p(x) as each sample's log-likelihood, log p(z) = log q(z) = 0."""
        log_px = jnp.full((num_samples,), jnp.sum(self._scan(x)[0]))
        zeros = jnp.zeros_like(log_px)
        return JointSamples(log_px, zeros, zeros)

    def frame_logits(self, x: Sequence, eps: jax.Array | None = None) -> jax.Array:
        """`[T, 1, D]` the Bernoulli logits of p(x_t | x_<t): the one-step-ahead prediction of each key (no latent:
        `eps` unused)."""
        return self._scan(x)[1][:, None]


class StepSizes(nn.Module):
    """The sizes of a sequence model's step (see `VRNN`), which its cells share."""

    latent_dim: int
    hidden: int
    features: int
    activation: str
    logvar_bound: float


class _VRNNStep(StepSizes):

    @nn.compact
    def __call__(self, h: jax.Array, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, StepTerms]:
        x, eps, mask = inputs  # [D], [S, J], []
        mlp = lambda name: _mlp(self.features, self.activation, name)  # noqa: E731
        phi_x = jnp.broadcast_to(mlp("phi_x")(x), (h.shape[0], self.features))
        gaussian = lambda name, h: models.split_gaussian(  # noqa: E731
            nn.Dense(2 * self.latent_dim, name=name)(h), self.logvar_bound)
        prior = gaussian("prior_head", mlp("prior")(h))
        posterior = gaussian("encoder_head", mlp("encoder")(jnp.concatenate([phi_x, h], axis=-1)))
        phi_z = mlp("phi_z")(distributions.reparameterize(*posterior, eps))
        decoded = mlp("decoder")(jnp.concatenate([phi_z, h], axis=-1))
        logits = nn.Dense(x.shape[-1], name="logits")(decoded)
        h_next = GRU(self.hidden, name="rnn")(h, jnp.concatenate([phi_x, phi_z], axis=-1))
        return (jnp.where(mask > 0, h_next, h),
                (gaussian_step_terms(x, logits, eps, posterior, prior, mask), logits))


class _LatentSequenceModel(nn.Module):
    """What the latent models share: the contract's `__call__` draws the noise; `joint_samples_from_noise` and
    `frame_logits` read the terms and the logits of one pass, `_scan` (each model's own)."""

    latent_dim: int = 16
    hidden: int = 128
    features: int = 128
    activation: str = "relu"
    logvar_bound: float = 10.0

    def __call__(self, x: Sequence, key: jax.Array, num_samples: int) -> JointSamples:
        """`num_samples` joint samples of the sequence `x`, with the noise `step_noise(key, ...)`."""
        eps = step_noise(key, x.frames.shape[0], num_samples, self.latent_dim, jnp.result_type(float))
        return self.joint_samples_from_noise(x, eps)

    def joint_samples_from_noise(self, x: Sequence, eps: jax.Array) -> JointSamples:
        """The joint samples for given noise `eps [T, S, J]`."""
        return sequence_samples(self._scan(x, eps)[0])

    def fivo_bound(self, x: Sequence, key: jax.Array, num_particles: int) -> jax.Array:
        """`[]` the FIVO estimate log p_hat(x) with `num_particles` particles (`vae_jax.particles`): their noise
        `step_noise(fold_in(key, 0), ...)`, their resampling at step t keyed by `fold_in(fold_in(key, 1), t)`."""
        eps = step_noise(jax.random.fold_in(key, 0), x.frames.shape[0], num_particles, self.latent_dim,
                         jnp.result_type(float))
        return self._scan(x, eps, functools.partial(particles.filter_steps, key=jax.random.fold_in(key, 1)))

    def frame_logits(self, x: Sequence, eps: jax.Array) -> jax.Array:
        """`[T, S, D]` the Bernoulli logits of p(x_t | z_t, .) with z_1:T drawn from q by `eps [T, S, J]` (zeros:
        the posterior's means, step by step): the reconstruction of each key."""
        return self._scan(x, eps)[1]

    def _scan(self, x: Sequence, eps: jax.Array, run: Callable[..., Any] = _all_steps) -> Any:
        """`run(cell, start, inputs)` for the model's step cell over the sequence with the noise `eps [T, S, J]`:
        by default `(StepTerms of [T, S, ...], logits [T, S, D])`."""
        raise NotImplementedError


class VRNN(_LatentSequenceModel):
    """The variational RNN (Chung et al., 2015), with a GRU (see the module's docstring).

        prior     p(z_t | h_t-1) = N(mu_0(h_t-1), sigma_0^2(h_t-1))
        posterior q(z_t | x_t, h_t-1) = N(mu_z(phi_x(x_t), h_t-1), sigma_z^2(.))
        decoder   p(x_t | z_t, h_t-1) = Bernoulli(f(phi_z(z_t), h_t-1))
        state     h_t = GRU(h_t-1, [phi_x(x_t), phi_z(z_t)]),  h_0 = 0

    Attributes:
        latent_dim: size J of z_t.
        hidden: size of the GRU state h_t.
        features: width of each one-layer MLP (phi_x, phi_z, the prior's, the encoder's, the decoder's).
        activation: a name in `configs.ACTIVATIONS`.
        logvar_bound: the log-variances of the prior and the posterior are `bound * tanh(raw / bound)`, in
            (-bound, bound) (`models.bound_logvar`): their exp stays finite, whatever the networks output.
    """

    @nn.compact
    def _scan(self, x: Sequence, eps: jax.Array, run: Callable[..., Any] = _all_steps) -> Any:
        frames, mask = _frames(x)
        cell = _VRNNStep(self.latent_dim, self.hidden, self.features, self.activation, self.logvar_bound, name="step")
        return run(cell, jnp.zeros((eps.shape[1], self.hidden), frames.dtype), (frames, eps, mask))


class _GRUStep(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, h: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        u, mask = inputs
        h_next = GRU(self.hidden, name="rnn")(h, u)
        return jnp.where(mask > 0, h_next, h), h_next


class _SRNNStep(nn.Module):
    latent_dim: int
    features: int
    activation: str
    logvar_bound: float

    @nn.compact
    def __call__(self, z_previous: jax.Array, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, StepTerms]:
        x, d, a, eps, mask = inputs  # [D], [H], [H], [S, J], []
        mlp = lambda name: _mlp(self.features, self.activation, name)  # noqa: E731
        d, a = (jnp.broadcast_to(v, (z_previous.shape[0], v.shape[-1])) for v in (d, a))
        gaussian = lambda name, h: models.split_gaussian(  # noqa: E731
            nn.Dense(2 * self.latent_dim, name=name)(h), self.logvar_bound)
        prior = gaussian("prior_head", mlp("prior")(jnp.concatenate([z_previous, d], axis=-1)))
        correction, logvar = gaussian("encoder_head", mlp("encoder")(jnp.concatenate([z_previous, a], axis=-1)))
        posterior = (prior[0] + correction, logvar)
        z = distributions.reparameterize(*posterior, eps)
        logits = nn.Dense(x.shape[-1], name="logits")(mlp("decoder")(jnp.concatenate([z, d], axis=-1)))
        return (jnp.where(mask > 0, z, z_previous),
                (gaussian_step_terms(x, logits, eps, posterior, prior, mask), logits))


class SRNN(_LatentSequenceModel):
    """The stochastic RNN (Fraccaro et al., 2016), with GRUs and the "resq" smoothing posterior (see the module's
    docstring).

        deterministic d_t = GRU(d_t-1, x_t-1),  d_0 = 0, x_0 = 0
        prior         p(z_t | z_t-1, d_t) = N(mu_p(z_t-1, d_t), sigma_p^2(.)),  z_0 = 0
        decoder       p(x_t | z_t, d_t) = Bernoulli(f(z_t, d_t))
        backward      a_t = GRU(a_t+1, [d_t, x_t]),  a_length+1 = 0
        posterior     q(z_t | z_t-1, a_t) = N(mu_p + delta(z_t-1, a_t), sigma_q^2(z_t-1, a_t))

    Attributes:
        latent_dim: size J of z_t.
        hidden: size of the GRU states d_t and a_t.
        features: width of each one-layer MLP (the prior's, the posterior's, the decoder's).
        activation: a name in `configs.ACTIVATIONS`.
        logvar_bound: as in `VRNN`.
    """

    @nn.compact
    def _scan(self, x: Sequence, eps: jax.Array, run: Callable[..., Any] = _all_steps) -> Any:
        frames, mask = _frames(x)
        previous = jnp.concatenate([jnp.zeros_like(frames[:1]), frames[:-1]])
        start = jnp.zeros(self.hidden, frames.dtype)
        _, d = _scan_steps(_GRUStep(self.hidden, name="forward"), start, (previous, mask))
        _, a = _scan_steps(_GRUStep(self.hidden, name="backward"), start,
                           (jnp.concatenate([d, frames], axis=-1), mask), reverse=True)
        cell = _SRNNStep(self.latent_dim, self.features, self.activation, self.logvar_bound, name="step")
        return run(cell, jnp.zeros(eps.shape[1:], frames.dtype), (frames, d, a, eps, mask))


def gated_transition(z_previous: jax.Array, sizes: StepSizes) -> tuple[jax.Array, jax.Array]:
    """The DMM's gated transition p(z_t | z_t-1) (Krishnan et al., 2017, section 5): `(mean, logvar)`, each `[S, J]`,
    of `z_previous [S, J]`, with layers `gate`, `proposal`, `proposed_mean`, `linear` and `prior_logvar` of the
    calling module (a `StepSizes`)::

        g = sigmoid(W_g mlp_g(z))     m = W_m mlp_p(z)     mean = (1 - g) * (W_l z + b_l) + g * m
        logvar = bound(W_v relu(m))
    """
    mlp = lambda name: _mlp(sizes.features, sizes.activation, name)  # noqa: E731
    gate = nn.sigmoid(nn.Dense(sizes.latent_dim, name="gate")(mlp("gate_hidden")(z_previous)))
    proposed = nn.Dense(sizes.latent_dim, name="proposed_mean")(mlp("proposal")(z_previous))
    mean = (1.0 - gate) * nn.Dense(sizes.latent_dim, name="linear")(z_previous) + gate * proposed
    logvar = nn.Dense(sizes.latent_dim, name="prior_logvar")(nn.relu(proposed))
    return mean, models.bound_logvar(logvar, sizes.logvar_bound)


class _DMMStep(StepSizes):

    @nn.compact
    def __call__(self, z_previous: jax.Array, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, Any]:
        x, a, eps, mask = inputs  # [D], [H], [S, J], []
        prior = gated_transition(z_previous, self)
        combined = 0.5 * (jnp.tanh(nn.Dense(self.hidden, name="combiner")(z_previous)) + a)
        posterior = models.split_gaussian(nn.Dense(2 * self.latent_dim, name="encoder_head")(combined),
                                          self.logvar_bound)
        z = distributions.reparameterize(*posterior, eps)
        logits = nn.Dense(x.shape[-1], name="logits")(_mlp(self.features, self.activation, "decoder")(z))
        return (jnp.where(mask > 0, z, z_previous),
                (gaussian_step_terms(x, logits, eps, posterior, prior, mask), logits))


class DMM(_LatentSequenceModel):
    """The deep Markov model (Krishnan, Shalit & Sontag, 2017), with the structured "ST-R" posterior.

        prior     p(z_t | z_t-1) = N(gated_transition(z_t-1)),  z_0 = 0
        decoder   p(x_t | z_t) = Bernoulli(f(z_t))
        backward  a_t = GRU(a_t+1, x_t),  a_length+1 = 0
        posterior q(z_t | z_t-1, a_t) = N(mu_q(c_t), sigma_q^2(c_t)),  c_t = (tanh(W z_t-1 + b) + a_t) / 2

    All that passes from one step to the next is z_t: the past frames reach x_t only through the latents.

    Attributes:
        latent_dim: size J of z_t.
        hidden: size of the backward GRU's state a_t.
        features: width of each one-layer MLP (the transition's gate and proposal, the decoder's).
        activation: a name in `configs.ACTIVATIONS`.
        logvar_bound: as in `VRNN`.
    """

    @nn.compact
    def _scan(self, x: Sequence, eps: jax.Array, run: Callable[..., Any] = _all_steps) -> Any:
        frames, mask = _frames(x)
        _, a = _scan_steps(_GRUStep(self.hidden, name="backward"), jnp.zeros(self.hidden, frames.dtype),
                           (frames, mask), reverse=True)
        cell = _DMMStep(self.latent_dim, self.hidden, self.features, self.activation, self.logvar_bound, name="step")
        return run(cell, jnp.zeros(eps.shape[1:], frames.dtype), (frames, a, eps, mask))
