"""The one-stochastic-layer VAE (`VAE`) and its networks: Flax (linen) encoders and decoders, MLP (with any
activation, or gated as in Tomczak & Welling, 2018) and convolutional.

`VAE` bundles an encoder, a decoder, a prior and a likelihood into a model of the contract of `vae_jax.contract`.
Any modules with these call signatures work in it:

- encoder: `x [..., D] float -> (mean [..., J], logvar [..., J])`, the Gaussian q(z|x);
- decoder: `z [..., J] -> out [..., P]`, the parameters of p(x|z) (P = D Bernoulli logits for `Bernoulli`);
- prior: None for N(0, I), or a module of the kind described in `vae_jax.priors`;
- likelihood: an object with `log_prob(x [..., D], out [..., P]) -> [...]` and `mean(out) -> [..., D]`
  (`vae_jax.likelihoods`).

The networks hold no randomness: keys are the model's `joint_samples` business.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import convolution, distributions
from vae_jax.contract import JointSamples, Params
from vae_jax.likelihoods import Bernoulli  # re-exported: `vae_jax.models.Bernoulli` stays importable

_ACTIVATIONS = {
    "elu": nn.elu,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": nn.tanh,
    "softplus": nn.softplus,
    "swish": nn.swish,
}
GATED = "gated"  # the gated dense layer of Tomczak & Welling (2018): Dense(h) * sigmoid(Dense(h))
LogvarBound = float | tuple[float, float]  # see `bound_logvar`


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called `name`; convolutional layers are not gated, so `gated` stands for ELU there."""
    return _ACTIVATIONS["elu" if name == GATED else name]


def float32_if_reduced(x: jax.Array) -> jax.Array:
    """Outputs of a bfloat16 network go on in float32 (the loss needs the precision); wider types stay."""
    return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


class MLP(nn.Module):
    """Dense layers of the given widths, each followed by the activation; with `activation="gated"`, gated dense
    layers `Dense(h) * sigmoid(Dense(h))` (the GatedDense of Tomczak & Welling, 2018, two Dense layers each).

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
            dense = nn.Dense(width, dtype=self.dtype, precision=self.precision)
            if self.activation == GATED:
                gate = nn.Dense(width, dtype=self.dtype, precision=self.precision)
                h = dense(h) * nn.sigmoid(gate(h))
            else:
                h = _ACTIVATIONS[self.activation](dense(h))
        return h


class Encoder(nn.Module):
    """q(z|x) = N(mean(x), diag exp(logvar(x))): an MLP, then one Dense layer split into mean and logvar.

    Attributes:
        latent_dim: size J of z.
        hidden: widths of the hidden layers.
        activation: a name in `configs.ACTIVATIONS`.
        logvar_bound: if positive, logvar = bound * tanh(raw / bound) lies in (-bound, bound), which keeps
            exp(logvar) finite; 0 leaves it unbounded; a pair (low, high) clips it (`bound_logvar`).
        dtype: computation dtype of the layers (`bfloat16` for mixed precision, whose outputs are cast to
            float32); None follows the inputs and parameters.
        precision: of float32 matrix products on accelerators, a name in `configs.MATMUL_PRECISIONS` (None: JAX's
            default).
    """

    latent_dim: int
    hidden: Sequence[int] = (300, 300)
    activation: str = "elu"
    logvar_bound: LogvarBound = 0.0
    dtype: str | None = None
    precision: str | None = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`x [..., D] -> (mean [..., J], logvar [..., J])`."""
        h = MLP(self.hidden, self.activation, self.dtype, self.precision)(x)
        return gaussian_head(h, self.latent_dim, self.logvar_bound, self.dtype, self.precision)


def gaussian_head(
    h: jax.Array, latent_dim: int, logvar_bound: LogvarBound, dtype: str | None, precision: str | None
) -> tuple[jax.Array, jax.Array]:
    """One Dense layer `h [..., H] -> (mean, logvar) [..., J]` (call inside a compact module)."""
    return split_gaussian(nn.Dense(2 * latent_dim, dtype=dtype, precision=precision)(h), logvar_bound)


def split_gaussian(out: jax.Array, logvar_bound: LogvarBound) -> tuple[jax.Array, jax.Array]:
    """A Gaussian head's output `[..., 2J] -> (mean, bounded logvar) [..., J]`, in float32 if `out` is narrower."""
    mean, logvar = jnp.split(float32_if_reduced(out), 2, axis=-1)
    return mean, bound_logvar(logvar, logvar_bound)


def bound_logvar(logvar: jax.Array, bound: LogvarBound) -> jax.Array:
    """A bounded log-variance: for a number `bound`, `bound * tanh(logvar / bound)`, in (-bound, bound), if it is
    positive (else `logvar` unchanged); for a pair `(low, high)`, `logvar` clipped to [low, high], whose gradient is
    0 outside (the hardtanh of Tomczak & Welling's code, (-6, 2))."""
    if isinstance(bound, tuple):
        return jnp.clip(logvar, *bound)
    return bound * jnp.tanh(logvar / bound) if bound > 0 else logvar


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

    output_dim: int
    hidden: Sequence[int] = (300, 300)
    activation: str = "elu"
    dtype: str | None = None
    precision: str | None = "float32"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """`z [..., J] -> logits [..., D]`."""
        h = MLP(self.hidden, self.activation, self.dtype, self.precision)(z)
        return float32_if_reduced(nn.Dense(self.output_dim, dtype=self.dtype, precision=self.precision)(h))


class ConvEncoder(nn.Module):
    """q(z|x) from a convolutional network: 3x3 convolutions of stride 2 with 'SAME' padding (each halves the image's
    sides, rounding up: `conv_sides`), then dense layers, then the Gaussian head of `Encoder`. Any image shape.

    Attributes:
        image_shape: `(height, width, channels)` of an image (`data.Dataset.image_shape`); x is it flattened.
        latent_dim: size J of z.
        channels: output channels of each convolution.
        hidden: widths of the dense layers after the convolutions.
        activation: a name in `configs.ACTIVATIONS`.
        logvar_bound: see `Encoder`.
        dtype: see `Encoder`.
        precision: see `Encoder`; also of the convolutions.
    """

    image_shape: tuple[int, int, int]
    latent_dim: int
    channels: Sequence[int] = (32, 64)
    hidden: Sequence[int] = (300,)
    activation: str = "elu"
    logvar_bound: LogvarBound = 0.0
    dtype: str | None = None
    precision: str | None = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`x [..., D] -> (mean [..., J], logvar [..., J])`, D = height * width * channels."""
        h = x.reshape(*x.shape[:-1], *self.image_shape)
        for channels in self.channels:
            conv = nn.Conv(channels, (3, 3), strides=2, dtype=self.dtype, precision=self.precision,
                           conv_general_dilated=convolution.conv_general_dilated)
            h = _activation(self.activation)(conv(h))
        h = MLP(self.hidden, self.activation, self.dtype, self.precision)(h.reshape(*h.shape[:-3], -1))
        return gaussian_head(h, self.latent_dim, self.logvar_bound, self.dtype, self.precision)


def conv_sides(height: int, width: int, num_convs: int) -> list[tuple[int, int]]:
    """The `(height, width)` of `ConvEncoder`'s feature maps, the image's first: `num_convs + 1` pairs, each the
    previous one halved and rounded up (what a stride-2 'SAME' convolution gives), e.g. 28x20 -> 14x10 -> 7x5."""
    return [(-(-height // 2**index), -(-width // 2**index)) for index in range(num_convs + 1)]


class ConvDecoder(nn.Module):
    """p(x|z) from a transposed-convolutional network mirroring `ConvEncoder`: dense layers, a dense map to the
    encoder's last feature map `[ceil(H / 2^n), ceil(W / 2^n), channels[-1]]`, then n 3x3 transposed convolutions of
    stride 2, each doubling the sides and cropped at the bottom and right to the encoder's map that it mirrors
    (`conv_sides`), up to `[H, W, outputs_per_pixel]`, flattened row-major: any image shape, and the output laid out
    pixel by pixel (row-major over H, W), the layout of `likelihoods.DiscretizedLogisticMixture`.

    Attributes:
        image_shape: `(height, width, channels)` of an image.
        channels: the encoder's convolution channels; the decoder runs through them in reverse, then to
            `outputs_per_pixel`.
        hidden: widths of the dense layers, latent side first.
        activation: a name in `configs.ACTIVATIONS`.
        dtype: see `Decoder`.
        precision: see `Decoder`; also of the transposed convolutions.
        outputs_per_pixel: values of the output per pixel, the likelihood's (`params_per_pixel()` of the mixture);
            None: one per channel, the C Bernoulli logits of a pixel (the output then has x's layout).
    """

    image_shape: tuple[int, int, int]
    channels: Sequence[int] = (32, 64)
    hidden: Sequence[int] = (300,)
    activation: str = "elu"
    dtype: str | None = None
    precision: str | None = "float32"
    outputs_per_pixel: int | None = None

    @property
    def output_dim(self) -> int:
        """P = H W `outputs_per_pixel`, the size of the output (D = H W C for Bernoulli logits)."""
        height, width, channels = self.image_shape
        return height * width * (self.outputs_per_pixel or channels)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """`z [..., J] -> out [..., P]`."""
        act = _activation(self.activation)
        sides = conv_sides(*self.image_shape[:2], len(self.channels))
        height, width = sides[-1]
        h = MLP(self.hidden, self.activation, self.dtype, self.precision)(z)
        h = act(nn.Dense(height * width * self.channels[-1], dtype=self.dtype, precision=self.precision)(h))
        h = h.reshape(*h.shape[:-1], height, width, self.channels[-1])
        widths = (*self.channels[-2::-1], self.outputs_per_pixel or self.image_shape[-1])
        for index, (channels, (height, width)) in enumerate(zip(widths, sides[-2::-1], strict=True)):
            h = nn.Conv(channels, (3, 3), padding=[convolution.transpose_padding(3, 2)] * 2, input_dilation=2,
                        dtype=self.dtype, precision=self.precision, name=f"ConvTranspose_{index}",
                        conv_general_dilated=convolution.conv_general_dilated)(h)
            h = h[..., :height, :width, :]
            h = act(h) if index < len(widths) - 1 else h
        return float32_if_reduced(h.reshape(*h.shape[:-3], self.output_dim))


@dataclasses.dataclass(frozen=True)
class ScaledEncoder:
    """An encoder that sees its input times `scale` (8-bit grey levels 0..255 as [0, 1] with `scale=1/255`); a plain
    wrapper, not a Flax module, so the encoder's variables keep their names. `init` and `apply` as a Flax module's.

    Attributes:
        encoder: module `x [..., D] -> (mean, logvar) [..., J]`.
        scale: the factor of its input.
    """

    encoder: nn.Module
    scale: float

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        """The encoder's variables, initialized on `x * scale`."""
        return self.encoder.init(key, x * self.scale)

    def apply(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The encoder's output at `x * scale`."""
        return self.encoder.apply(params, x * self.scale)


@dataclasses.dataclass(frozen=True)
class VAE:
    """The VAE with one stochastic layer (Kingma & Welling, 2013), as a model of `vae_jax.contract`:
    q(z|x) = N(mean(x), diag exp(logvar(x))) from `encoder`, p(x|z) from `decoder` and `likelihood`, p(z) = N(0, I)
    (closed-form KL) or a learned `prior` (Monte-Carlo KL).

    Its variables are `{"encoder": ..., "decoder": ...}` (and `"prior"`).

    Attributes:
        encoder: module `x [..., D] -> (mean, logvar) [..., J]`.
        decoder: module `z [..., J] -> out [..., P]`, P = `likelihood.num_params()` for the 8-bit likelihoods.
        prior: None for N(0, I), or a prior module (`vae_jax.priors`).
        likelihood: how `decoder`'s output parameterizes p(x|z) (`vae_jax.likelihoods`); Bernoulli logits by
            default. It receives `x` as the model does (grey levels 0..255 for the 8-bit likelihoods).
        num_pixels: D, the size of an example, which `generate` needs with the N(0, I) prior; None reads the
            decoder's `output_dim` (`Decoder` and `ConvDecoder` have one; it is P, not D, for the 8-bit
            likelihoods, which need `num_pixels`).
    """

    encoder: nn.Module
    decoder: nn.Module
    prior: nn.Module | None = None
    likelihood: Any = Bernoulli()
    num_pixels: int | None = None

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        """Initial variables from `key` and a `[D]` example: the encoder and decoder from the two halves of
        `split(key)`, a prior from `fold_in(key, 2)`."""
        encoder_key, decoder_key = jax.random.split(key)
        encoder_params = self.encoder.init(encoder_key, x)
        mean, _ = self.encoder.apply(encoder_params, x)
        params = {"encoder": encoder_params, "decoder": self.decoder.init(decoder_key, mean)}
        if self.prior is not None:
            params["prior"] = self.prior.init(jax.random.fold_in(key, 2), mean, self._encode(encoder_params))
        return params

    def _encode(self, encoder_params: Params) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
        return lambda x: self.encoder.apply(encoder_params, x)

    def posterior(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(mean, logvar)` of q(z|x), the encoder's output: `[..., D] -> [..., J]` each."""
        return self.encoder.apply(params["encoder"], x)

    def joint_samples(self, params: Params, x: jax.Array, key: jax.Array, num_samples: int) -> JointSamples:
        """`num_samples` samples for the `[D]` example `x`, with the noise `normal(key, [S, J])`."""
        mean, _ = jax.eval_shape(self.posterior, params, x)
        eps = jax.random.normal(key, (num_samples, *mean.shape), mean.dtype)
        return self.joint_samples_from_noise(params, x, eps)

    def joint_samples_from_noise(self, params: Params, x: jax.Array, eps: jax.Array) -> JointSamples:
        """The samples z_s = mean(x) + sigma(x) * eps_s for given noise `eps [S, J]`
        (`joint_samples_given_posterior` at the encoder's posterior)."""
        mean, logvar = self.posterior(params, x)
        return self.joint_samples_given_posterior(params, x, mean, logvar, eps)

    def joint_samples_given_posterior(self, params: Params, x: jax.Array, mean: jax.Array, logvar: jax.Array,
                                      eps: jax.Array) -> JointSamples:
        """The samples z_s = mean + sigma * eps_s of a Gaussian posterior given by its `[J]` parameters (the
        encoder's, or per-example ones: `vae_jax.inference`), for noise `eps [S, J]`.

        log q(z_s|x) comes from the noise (`distributions.gaussian_log_prob_of_noise`), exact for any logvar.
        With the N(0, I) prior the KL is in closed form, whole and per dimension.
        """
        z = distributions.reparameterize(mean, logvar, eps)
        log_likelihood = self.likelihood.log_prob(x, self.decoder.apply(params["decoder"], z))
        log_posterior = distributions.gaussian_log_prob_of_noise(eps, logvar)
        if self.prior is None:
            kl_per_dim = distributions.gaussian_kl_per_dim(mean, logvar)
            return JointSamples(log_likelihood, distributions.standard_normal_log_prob(z), log_posterior,
                                jnp.sum(kl_per_dim, axis=-1), kl_per_dim, mean)
        log_prior = self.prior.apply(params["prior"], z, self._encode(params["encoder"]))
        return JointSamples(log_likelihood, log_prior, log_posterior, posterior_mean=mean)

    def generate(self, params: Params, key: jax.Array, num_images: int) -> jax.Array:
        """Data means at `num_images` draws z ~ p(z); `[N, D]`."""
        if self.prior is None:
            num_pixels = self.decoder.output_dim if self.num_pixels is None else self.num_pixels
            mean, _ = jax.eval_shape(self.posterior, params, jax.ShapeDtypeStruct((num_pixels,), jnp.float32))
            z = jax.random.normal(key, (num_images, *mean.shape))
        else:
            z = self.prior.apply(params["prior"], key, num_images, self._encode(params["encoder"]),
                                 method="sample")
        return self.decode(params, z)

    def encode(self, params: Params, x: jax.Array) -> jax.Array:
        """The posterior mean, `[..., D] -> [..., J]`."""
        return self.posterior(params, x)[0]

    def decode(self, params: Params, z: jax.Array) -> jax.Array:
        """Data means at `z`, `[..., J] -> [..., D]`."""
        return self.likelihood.mean(self.decoder.apply(params["decoder"], z))

    def reconstruct(self, params: Params, x: jax.Array) -> jax.Array:
        """Data means at the posterior mean, `[..., D] -> [..., D]`."""
        return self.decode(params, self.encode(params, x))
