"""The GAN baseline's networks, losses, pure train step and keyed sampling (issue #35; `gan.py` trains and scores).

A DCGAN with the non-saturating loss for 28x28x1 images in vae_jax's `[N, 784]` layout. The generator's output is
the logit of a Bernoulli mean per pixel, as a VAE decoder's is: a sample is a Bernoulli draw from that mean (binary
pixels, what gets scored), and the means themselves are for figures. The discriminator sees binary real images
(dynamically binarized) and either the generator's means (`binary_fakes` False) or Bernoulli draws from them with
the straight-through gradient (True): binary images on both sides, which Fashion-MNIST needs (its binarized grey
textures are noise that smooth means cannot imitate: with means, the discriminator won within 7 epochs). MNIST,
nearly binary already, trains on the means: with draws its discriminator won (D(fake) 0.008 at epoch 15) and the
samples collapsed to noisy loops (`experiments/results/gan/mnist_fake_input_sample/`).

Keys: every per-example draw is keyed by the example's index, never by its place in a batch. Training reuses
vae_jax's own binarization (`objective.map_examples`): example `i` of an epoch gets `fold_in(examples_key, i)`,
split into its binarization key and a noise key, split in two: the keys of the latent codes it is paired with
(one for the discriminator's step, one for the generator's), whose `fold_in(., 1)` draw the fakes' pixels.
Sample `j` is keyed by `fold_in(key, j)`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from vae_jax.features import IMAGE_SHAPE, IMAGE_SIZE
from vae_jax.objective import example_keys, map_examples

Params = Any


def depth_to_space(h: jax.Array, r: int = 2) -> jax.Array:
    """`[B, H, W, r * r * C]` -> `[B, r * H, r * W, C]` (sub-pixel upsampling, as `tf.nn.depth_to_space`)."""
    b, height, width, c = h.shape
    h = h.reshape(b, height, width, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(b, height * r, width * r, c // (r * r))


class PatchConv(nn.Module):
    """A 2-D convolution with SAME padding written as patch extraction and one dense layer (im2col):
    `[B, H, W, C]` -> `[B, ceil(H / stride), ceil(W / stride), features]`. Same function as `nn.Conv`, but XLA:CPU's
    convolutions ran 5-20 times slower than these slices and matrix products on the shared 2-core machine."""

    features: int
    kernel: int = 4
    stride: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel, self.stride
        out_h, out_w = -(-x.shape[1] // s), -(-x.shape[2] // s)
        pad_h, pad_w = max((out_h - 1) * s + k - x.shape[1], 0), max((out_w - 1) * s + k - x.shape[2], 0)
        x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        patches = [x[:, i : i + (out_h - 1) * s + 1 : s, j : j + (out_w - 1) * s + 1 : s, :]
                   for i in range(k) for j in range(k)]
        return nn.Dense(self.features)(jnp.concatenate(patches, axis=-1))


class Generator(nn.Module):
    """z `[B, L]` -> dense 7x7xC, ReLU -> up 2x to 14x14xC/2, ReLU -> up 2x to 28x28x1: pixel logits `[B, 784]`. Each
    2x upsampling is a sub-pixel convolution (3x3 conv to 4x the channels, then `depth_to_space`), which computes
    what DCGAN's stride-2 transposed convolution does, without its multiplications by inserted zeros."""

    channels: int = 32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        c = self.channels
        h = nn.relu(nn.Dense(7 * 7 * c)(z)).reshape(z.shape[0], 7, 7, c)
        h = nn.relu(depth_to_space(PatchConv(4 * (c // 2), kernel=3, stride=1)(h)))
        logits = depth_to_space(PatchConv(4, kernel=3, stride=1)(h))
        return logits.reshape(z.shape[0], IMAGE_SIZE)


class Discriminator(nn.Module):
    """Images `[B, 784]` in [0, 1] -> 4x4 conv C stride 2 -> 4x4 conv 2C stride 2 -> dense 1 (leaky ReLU 0.2):
    logits `[B]`."""

    channels: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = (2 * x - 1).reshape(x.shape[0], *IMAGE_SHAPE)
        h = nn.leaky_relu(PatchConv(self.channels)(h), 0.2)
        h = nn.leaky_relu(PatchConv(2 * self.channels)(h), 0.2)
        return nn.Dense(1)(h.reshape(x.shape[0], -1))[:, 0]


class GanState(struct.PyTreeNode):
    """Both networks' parameters and Adam states and the step count; the networks and optimizer are static.

    Attributes:
        step: `[]` int32 number of (discriminator, generator) step pairs taken.
        g_params, d_params: the generator's and discriminator's variables.
        g_opt, d_opt: their optimizer states.
    """

    step: jax.Array
    g_params: Params
    d_params: Params
    g_opt: optax.OptState
    d_opt: optax.OptState
    generator: Generator = struct.field(pytree_node=False)
    discriminator: Discriminator = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    latent_dim: int = struct.field(pytree_node=False, default=64)
    binary_fakes: bool = struct.field(pytree_node=False, default=False)


class Batch(NamedTuple):
    """A step's inputs: `real [B, 784]` binary images; `z_d`, `z_g` `[B, L]` latent codes of the discriminator's and
    the generator's step; `u_d`, `u_g` `[B, 784]` uniform noise that draws their fakes' pixels (`[B, 0]` when the
    discriminator sees the means)."""

    real: jax.Array
    z_d: jax.Array
    z_g: jax.Array
    u_d: jax.Array
    u_g: jax.Array


def create_state(key: jax.Array, latent_dim: int = 64, learning_rate: float = 2e-4, b1: float = 0.5,
                 g_channels: int = 32, d_channels: int = 16, binary_fakes: bool = False) -> GanState:
    """A fresh `GanState`: `Generator(g_channels)` and `Discriminator(d_channels)` initialized from `key`,
    Adam(`learning_rate`, `b1`) for each; `binary_fakes` see the module's docstring."""
    generator, discriminator = Generator(g_channels), Discriminator(d_channels)
    tx = optax.adam(learning_rate, b1=b1)
    g_key, d_key = jax.random.split(key)
    g_params = generator.init(g_key, jnp.zeros((1, latent_dim), jnp.float32))
    d_params = discriminator.init(d_key, jnp.zeros((1, IMAGE_SIZE), jnp.float32))
    return GanState(step=jnp.zeros((), jnp.int32), g_params=g_params, d_params=d_params, g_opt=tx.init(g_params),
                    d_opt=tx.init(d_params), generator=generator, discriminator=discriminator, tx=tx,
                    latent_dim=latent_dim, binary_fakes=binary_fakes)


def batch_inputs(pixels: jax.Array, indices: jax.Array, examples_key: jax.Array, latent_dim: int,
                 binary_fakes: bool = False) -> Batch:
    """A batch's real images, dynamically binarized, and the latent codes paired with them, all keyed per example.

    Args:
        pixels: `[B, 784]` uint8 grey levels 0..255.
        indices: `[B]` int positions of the examples in their split.
        examples_key: the epoch's key of its examples (`train.epoch_batches`).
        latent_dim: L.
        binary_fakes: whether to draw the noise of binary fakes.

    Returns:
        The `Batch`: the real images binarized by `objective.map_examples`, as a VAE's training binarizes them.
    """

    def one(x: jax.Array, noise_key: jax.Array) -> Batch:
        d_key, g_key = jax.random.split(noise_key)
        size = IMAGE_SIZE if binary_fakes else 0
        u_d, u_g = (jax.random.uniform(jax.random.fold_in(k, 1), (size,)) for k in (d_key, g_key))
        return Batch(x, jax.random.normal(d_key, (latent_dim,)), jax.random.normal(g_key, (latent_dim,)), u_d, u_g)

    return map_examples(one, pixels, indices, examples_key, dynamic_binarization=True)


def fake_input(means: jax.Array, u: jax.Array) -> jax.Array:
    """What the discriminator sees of fakes: the means `[B, 784]`, or with noise `u [B, 784]` the draws `u < means`
    whose gradient is the means' (straight-through)."""
    if u.shape[-1] == 0:
        return means
    return means + jax.lax.stop_gradient((u < means).astype(means.dtype) - means)


def _adam(tx: optax.GradientTransformation, grads: Params, opt: optax.OptState,
          params: Params) -> tuple[Params, optax.OptState]:
    # Optax mixes its int32 step count with floats, which strict dtype promotion would refuse (as vae_jax.train).
    with jax.numpy_dtype_promotion("standard"):
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt


def train_step(state: GanState, batch: Batch) -> tuple[GanState, dict[str, jax.Array]]:
    """One discriminator step, then one generator step (non-saturating loss), pure (jit it).

    Args:
        state: the `GanState`.
        batch: the step's `Batch` (`batch_inputs`).

    Returns:
        The new state and `[]` metrics: `d_loss` (-log D(x) - log(1 - D(G(z)))), `g_loss` (-log D(G(z))),
        `d_real` and `d_fake` (the mean probabilities the discriminator gives real and generated images).
    """
    gen, disc, real = state.generator, state.discriminator, batch.real

    def d_loss_fn(d_params: Params) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        fake = fake_input(jax.nn.sigmoid(gen.apply(state.g_params, batch.z_d)), batch.u_d)
        real_logits, fake_logits = disc.apply(d_params, real), disc.apply(d_params, fake)
        loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
        return loss, (jnp.mean(jax.nn.sigmoid(real_logits)), jnp.mean(jax.nn.sigmoid(fake_logits)))

    (d_loss, (d_real, d_fake)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
    d_params, d_opt = _adam(state.tx, d_grads, state.d_opt, state.d_params)

    def g_loss_fn(g_params: Params) -> jax.Array:
        fake = fake_input(jax.nn.sigmoid(gen.apply(g_params, batch.z_g)), batch.u_g)
        return jnp.mean(jax.nn.softplus(-disc.apply(d_params, fake)))

    g_loss, g_grads = jax.value_and_grad(g_loss_fn)(state.g_params)
    g_params, g_opt = _adam(state.tx, g_grads, state.g_opt, state.g_params)
    state = state.replace(step=state.step + 1, g_params=g_params, d_params=d_params, g_opt=g_opt, d_opt=d_opt)
    return state, {"d_loss": d_loss, "g_loss": g_loss, "d_real": d_real, "d_fake": d_fake}


def sample_means(generator: Generator, g_params: Params, key: jax.Array, indices: jax.Array,
                 latent_dim: int) -> jax.Array:
    """`[N, 784]` Bernoulli means (for figures) of the samples `indices [N]`: sample j's code is drawn from the first
    half of `fold_in(key, j)`'s split (`sample_binary` draws its pixels from the second)."""
    keys = jax.vmap(jax.random.split)(example_keys(key, indices))
    z = jax.vmap(lambda k: jax.random.normal(k, (latent_dim,)))(keys[:, 0])
    return jax.nn.sigmoid(generator.apply(g_params, z))


def sample_binary(generator: Generator, g_params: Params, key: jax.Array, indices: jax.Array,
                  latent_dim: int) -> jax.Array:
    """`[N, 784]` float 0/1 samples `indices [N]`: Bernoulli draws from `sample_means` (what gets scored)."""
    means = sample_means(generator, g_params, key, indices, latent_dim)
    keys = jax.vmap(jax.random.split)(example_keys(key, indices))[:, 1]
    return jax.vmap(lambda k, p: jax.random.bernoulli(k, p).astype(p.dtype))(keys, means)
