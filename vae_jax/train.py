"""Training: the train state, the Optax optimizer, and one epoch as a single compiled `lax.scan`.

Keys: the run's key is `jax.random.key(seed)`, split once into named keys (`init`, `train`, `eval`, `sample`).
Epoch `e` uses `fold_in(train_key, e)`, split into a shuffle key and the base of the per-example keys
`fold_in(base, index)`. A resumed run therefore replays exactly the randomness of an uninterrupted one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from vae_jax.configs import OptimConfig
from vae_jax.objective import ElboTerms, Params, batch_elbo_terms, iwae_bound, map_examples
from vae_jax.parallel import shard_batch


class RunKeys(NamedTuple):
    """The named keys of a run, all split once from `jax.random.key(seed)`."""

    init: jax.Array
    train: jax.Array
    eval: jax.Array
    sample: jax.Array


def run_keys(root_key: jax.Array) -> RunKeys:
    """Splits the run's key, `jax.random.key(seed)`, into its named keys."""
    return RunKeys(*jax.random.split(root_key, 4))


class TrainState(struct.PyTreeNode):
    """Parameters, optimizer state and step count; the modules and optimizer ride along as static fields.

    Attributes:
        step: `[]` int32 number of optimizer steps taken.
        params: `{"encoder": ..., "decoder": ...}` variables, and `"prior"` with a learned prior.
        opt_state: the optimizer's state.
        encoder: module `x [..., D] -> (mean, logvar) [..., J]`.
        decoder: module `z [..., J] -> logits [..., D]`.
        tx: the Optax optimizer.
        prior: None for p(z) = N(0, I), or a learned prior of `vae_jax.priors`.
    """

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    encoder: nn.Module = struct.field(pytree_node=False)
    decoder: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    prior: nn.Module | None = struct.field(pytree_node=False, default=None)

    @property
    def models(self) -> dict[str, nn.Module | None]:
        """`{"encoder", "decoder", "prior"}`, the keyword arguments of the objective and evaluation functions."""
        return {"encoder": self.encoder, "decoder": self.decoder, "prior": self.prior}

    def apply_gradients(self, grads: Params) -> TrainState:
        """One optimizer step (named `optimizer_update` in profiles)."""
        with jax.named_scope("optimizer_update"):
            updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
            params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def init_params(key: jax.Array, encoder: nn.Module, decoder: nn.Module, num_pixels: int = 784,
                prior: nn.Module | None = None) -> Params:
    """Initial `{"encoder": ..., "decoder": ...}` variables (and `"prior"` with a learned prior), from a
    `[num_pixels]` dummy input."""
    encoder_key, decoder_key = jax.random.split(key)
    x = jnp.zeros((num_pixels,), jnp.float32)
    encoder_params = encoder.init(encoder_key, x)
    mean, _ = encoder.apply(encoder_params, x)
    params = {"encoder": encoder_params, "decoder": decoder.init(decoder_key, mean)}
    if prior is not None:
        params["prior"] = prior.init(jax.random.fold_in(key, 2), functools.partial(encoder.apply, encoder_params))
    return params


def create_train_state(
    key: jax.Array, encoder: nn.Module, decoder: nn.Module, tx: optax.GradientTransformation, num_pixels: int = 784,
    prior: nn.Module | None = None,
) -> TrainState:
    """A fresh train state with parameters initialized from `key`; `prior` None is p(z) = N(0, I)."""
    params = init_params(key, encoder, decoder, num_pixels, prior)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), encoder=encoder,
                      decoder=decoder, tx=tx, prior=prior)


def make_optimizer(config: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """The Optax optimizer that `config` describes; `total_steps` sets the length of a cosine schedule.

    The state's structure depends only on `config.name`: clipping and schedule are always present (as
    `identity` and a constant schedule when off), so a run can resume with another learning rate, schedule
    or clipping norm.
    """
    if config.schedule == "cosine":
        learning_rate = optax.cosine_decay_schedule(config.learning_rate, total_steps, config.final_lr_fraction)
    else:
        learning_rate = optax.constant_schedule(config.learning_rate)
    if config.name == "adamw":
        optimizer = optax.adamw(learning_rate, weight_decay=config.weight_decay)
    elif config.name == "sgd":
        optimizer = optax.sgd(learning_rate, momentum=0.9)
    else:
        optimizer = optax.adam(learning_rate)
    clip = optax.clip_by_global_norm(config.grad_clip_norm) if config.grad_clip_norm > 0 else optax.identity()
    return optax.chain(clip, optimizer)


class EpochResult(NamedTuple):
    """What one epoch returns besides the new state.

    Attributes:
        loss: `[steps]` the training loss of each step (the negative ELBO when `kl_weight` is 1 and free bits
            are off, the negative IWAE bound for the `iwae` objective).
        nelbo, rec, kl: `[steps]` batch means of the negative-ELBO terms at each step.
        kl_per_dim: `[J]` mean KL of each latent dimension over the epoch's examples.
        failed_step: `[]` int32 index within the epoch of the first step whose loss or gradient was not
            finite (see `all_finite`), or -1. From that step on, no update is applied.
    """

    loss: jax.Array
    nelbo: jax.Array
    rec: jax.Array
    kl: jax.Array
    kl_per_dim: jax.Array
    failed_step: jax.Array


def training_loss(terms: ElboTerms, kl_weight: jax.Array | float = 1.0, free_bits: float = 0.0) -> jax.Array:
    """The batch loss mean(rec) + kl_weight * sum_j max(free_bits, mean(KL_j)) from `[B]`-batched terms.

    With `kl_weight` 1 and `free_bits` 0 this is the mean negative ELBO. Free bits need a KL that splits by
    dimension, i.e. the N(0, I) prior.
    """
    if free_bits > 0:
        if terms.kl_per_dim.shape[-1] == 0:
            raise ValueError("free bits need the per-dimension KL of the N(0, I) prior; set free_bits=0")
        kl = jnp.sum(jnp.maximum(free_bits, jnp.mean(terms.kl_per_dim, axis=0)))
    else:
        kl = jnp.mean(terms.kl)
    return jnp.mean(terms.rec) + kl_weight * kl


def _update_by_conditional(state: TrainState, grads: Params, apply: jax.Array) -> TrainState:
    return jax.lax.cond(apply, lambda s: s.apply_gradients(grads), lambda s: s, state)


def _update_by_select(state: TrainState, grads: Params, apply: jax.Array) -> TrainState:
    updated = state.apply_gradients(grads)
    return jax.tree.map(lambda new, old: jnp.where(apply, new, old), updated, state)


def guarded_update(state: TrainState, grads: Params, apply: jax.Array) -> TrainState:
    """`state.apply_gradients(grads)` where the `[]` bool `apply` holds, else `state` unchanged.

    Compiled for the CPU it branches (`lax.cond`), so a skipped update costs nothing. Compiled for anything else
    it computes the update and selects, because XLA:GPU copies a conditional's predicate to the host and waits for
    the device at every step. Both give the same state.
    """
    return jax.lax.platform_dependent(state, grads, apply, cpu=_update_by_conditional, default=_update_by_select)


def all_finite(tree: Any) -> jax.Array:
    """`[]` bool: whether the sum of all elements of the array leaves of `tree` is finite.

    That is false whenever an element is NaN or infinite, and otherwise only if the sum overflows float32, which
    takes elements of about 3.4e38 / (number of elements) at least (5e32 for the `cs236` model's 661,404
    parameters): a divergence too, since Adam's second moment overflows from 1.8e19 on. One reducing pass per leaf,
    without the boolean arrays of `jnp.isfinite`.
    """
    with jax.named_scope("finite_check"):
        return jnp.isfinite(sum(jnp.sum(leaf, dtype=jnp.float32) for leaf in jax.tree.leaves(tree)))


def train_epoch(
    state: TrainState,
    pixels: jax.Array,
    epoch_key: jax.Array,
    *,
    batch_size: int,
    objective: str = "elbo",
    num_samples: int = 1,
    kl_weight: jax.Array | float = 1.0,
    free_bits: float = 0.0,
    dynamic_binarization: bool = False,
    mesh: Mesh | None = None,
    progress: Callable[[jax.Array, jax.Array], None] | None = None,
    progress_every: int = 50,
) -> tuple[TrainState, EpochResult]:
    """One epoch: shuffle, batch, binarize and step, all inside one `lax.scan` (jit this function).

    The last `N mod batch_size` examples of the shuffled split are dropped. A step whose loss or gradient is
    not finite is not applied, nor is any later one; `EpochResult.failed_step` says where it happened.

    Args:
        state: the train state.
        pixels: `[N, D]` uint8 training split, resident on the device.
        epoch_key: `fold_in(train_key, epoch)`.
        batch_size: examples per step.
        objective: `elbo`, or `iwae` for the importance-weighted bound with `num_samples` samples.
        num_samples: samples of z per example.
        kl_weight: weight of the KL term (beta; a traced scalar, so warm-up does not recompile).
        free_bits: minimum KL per latent dimension, in nats (`elbo` objective only).
        dynamic_binarization: draw pixels from Bernoulli(grey / 255) at each use.
        mesh: data parallelism: each batch is split over this one-axis device mesh (see `vae_jax.parallel`);
            `state` and `pixels` should be replicated on it.
        progress: if given, called on the host as `progress(steps_done, running_mean_loss)` every
            `progress_every` steps from inside the compiled epoch (`jax.debug.callback`), e.g. for a progress bar.
            Only where the epoch is compiled for the CPU: elsewhere the conditional it needs at every step would
            stall the device (see `guarded_update`).
        progress_every: steps between two `progress` calls.

    Returns:
        The new state and the epoch's `EpochResult`.
    """
    shuffle_key, examples_key = jax.random.split(epoch_key)
    num_steps = pixels.shape[0] // batch_size
    order = jax.random.permutation(shuffle_key, pixels.shape[0])[: num_steps * batch_size]
    models = state.models

    def loss_fn(params: Params, indices: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ElboTerms]]:
        indices = shard_batch(indices, mesh)
        batch = (shard_batch(pixels[indices], mesh), indices, examples_key)
        elbo_samples = 1 if objective == "iwae" else num_samples
        terms = batch_elbo_terms(params, *batch, **models, num_samples=elbo_samples,
                                 dynamic_binarization=dynamic_binarization)
        if objective == "iwae":

            def bound(x: jax.Array, key: jax.Array) -> jax.Array:
                return iwae_bound(params, x, key, **models, num_samples=num_samples, chunk_size=num_samples)

            loss = -jnp.mean(map_examples(bound, *batch, dynamic_binarization))
        else:
            loss = training_loss(terms, kl_weight, free_bits)
        return loss, (loss, terms)

    def step(carry: tuple[TrainState, jax.Array, jax.Array], batch: tuple[jax.Array, jax.Array]) -> tuple[Any, Any]:
        current, failed_step, loss_sum = carry
        index_in_epoch, indices = batch
        (_, (loss, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(current.params, indices)
        finite = all_finite((loss, grads))
        current = guarded_update(current, grads, finite & (failed_step < 0))
        failed_step = jnp.where((failed_step < 0) & ~finite, index_in_epoch, failed_step)
        loss_sum = loss_sum + loss
        if progress is not None:
            steps_done = index_in_epoch + 1

            def report() -> None:
                jax.lax.cond(steps_done % progress_every == 0,
                             lambda: jax.debug.callback(progress, steps_done, loss_sum / steps_done), lambda: None)

            jax.lax.platform_dependent(cpu=report, default=lambda: None)
        means = (loss, *(jnp.mean(t, axis=0) for t in terms[:4]))
        return (current, failed_step, loss_sum), means

    batches = order.reshape(num_steps, batch_size)
    carry = (state, jnp.array(-1, jnp.int32), jnp.zeros((), jnp.float32))
    (state, failed_step, _), (loss, nelbo, rec, kl, kl_per_dim) = jax.lax.scan(
        step, carry, (jnp.arange(num_steps), batches))
    return state, EpochResult(loss, nelbo, rec, kl, jnp.mean(kl_per_dim, axis=0), failed_step)


train_epoch_jit = jax.jit(train_epoch, static_argnames=(
    "batch_size", "objective", "num_samples", "free_bits", "dynamic_binarization", "mesh", "progress",
    "progress_every"))
