"""Flax (linen) encoder and decoder networks. They hold no randomness: keys are the objective's business.

Any pair of modules with these call signatures works with the rest of the library:

- encoder: `x [..., D] float -> (mean [..., J], logvar [..., J])`, the Gaussian q(z|x);
- decoder: `z [..., J] -> logits [..., D]`, the Bernoulli p(x|z).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.configs import ModelConfig

IMAGE_SHAPE = (28, 28)
NUM_PIXELS = 28 * 28

_ACTIVATIONS = {
    "elu": nn.elu,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": nn.tanh,
    "softplus": nn.softplus,
    "swish": nn.swish,
}


def _float32_if_reduced(x: jax.Array) -> jax.Array:
    """Outputs of a bfloat16 network go on in float32 (the loss needs the precision); wider types stay."""
    return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


class MLP(nn.Module):
    """Dense layers of the given widths, each followed by the activation.

    Attributes:
        widths: output width of each hidden layer.
        activation: a name in `configs.ACTIVATIONS`.
        dtype: computation dtype of the layers; None follows the inputs and parameters (float32).
    """

    widths: Sequence[int]
    activation: str = "elu"
    dtype: str | None = None

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """`[..., in] -> [..., widths[-1]]` (identity when `widths` is empty)."""
        for width in self.widths:
            h = _ACTIVATIONS[self.activation](nn.Dense(width, dtype=self.dtype)(h))
        return h


class Encoder(nn.Module):
    """q(z|x) = N(mean(x), diag exp(logvar(x))): an MLP, then one Dense layer split into mean and logvar.

    Attributes:
        latent_dim: size J of z.
        hidden: widths of the hidden layers.
        activation: a name in `configs.ACTIVATIONS`.
        logvar_bound: if positive, logvar = bound * tanh(raw / bound) lies in (-bound, bound), which keeps
            exp(logvar) finite; 0 leaves it unbounded.
        dtype: computation dtype of the layers (`bfloat16` for mixed precision, whose outputs are cast to
            float32); None follows the inputs and parameters.
    """

    latent_dim: int
    hidden: Sequence[int] = (300, 300)
    activation: str = "elu"
    logvar_bound: float = 0.0
    dtype: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`x [..., D] -> (mean [..., J], logvar [..., J])`."""
        h = MLP(self.hidden, self.activation, self.dtype)(x)
        out = _float32_if_reduced(nn.Dense(2 * self.latent_dim, dtype=self.dtype)(h))
        mean, logvar = jnp.split(out, 2, axis=-1)
        if self.logvar_bound > 0:
            logvar = self.logvar_bound * jnp.tanh(logvar / self.logvar_bound)
        return mean, logvar


class Decoder(nn.Module):
    """p(x|z) = Bernoulli(logits(z)): an MLP, then a Dense layer to one logit per pixel.

    Attributes:
        output_dim: number of pixels D.
        hidden: widths of the hidden layers.
        activation: a name in `configs.ACTIVATIONS`.
        dtype: computation dtype of the layers (`bfloat16` for mixed precision, whose logits are cast to
            float32); None follows the inputs and parameters.
    """

    output_dim: int = NUM_PIXELS
    hidden: Sequence[int] = (300, 300)
    activation: str = "elu"
    dtype: str | None = None

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """`z [..., J] -> logits [..., D]`."""
        h = MLP(self.hidden, self.activation, self.dtype)(z)
        return _float32_if_reduced(nn.Dense(self.output_dim, dtype=self.dtype)(h))


def build_models(config: ModelConfig) -> tuple[Encoder, Decoder]:
    """The encoder and decoder that `config` describes."""
    dtype = None if config.compute_dtype == "float32" else config.compute_dtype
    encoder = Encoder(config.latent_dim, tuple(config.encoder_hidden), config.activation, config.logvar_bound, dtype)
    decoder = Decoder(NUM_PIXELS, tuple(config.decoder_hidden), config.activation, dtype)
    return encoder, decoder
