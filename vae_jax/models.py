"""Flax (linen) encoder and decoder networks, MLP and convolutional, and the choice of prior. They hold no
randomness: keys are the objective's business.

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
from vae_jax.priors import MixturePrior, VampPrior

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
        precision: of float32 matrix products on accelerators, a name in `configs.MATMUL_PRECISIONS` (None: JAX's
            default).
    """

    widths: Sequence[int]
    activation: str = "elu"
    dtype: str | None = None
    precision: str | None = "float32"

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """`[..., in] -> [..., widths[-1]]` (identity when `widths` is empty)."""
        for width in self.widths:
            h = _ACTIVATIONS[self.activation](nn.Dense(width, dtype=self.dtype, precision=self.precision)(h))
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
        precision: of float32 matrix products on accelerators, a name in `configs.MATMUL_PRECISIONS` (None: JAX's
            default).
    """

    latent_dim: int
    hidden: Sequence[int] = (300, 300)
    activation: str = "elu"
    logvar_bound: float = 0.0
    dtype: str | None = None
    precision: str | None = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`x [..., D] -> (mean [..., J], logvar [..., J])`."""
        h = MLP(self.hidden, self.activation, self.dtype, self.precision)(x)
        return _gaussian_head(h, self.latent_dim, self.logvar_bound, self.dtype, self.precision)


def _gaussian_head(
    h: jax.Array, latent_dim: int, logvar_bound: float, dtype: str | None, precision: str | None
) -> tuple[jax.Array, jax.Array]:
    """One Dense layer `h [..., H] -> (mean, logvar) [..., J]` (call inside a compact module)."""
    out = _float32_if_reduced(nn.Dense(2 * latent_dim, dtype=dtype, precision=precision)(h))
    mean, logvar = jnp.split(out, 2, axis=-1)
    if logvar_bound > 0:
        logvar = logvar_bound * jnp.tanh(logvar / logvar_bound)
    return mean, logvar


class Decoder(nn.Module):
    """p(x|z) = Bernoulli(logits(z)): an MLP, then a Dense layer to one logit per pixel.

    Attributes:
        output_dim: number of pixels D.
        hidden: widths of the hidden layers.
        activation: a name in `configs.ACTIVATIONS`.
        dtype: computation dtype of the layers (`bfloat16` for mixed precision, whose logits are cast to
            float32); None follows the inputs and parameters.
        precision: of float32 matrix products on accelerators, a name in `configs.MATMUL_PRECISIONS` (None: JAX's
            default).
    """

    output_dim: int = NUM_PIXELS
    hidden: Sequence[int] = (300, 300)
    activation: str = "elu"
    dtype: str | None = None
    precision: str | None = "float32"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """`z [..., J] -> logits [..., D]`."""
        h = MLP(self.hidden, self.activation, self.dtype, self.precision)(z)
        return _float32_if_reduced(nn.Dense(self.output_dim, dtype=self.dtype, precision=self.precision)(h))


class ConvEncoder(nn.Module):
    """q(z|x) from a convolutional network: 3x3 convolutions of stride 2 (28 -> 14 -> 7 pixels a side for two
    layers), then dense layers, then the Gaussian head of `Encoder`.

    Attributes:
        latent_dim: size J of z.
        channels: output channels of each convolution.
        hidden: widths of the dense layers after the convolutions.
        activation: a name in `configs.ACTIVATIONS`.
        logvar_bound: see `Encoder`.
        dtype: see `Encoder`.
        precision: see `Encoder`; also of the convolutions.
    """

    latent_dim: int
    channels: Sequence[int] = (32, 64)
    hidden: Sequence[int] = (300,)
    activation: str = "elu"
    logvar_bound: float = 0.0
    dtype: str | None = None
    precision: str | None = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`x [..., 784] -> (mean [..., J], logvar [..., J])`."""
        h = x.reshape(*x.shape[:-1], *IMAGE_SHAPE, 1)
        for channels in self.channels:
            conv = nn.Conv(channels, (3, 3), strides=2, dtype=self.dtype, precision=self.precision)
            h = _ACTIVATIONS[self.activation](conv(h))
        h = MLP(self.hidden, self.activation, self.dtype, self.precision)(h.reshape(*h.shape[:-3], -1))
        return _gaussian_head(h, self.latent_dim, self.logvar_bound, self.dtype, self.precision)


class ConvDecoder(nn.Module):
    """p(x|z) from a transposed-convolutional network mirroring `ConvEncoder`: dense layers, a dense map to a
    `[side, side, channels[-1]]` feature map, then 3x3 transposed convolutions of stride 2 up to 28 x 28 logits.

    Attributes:
        channels: the encoder's convolution channels; the decoder runs through them in reverse, ending in 1.
        hidden: widths of the dense layers, latent side first.
        activation: a name in `configs.ACTIVATIONS`.
        dtype: see `Decoder`.
        precision: see `Decoder`; also of the transposed convolutions.
    """

    channels: Sequence[int] = (32, 64)
    hidden: Sequence[int] = (300,)
    activation: str = "elu"
    dtype: str | None = None
    precision: str | None = "float32"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """`z [..., J] -> logits [..., 784]`."""
        act = _ACTIVATIONS[self.activation]
        side = IMAGE_SHAPE[0] // 2 ** len(self.channels)
        h = MLP(self.hidden, self.activation, self.dtype, self.precision)(z)
        h = act(nn.Dense(side * side * self.channels[-1], dtype=self.dtype, precision=self.precision)(h))
        h = h.reshape(*h.shape[:-1], side, side, self.channels[-1])
        for channels in (*self.channels[-2::-1], 1):
            h = nn.ConvTranspose(channels, (3, 3), strides=(2, 2), dtype=self.dtype, precision=self.precision)(h)
            h = act(h) if channels != 1 else h
        return _float32_if_reduced(h.reshape(*h.shape[:-3], NUM_PIXELS))


def build_models(config: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder that `config` describes (`config.architecture` `mlp` or `conv`)."""
    dtype = None if config.compute_dtype == "float32" else config.compute_dtype
    encoder_hidden, decoder_hidden = tuple(config.encoder_hidden), tuple(config.decoder_hidden)
    precision = config.matmul_precision if dtype is None else None  # bfloat16 compute: products are bfloat16 anyway
    if config.architecture == "conv":
        channels = tuple(config.conv_channels)
        return (ConvEncoder(config.latent_dim, channels, encoder_hidden, config.activation, config.logvar_bound, dtype,
                            precision),
                ConvDecoder(channels, decoder_hidden, config.activation, dtype, precision))
    encoder = Encoder(config.latent_dim, encoder_hidden, config.activation, config.logvar_bound, dtype, precision)
    decoder = Decoder(NUM_PIXELS, decoder_hidden, config.activation, dtype, precision)
    return encoder, decoder


def build_prior(config: ModelConfig) -> nn.Module | None:
    """The prior that `config.prior` names: None for `normal` (N(0, I)), else a module of `vae_jax.priors`."""
    if config.prior == "mixture":
        return MixturePrior(config.prior_components, config.latent_dim)
    if config.prior == "vamp":
        return VampPrior(config.prior_components, NUM_PIXELS)
    return None
