"""Likelihoods p(x|z): how a decoder's output `out [..., P]` parameterizes the data, for `vae_jax.models.VAE`.

A likelihood is a hashable object (a frozen dataclass) with `log_prob(x [..., D], out [..., P]) -> [...]`, summed
over the example, and `mean(out) -> [..., D]`, the data mean that figures show, in [0, 1]:

- `Bernoulli`: binary pixels, P = D logits;
- `DiscretizedLogistic`: 8-bit pixels, one logistic per sub-pixel binned to 256 levels (NVAE's `DiscLogistic`);
- `DiscretizedLogisticMixture`: 8-bit pixels, a mixture of K discretized logistics per pixel with the channels
  coupled linearly, the likelihood of PixelCNN++ (Salimans et al., 2017, eq. 2 and 3), VDVAE and NVAE.

The 8-bit likelihoods take `x` as grey levels 0..255 (float, as the model receives it) and rescale them to
[-1, 1] as x / 127.5 - 1, so that the 256 bins have width 2/255. `bits_per_dim` turns a negative log-likelihood in
nats into bits per dimension.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vae_jax import distributions

LOG_SCALE_MIN = -7.0  # log-scales are clamped below at -7, as in PixelCNN++ (scale >= 9.1e-4, 0.12 of a bin)
HALF_BIN = 1.0 / 255.0  # half the width 2/255 of a bin on the [-1, 1] scale
MIN_BIN_MASS = 1e-5  # below this bin mass, the bin's centre density times its width stands in (PixelCNN++)
LOG_HALF_LEVELS = math.log(127.5)  # log(1 / width) = log(255 / 2)
EDGE = 0.999  # rescaled pixels below -EDGE are level 0, above EDGE level 255 (PixelCNN++'s test)


@dataclasses.dataclass(frozen=True)
class Bernoulli:
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(l_d)), the decoder's output `l` being the logits (P = D)."""

    def log_prob(self, x: jax.Array, logits: jax.Array) -> jax.Array:
        """`[..., D], [..., D] -> [...]` (`distributions.bernoulli_log_prob`); x in {0, 1}."""
        return distributions.bernoulli_log_prob(x, logits)

    def mean(self, logits: jax.Array) -> jax.Array:
        """The pixel probabilities sigmoid(logits), `[..., D]`."""
        return jax.nn.sigmoid(logits)

    def describe(self) -> dict[str, str]:
        """Its description in a model's (`contract.describe`), under the name it had before it moved here from
        `vae_jax.models`: the stored runs of custom models that use it keep their config hash and read back."""
        return {"class": "vae_jax.models.Bernoulli"}


def num_params(likelihood: Any, num_pixels: int) -> int:
    """P, the size of the decoder output that `likelihood` reads: its `num_params()`, or D = `num_pixels` for
    `Bernoulli`, which has none (it reads one logit per value of an example of any size)."""
    return likelihood.num_params() if hasattr(likelihood, "num_params") else num_pixels


def params_per_pixel(likelihood: Any, channels: int) -> int:
    """The values of the decoder output that `likelihood` reads per pixel, where it reads them pixel by pixel (a
    convolutional decoder's output channels): its `params_per_pixel()`, or the C = `channels` logits of
    `Bernoulli`, which has none."""
    return likelihood.params_per_pixel() if hasattr(likelihood, "params_per_pixel") else channels


def rescale(x: ArrayLike, dtype: jnp.dtype) -> jax.Array:
    """Grey levels 0..255 to the bin centres x / 127.5 - 1 in [-1, 1], in `dtype`."""
    return jnp.asarray(x, dtype=dtype) / 127.5 - 1.0


def discretized_logistic_log_prob(x: ArrayLike, mean: ArrayLike, log_scale: ArrayLike) -> jax.Array:
    """log P(x) of a logistic binned to 256 levels, elementwise (Salimans et al., 2017, eq. 2).

    With s = exp(max(log_scale, -7)) and sigma the logistic sigmoid,

        P(x) = sigma((x + 1/255 - mean) / s) - sigma((x - 1/255 - mean) / s)    for -1 < x < 1,
        P(-1) = sigma((-1 + 1/255 - mean) / s)      (level 0 takes the left tail),
        P(1) = 1 - sigma((1 - 1/255 - mean) / s)    (level 255 takes the right tail).

    All in log space: the tails are log_sigmoid(a) and -softplus(b); a middle bin, with a = (x + 1/255 - mean) / s
    and b = (x - 1/255 - mean) / s, is the exact identity

        log(sigma(a) - sigma(b)) = log_sigmoid(b) - softplus(a) + log(expm1(a - b)),   a - b = (2/255) / s,

    which does not cancel where both sigmoids are near 0 or 1 (the difference of PixelCNN++'s code does). Where the
    bin's mass is below 1e-5, PixelCNN++'s stand-in takes over, the density at the bin's centre times its width:
    log pdf(x) - log 127.5, log pdf(x) = m - log s - 2 softplus(m), m = (x - mean) / s; it stays finite where the
    bin's mass underflows (huge scales, far means).

    Args:
        x: `[...]` pixels rescaled to [-1, 1] (`rescale`), on the grid of 256 levels.
        mean: `[...]` logistic means, on the same scale.
        log_scale: `[...]` log-scales, clamped below at `LOG_SCALE_MIN`.

    Returns:
        `[...]` log-probabilities in nats.
    """
    x, mean = jnp.asarray(x), jnp.asarray(mean)
    log_scale = jnp.maximum(jnp.asarray(log_scale), LOG_SCALE_MIN)
    inv_scale = jnp.exp(-log_scale)
    centered = x - mean
    plus_in, min_in, mid_in = inv_scale * (centered + HALF_BIN), inv_scale * (centered - HALF_BIN), inv_scale * centered
    # a - b without cancellation; floored where it underflows (huge scales: the stand-in is taken there).
    width = jnp.maximum(2.0 * HALF_BIN * inv_scale, jnp.finfo(inv_scale.dtype).tiny)
    log_delta = jax.nn.log_sigmoid(min_in) - jax.nn.softplus(plus_in) + jnp.log(jnp.expm1(width))
    log_pdf_mid = mid_in - log_scale - 2.0 * jax.nn.softplus(mid_in)
    log_middle = jnp.where(log_delta > math.log(MIN_BIN_MASS), log_delta, log_pdf_mid - LOG_HALF_LEVELS)
    left, right = jax.nn.log_sigmoid(plus_in), -jax.nn.softplus(min_in)  # log(1 - sigma(b)) = -softplus(b)
    return jnp.where(x < -EDGE, left, jnp.where(x > EDGE, right, log_middle))


def _check_image_shape(image_shape: tuple[int, ...], channels: tuple[int, ...]) -> None:
    if len(image_shape) != 3 or image_shape[-1] not in channels:
        raise ValueError(f"expected image_shape (height, width, channels) with channels in {channels}, "
                         f"got {image_shape}")


def _check_out(out: jax.Array, num_params: int) -> None:
    if out.shape[-1] != num_params:
        raise ValueError(f"expected decoder output [..., {num_params}], got {out.shape}")


@dataclasses.dataclass(frozen=True)
class DiscretizedLogistic:
    """p(x|z) = prod_d DiscLogistic(x_d; mean_d, s_d), a logistic per sub-pixel binned to 256 levels (NVAE).

    `out [..., 2D]` holds the D means (on the [-1, 1] scale, in the layout of x: the image `(H, W, C)` flattened),
    then the D log-scales (clamped below at -7); `num_params()` = 2 H W C. x is `[..., D]` grey levels 0..255.

    Attributes:
        image_shape: `(height, width, channels)` of an image; x is it flattened.
    """

    image_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        _check_image_shape(self.image_shape, (1, 2, 3, 4))

    def num_params(self) -> int:
        """P = 2 H W C, the size of the decoder's output."""
        return 2 * math.prod(self.image_shape)

    def _split(self, out: jax.Array) -> tuple[jax.Array, jax.Array]:
        _check_out(out, self.num_params())
        return jnp.split(out, 2, axis=-1)

    def log_prob(self, x: ArrayLike, out: jax.Array) -> jax.Array:
        """`x [..., D]` in 0..255, `out [..., 2D]` -> `[...]`, the log-probabilities of the sub-pixels summed."""
        mean, log_scale = self._split(out)
        return jnp.sum(discretized_logistic_log_prob(rescale(x, out.dtype), mean, log_scale), axis=-1)

    def mean(self, out: jax.Array) -> jax.Array:
        """The logistic means clipped to [-1, 1], rescaled to [0, 1]: `[..., D]` (the binned mean, up to the
        edges' tail mass)."""
        return (jnp.clip(self._split(out)[0], -1.0, 1.0) + 1.0) / 2.0

    def sample(self, key: jax.Array, out: jax.Array) -> jax.Array:
        """`[..., D]` grey levels 0..255 (float, in `out`'s dtype) drawn from p(x|z), keyed by `key`."""
        mean, log_scale = self._split(out)
        return _quantize(mean + jnp.exp(jnp.maximum(log_scale, LOG_SCALE_MIN)) * _logistic_noise(key, mean))


def _logistic_noise(key: jax.Array, like: jax.Array) -> jax.Array:
    """Standard logistic noise log u - log(1 - u), u ~ U(eps, 1 - eps), of `like`'s shape and dtype."""
    eps = jnp.finfo(like.dtype).eps
    u = jax.random.uniform(key, like.shape, like.dtype, minval=eps, maxval=1.0 - eps)
    return jnp.log(u) - jnp.log1p(-u)


def _quantize(y: jax.Array) -> jax.Array:
    """A continuous draw on the [-1, 1] scale to its level 0..255 (the edge levels taking the tails)."""
    return jnp.round((jnp.clip(y, -1.0, 1.0) + 1.0) * 127.5)


@dataclasses.dataclass(frozen=True)
class DiscretizedLogisticMixture:
    """p(x|z) = prod_pixels sum_k pi_k prod_c DiscLogistic(x_c; mean_ck, s_ck), the mixture of PixelCNN++
    (Salimans et al., 2017, eq. 2 and 3; their `discretized_mix_logistic_loss`), with 1 or 3 channels.

    With 3 channels the means of the later channels move linearly with the earlier channels' data values (on the
    [-1, 1] scale), per component (eq. 3): mean_G = mu_G + alpha R, mean_B = mu_B + beta R + gamma G, where alpha,
    beta, gamma are tanh of the network's outputs.

    Layout of `out [..., P]`, pixel by pixel (row-major over H, W), each pixel's block being PixelCNN++'s: the K
    logits of pi, then for each channel c a block of K means, K log-scales (clamped below at -7) and, with 3
    channels, K coefficients (alpha in R's block, beta in G's, gamma in B's). `num_params()` = H W K (1 + 3 * 3) =
    10 H W K for C = 3, H W K (1 + 2) = 3 H W K for C = 1. x is `[..., D]` grey levels 0..255, D = H W C.

    Attributes:
        image_shape: `(height, width, channels)` of an image, channels 1 or 3; x is it flattened.
        num_components: K, the number of logistics per pixel.
    """

    image_shape: tuple[int, int, int]
    num_components: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        _check_image_shape(self.image_shape, (1, 3))
        if self.num_components < 1:
            raise ValueError(f"expected num_components >= 1, got {self.num_components}")

    @property
    def _blocks(self) -> int:
        """Blocks of K numbers per channel: means, log-scales, and the coupling coefficients with 3 channels."""
        return 3 if self.image_shape[-1] == 3 else 2

    def params_per_pixel(self) -> int:
        """K (1 + C blocks), the size of one pixel's block of `out` (10 K for C = 3, 3 K for C = 1): the output
        channels of a convolutional decoder (`models.ConvDecoder.outputs_per_pixel`)."""
        return self.num_components * (1 + self.image_shape[-1] * self._blocks)

    def num_params(self) -> int:
        """P = H W K (1 + C blocks), the size of the decoder's output (10 H W K for C = 3, 3 H W K for C = 1)."""
        height, width, _ = self.image_shape
        return height * width * self.params_per_pixel()

    def _unpack(self, out: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
        """`out [..., P]` -> logits `[..., HW, K]`, means, log-scales `[..., HW, C, K]`, coefficients (C = 3)."""
        _check_out(out, self.num_params())
        height, width, channels = self.image_shape
        k = self.num_components
        out = out.reshape(*out.shape[:-1], height * width, -1)
        blocks = out[..., k:].reshape(*out.shape[:-1], channels, self._blocks, k)
        coeffs = jnp.tanh(blocks[..., 2, :]) if channels == 3 else None
        return out[..., :k], blocks[..., 0, :], blocks[..., 1, :], coeffs

    def _coupled_means(self, means: jax.Array, coeffs: jax.Array | None, x: jax.Array) -> jax.Array:
        """Each component's means given the earlier channels' values `x [..., HW, C]` (Salimans et al., 2017,
        eq. 3): `[..., HW, C, K]`; channel c's depends on x's channels before c only."""
        if coeffs is None:
            return means
        red, green = x[..., 0, None], x[..., 1, None]
        mean_green = means[..., 1, :] + coeffs[..., 0, :] * red
        mean_blue = means[..., 2, :] + coeffs[..., 1, :] * red + coeffs[..., 2, :] * green
        return jnp.stack(jnp.broadcast_arrays(means[..., 0, :], mean_green, mean_blue), axis=-2)

    def _pixels(self, x: ArrayLike, dtype: jnp.dtype) -> jax.Array:
        """`[..., D]` grey levels -> `[..., HW, C]` on the [-1, 1] scale."""
        x = rescale(x, dtype)
        return x.reshape(*x.shape[:-1], -1, self.image_shape[-1])

    def log_prob(self, x: ArrayLike, out: jax.Array) -> jax.Array:
        """`x [..., D]` in 0..255, `out [..., P]` -> `[...]`: sum over pixels of log sum_k pi_k prod_c P_ck(x_c),
        as logsumexp_k (log_softmax(logits)_k + sum_c log P_ck(x_c))."""
        logits, means, log_scales, coeffs = self._unpack(out)
        x = self._pixels(x, out.dtype)
        log_probs = discretized_logistic_log_prob(x[..., None], self._coupled_means(means, coeffs, x), log_scales)
        per_component = jnp.sum(log_probs, axis=-2) + jax.nn.log_softmax(logits, axis=-1)
        return jnp.sum(jax.nn.logsumexp(per_component, axis=-1), axis=-1)

    def mean(self, out: jax.Array) -> jax.Array:
        """`[..., D]` in [0, 1]: per channel, sum_k pi_k mean_ck clipped to [-1, 1] and rescaled. With 3 channels a
        later channel's component means are coupled to the earlier channels' mixture means, not integrated over
        them: not the exact mean of the mixture, but a fair picture for figures."""
        logits, means, _, coeffs = self._unpack(out)
        weights = jax.nn.softmax(logits, axis=-1)[..., None, :]
        x = jnp.zeros(means.shape[:-1], means.dtype)
        for channel in range(self.image_shape[-1]):
            channel_mean = jnp.sum(weights * self._coupled_means(means, coeffs, x), axis=-1)[..., channel]
            x = x.at[..., channel].set(jnp.clip(channel_mean, -1.0, 1.0))
        return ((x + 1.0) / 2.0).reshape(*x.shape[:-2], -1)

    def sample(self, key: jax.Array, out: jax.Array) -> jax.Array:
        """`[..., D]` grey levels 0..255 (float, in `out`'s dtype) drawn from p(x|z), keyed by `key`: a component
        per pixel, then the channels in turn, each coupled to the earlier channels' drawn levels (the model that
        `log_prob` scores; PixelCNN++'s sampler couples to the unbinned draws instead)."""
        logits, means, log_scales, coeffs = self._unpack(out)
        component_key, noise_key = jax.random.split(key)
        component = jax.random.categorical(component_key, logits, axis=-1)[..., None, None]
        pick = lambda a: jnp.take_along_axis(a, component, axis=-1)[..., 0]  # noqa: E731  [..., HW, C, K] -> [..., HW, C]
        scales = jnp.exp(jnp.maximum(pick(log_scales), LOG_SCALE_MIN))
        noise = _logistic_noise(noise_key, scales)
        x = jnp.zeros_like(scales)
        for channel in range(self.image_shape[-1]):
            draw = pick(self._coupled_means(means, coeffs, x)) + scales * noise
            x = x.at[..., channel].set(_quantize(draw[..., channel]) / 127.5 - 1.0)
        return jnp.round((x + 1.0) * 127.5).reshape(*x.shape[:-2], -1)


def bits_per_dim(nats: ArrayLike, num_dims: int) -> ArrayLike:
    """A negative log-likelihood in nats per example to bits per dimension: nats / (num_dims ln 2).

    Args:
        nats: `[...]` -log p(x) (or a bound on it, such as the negative ELBO) in nats, of examples of `num_dims`
            sub-pixels (H W C).
        num_dims: D, the number of dimensions of an example.

    Returns:
        `[...]` bits per dimension, in the precision of `nats` (a Python float stays a float64 number).
    """
    return nats / (num_dims * math.log(2.0))
