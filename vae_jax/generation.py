"""Piano rolls drawn from the sequence models of `vae_jax.recurrent`, by ancestral sampling: z_t from the learned
prior, then each frame x_t from p(x_t | .) as a Bernoulli draw of every key, fed back into the recurrence.

Each model's sampler is a Flax module whose scanned cell names its layers as the model's own cell does, so it runs
on the model's parameters as they are (the SRNN's forward GRU moved into the cell: `_sampler_params`). Step t draws
from `fold_in(key, t)`, as the models do.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import distributions, models, recurrent
from vae_jax.contract import Params


class _Cell(recurrent.StepSizes):
    """One step of ancestral sampling for the four models (`kind`): carry `(h, z, x_previous)` of `[S, ...]`."""

    kind: str = "vrnn"

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, ...], key: jax.Array) -> tuple[tuple[jax.Array, ...], Any]:
        h, z, x_previous = carry
        mlp = lambda name: models.MLP((self.features,), self.activation, name=name)  # noqa: E731
        prior_key, frame_key = jax.random.split(key)
        gaussian = lambda name, inputs: models.split_gaussian(  # noqa: E731
            nn.Dense(2 * self.latent_dim, name=name)(inputs), self.logvar_bound)
        if self.kind == "dmm":  # z_t ~ p(z_t | z_t-1); x_t ~ p(x_t | z_t)
            z = _draw(prior_key, recurrent.gated_transition(z, self))
            decoded = mlp("decoder")(z)
        elif self.kind == "srnn":  # h is d_t = GRU(d_t-1, x_t-1); z_t ~ p(z_t | z_t-1, d_t); x_t ~ p(x_t | z_t, d_t)
            h = recurrent.GRU(self.hidden, name="forward")(h, x_previous)
            z = _draw(prior_key, gaussian("prior_head", mlp("prior")(jnp.concatenate([z, h], axis=-1))))
            decoded = mlp("decoder")(jnp.concatenate([z, h], axis=-1))
        elif self.kind == "vrnn":  # z_t ~ p(z_t | h_t-1); x_t ~ p(x_t | z_t, h_t-1); h_t = GRU(h_t-1, [x_t, z_t])
            z = _draw(prior_key, gaussian("prior_head", mlp("prior")(h)))
            phi_z = mlp("phi_z")(z)
            decoded = mlp("decoder")(jnp.concatenate([phi_z, h], axis=-1))
        else:  # the baseline: x_t ~ p(x_t | h_t-1); h_t = GRU(h_t-1, phi_x(x_t))
            decoded = mlp("decoder")(h)
        probabilities = nn.sigmoid(nn.Dense(x_previous.shape[-1], name="logits")(decoded))
        x = jax.random.bernoulli(frame_key, probabilities).astype(probabilities.dtype)
        if self.kind in ("rnn", "vrnn"):
            inputs = mlp("phi_x")(x)
            if self.kind == "vrnn":
                inputs = jnp.concatenate([inputs, phi_z], axis=-1)
            h = recurrent.GRU(self.hidden, name="rnn")(h, inputs)
        return (h, z, x), (x, probabilities)


def _draw(key: jax.Array, gaussian: tuple[jax.Array, jax.Array]) -> jax.Array:
    mean, logvar = gaussian
    return distributions.reparameterize(mean, logvar, jax.random.normal(key, mean.shape, mean.dtype))


def _sampler_params(model: Any, params: Params) -> Params:
    """The model's parameters as its sampler's cell names them: those of its scanned step (and the SRNN's forward
    GRU)."""
    step = dict(params["params"]["step"])
    if isinstance(model, recurrent.SRNN):
        step["forward"] = params["params"]["forward"]["rnn"]
    return {"params": step}


def sample_rolls(model: Any, params: Params, key: jax.Array, num_sequences: int, num_frames: int,
                 num_keys: int = 88) -> tuple[jax.Array, jax.Array]:
    """`num_sequences` piano rolls of `num_frames` frames drawn from `model` (an `RNNBaseline`, `VRNN`, `SRNN` or
    `DMM` module) at `params`: `(rolls [N, T, num_keys] 0/1 floats, probabilities [N, T, num_keys])`, the probability of
    each key at each step given the draws before it."""
    kinds = {recurrent.RNNBaseline: "rnn", recurrent.VRNN: "vrnn", recurrent.SRNN: "srnn", recurrent.DMM: "dmm"}
    if type(model) not in kinds:
        raise TypeError(f"sample_rolls draws from RNNBaseline, VRNN, SRNN or DMM, got {type(model).__name__}")
    latent = getattr(model, "latent_dim", 1)
    cell = nn.scan(_Cell, variable_broadcast="params", split_rngs={"params": False}, in_axes=0, out_axes=0)(
        latent, model.hidden, model.features, model.activation, getattr(model, "logvar_bound", 0.0),
        kind=kinds[type(model)])
    dtype = jax.tree.leaves(params)[0].dtype
    start = (jnp.zeros((num_sequences, model.hidden), dtype), jnp.zeros((num_sequences, latent), dtype),
             jnp.zeros((num_sequences, num_keys), dtype))
    keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(num_frames))
    _, (rolls, probabilities) = cell.apply(_sampler_params(model, params), start, keys)
    return jnp.swapaxes(rolls, 0, 1), jnp.swapaxes(probabilities, 0, 1)
