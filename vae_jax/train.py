"""Training: the train state, one pure `train_step` over a batch, and one epoch as a single compiled `lax.scan` of it.

Keys: the run's key is `jax.random.key(seed)`, split once into named keys (`init`, `train`, `eval`). Epoch `e`
uses `fold_in(train_key, e)`, split into a shuffle key and the base of the per-example keys `fold_in(base, index)`.
A resumed run therefore replays exactly the randomness of an uninterrupted one.

Nothing here reads a config: the model, the Optax optimizer and the objective are objects (`vae_jax.builders` makes
them from a config).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from vae_jax.contract import Model, Params, as_model
from vae_jax.errors import ConfigError
from vae_jax.objective import Elbo, ElboTerms, Objective, map_examples
from vae_jax.parallel import shard_batch

ELBO = Elbo()  # the default objective: the single-sample negative ELBO


class RunKeys(NamedTuple):
    """The named keys of a run, all split once from `jax.random.key(seed)`."""

    init: jax.Array
    train: jax.Array
    eval: jax.Array


def run_keys(root_key: jax.Array) -> RunKeys:
    """Splits the run's key, `jax.random.key(seed)`, into its named keys: the first three of a split into four (the
    fourth, once meant for samples, is unused; a split into three would change every run's numbers)."""
    return RunKeys(*jax.random.split(root_key, 4)[:3])


class TrainState(struct.PyTreeNode):
    """Parameters, optimizer state and step count; the model and optimizer ride along as static fields.

    Attributes:
        step: `[]` int32 number of optimizer steps taken.
        params: the model's variables.
        opt_state: the optimizer's state.
        model: the model (`vae_jax.contract`).
        tx: the Optax optimizer.
    """

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    model: Model = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def eval_params(self) -> Params:
        """The parameters to validate, evaluate and sample: the moving average that `params_ema` keeps in the
        optimizer's state, where the optimizer has one, else `params`."""
        average = optax.tree_utils.tree_get(self.opt_state, "params_ema")
        return self.params if average is None else average

    def apply_gradients(self, grads: Params) -> TrainState:
        """One optimizer step (named `optimizer_update` in profiles)."""
        # Optax mixes its int32 step count with floats, which strict dtype promotion would refuse.
        with jax.named_scope("optimizer_update"), jax.numpy_dtype_promotion("standard"):
            updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
            params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def create_train_state(key: jax.Array, model: Any, tx: optax.GradientTransformation, example: Any) -> TrainState:
    """A fresh train state: `model.init(key, x)`, and the optimizer's state of it.

    `model` is a `vae_jax.contract.Model` or a Flax module that keeps the contract (`contract.as_model`);
    `example` is the shape of one example as the model receives it, `(D,)` (`data.Dataset.num_pixels`), and x zeros
    of it; or x itself, e.g. a `sequences.Sequence` (`data.example_input`).
    """
    model = as_model(model)
    shape_only = isinstance(example, tuple) and all(isinstance(size, int) for size in example)
    params = model.init(key, jnp.zeros(example, jnp.float32) if shape_only else example)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), model=model, tx=tx)


class ParamsEmaState(NamedTuple):
    """The state of `params_ema(decay)`: the exponential moving average of the parameters (a tree like them)."""

    params_ema: Params


class DebiasedParamsEmaState(NamedTuple):
    """The state of `params_ema(decay, debias=True)`.

    Attributes:
        count: `[]` int32 number t of steps averaged.
        params_ema: the debiased average of the parameters after those steps (a tree like them; the initial
            parameters while t = 0).
    """

    count: jax.Array
    params_ema: Params


def params_ema(decay: float, debias: bool = False) -> optax.GradientTransformation:
    """Polyak averaging: an exponential moving average of the parameters, kept in the optimizer's state.

    Chain it last (after the transformation that makes the final updates): it leaves the updates alone and, after
    each step, moves the average towards the new parameters x_t = params + updates. `TrainState.eval_params` reads it.

    Without `debias`, `average = decay * average + (1 - decay) * x_t`, starting from the initial parameters (after
    t steps they keep a weight of decay^t). With it, as `optax.ema(debias=True)` but stored debiased:
    `m_t = m_{t-1} + w_t (x_t - m_{t-1})` with `w_t = (1 - decay) / (1 - decay^t)`, the average of x_1..x_t weighted
    by decay^(t - i) and normalized, so that m_1 = x_1 and no weight is left on the initialization. The count t
    advances with each applied step only: a step that `guarded_update` skips leaves the whole state as it was.

    Args:
        decay: in [0, 1); the average's horizon is about `1 / (1 - decay)` steps.
        debias: store the debiased average, with the count in the state (`DebiasedParamsEmaState`; else
            `ParamsEmaState`, the layout of checkpoints made before debiasing existed).
    """
    # w_t = (1 - d) / (1 - d^t) = expm1(log d) / expm1(t log d), in float32 from log d taken in float64 on the host:
    # 1 - float32(d) would be off by 1.7e-4 relative at d = 0.9999, and w_1 is exactly 1.
    log_decay = math.log(decay) if decay > 0 else -math.inf

    def init(params: Params) -> ParamsEmaState | DebiasedParamsEmaState:
        average = jax.tree.map(jnp.copy, params)
        return DebiasedParamsEmaState(jnp.zeros((), jnp.int32), average) if debias else ParamsEmaState(average)

    def update(updates: Params, state: ParamsEmaState | DebiasedParamsEmaState,
               params: Params | None = None) -> tuple[Params, ParamsEmaState | DebiasedParamsEmaState]:
        if params is None:
            raise ValueError("params_ema needs the parameters: call update(updates, state, params)")
        new_params = optax.apply_updates(params, updates)
        if not debias:
            return updates, ParamsEmaState(optax.incremental_update(new_params, state.params_ema, 1.0 - decay))
        count = state.count + 1
        log_d = jnp.float32(log_decay)
        weight = jnp.expm1(log_d) / jnp.expm1(count.astype(jnp.float32) * log_d)
        return updates, DebiasedParamsEmaState(count, optax.incremental_update(new_params, state.params_ema, weight))

    return optax.GradientTransformation(init, update)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of `num_examples` (the last incomplete batch is dropped)."""
    return num_examples // batch_size


class StepResult(NamedTuple):
    """What one step returns besides the new state.

    Attributes:
        loss: `[]` the training loss (the negative ELBO for `Elbo()` at `kl_weight` 1).
        terms: the batch means of the examples' `ElboTerms` (`nelbo`, `rec`, `kl` `[]`; `kl_per_dim` and
            `posterior_mean` `[J]`, `[0]` where the model gives none).
        finite: `[]` bool, whether the loss and gradient were finite (`all_finite`), i.e. whether the update
            was applied (where `update_if` held).
    """

    loss: jax.Array
    terms: ElboTerms
    finite: jax.Array


def train_step(
    state: TrainState,
    pixels: jax.Array,
    indices: jax.Array,
    key: jax.Array,
    *,
    objective: Objective = ELBO,
    kl_weight: jax.Array | float = 1.0,
    dynamic_binarization: bool = False,
    mesh: Mesh | None = None,
    update_if: jax.Array | bool = True,
) -> tuple[TrainState, StepResult]:
    """One optimizer step on one batch, pure: for users who bring their own input pipeline (jit it).

    A step whose loss or gradient is not finite is not applied (the state comes back unchanged) and says so in
    `StepResult.finite`.

    Args:
        state: the train state.
        pixels: `[B, D]` uint8 images of the batch (0/1, or grey levels with `dynamic_binarization`).
        indices: `[B]` int positions of the examples in their split: example i draws its randomness from
            `fold_in(key, i)` (`objective.map_examples`), whatever the batch.
        key: the key of this epoch's examples.
        objective: the training objective (`objective.Elbo`, `objective.Iwae`, or your own).
        kl_weight: weight of the KL term (beta; a traced scalar, so a warm-up does not recompile).
        dynamic_binarization: draw pixels from Bernoulli(grey / 255).
        mesh: data parallelism: the batch is split over this one-axis device mesh (see `vae_jax.parallel`).
        update_if: `[]` bool; where false, the update is not applied even if finite (the compiled epoch stops
            updating after a failed step this way).

    Returns:
        The new state and the step's `StepResult`.
    """
    pixels, indices = shard_batch((pixels, indices), mesh)

    def loss_fn(params: Params) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        def one(x: jax.Array, noise_key: jax.Array) -> Any:
            return objective.per_example(state.model, params, x, noise_key)

        terms, values = map_examples(one, pixels, indices, key, dynamic_binarization)
        loss = objective.batch_loss(terms, values, kl_weight)
        return loss, (loss, terms)

    (_, (loss, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    finite = all_finite((loss, grads))
    state = guarded_update(state, grads, finite & update_if)
    return state, StepResult(loss, jax.tree.map(lambda t: jnp.mean(t, axis=0), terms), finite)


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


class EpochResult(NamedTuple):
    """What one epoch returns besides the new state.

    Attributes:
        loss: `[steps]` each step's loss.
        terms: each step's `StepResult.terms`, with a leading `[steps]` axis.
        failed_step: `[]` int32 index within the epoch of the first step whose loss or gradient was not
            finite (see `all_finite`), or -1. From that step on, no update is applied.
    """

    loss: jax.Array
    terms: ElboTerms
    failed_step: jax.Array


def epoch_batches(epoch_key: jax.Array, num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """An epoch's examples in batches: `fold_in(train_key, epoch)` split into a shuffle key and the base of the
    per-example keys (returned first), and `[steps, batch_size]` int indices, a permutation of the split less its last
    `num_examples mod batch_size`."""
    if not 0 < batch_size <= num_examples:
        raise ConfigError(f"batch_size={batch_size} does not fit the {num_examples} training examples; use a "
                          f"batch size between 1 and {num_examples}")
    shuffle_key, examples_key = jax.random.split(epoch_key)
    num_steps = steps_per_epoch(num_examples, batch_size)
    order = jax.random.permutation(shuffle_key, num_examples)[: num_steps * batch_size]
    return examples_key, order.reshape(num_steps, batch_size)


def train_epoch(
    state: TrainState,
    pixels: jax.Array,
    epoch_key: jax.Array,
    *,
    batch_size: int,
    objective: Objective = ELBO,
    kl_weight: jax.Array | float = 1.0,
    dynamic_binarization: bool = False,
    mesh: Mesh | None = None,
    progress: Callable[[jax.Array, jax.Array], None] | None = None,
    progress_every: int = 50,
    first_step: jax.Array | int = 0,
    num_steps: int | None = None,
) -> tuple[TrainState, EpochResult]:
    """One epoch, or its steps `first_step .. first_step + num_steps - 1`: shuffle and batch the split, then
    `train_step` on each batch, all inside one `lax.scan` (jit this function, or use `train_epoch_jit`). An epoch run
    in pieces ends bit for bit where it ends run whole, and the pieces' results concatenate to the whole's.

    The last `N mod batch_size` examples of the shuffled split are dropped. A step whose loss or gradient is
    not finite is not applied, nor is any later one; `EpochResult.failed_step` says where it happened.

    Args:
        state: the train state.
        pixels: `[N, D]` uint8 training split, resident on the device.
        epoch_key: `fold_in(train_key, epoch)`.
        batch_size: examples per step; at most N.
        objective, kl_weight, dynamic_binarization, mesh: see `train_step`; with a `mesh`, `state` and `pixels`
            should be replicated on it.
        progress, progress_every: if given, `progress(steps_done, running_mean_loss)` is called on the host every
            `progress_every` steps from inside the compiled epoch (`jax.debug.callback`), e.g. for a progress bar;
            only on the CPU: elsewhere its conditional would stall the device at every step (see `guarded_update`).
        first_step: the epoch's step to start from (traced: any start compiles once per `num_steps`).
        num_steps: how many steps to run (static); None runs all the epoch's steps (from `first_step` 0).

    Returns:
        The new state and the `EpochResult` of the steps run (`failed_step` counts within the epoch).
    """
    examples_key, batches = epoch_batches(epoch_key, pixels.shape[0], batch_size)
    num_steps = piece_steps(num_steps, batches.shape[0])
    batches = jax.lax.dynamic_slice_in_dim(batches, first_step, num_steps)
    return scan_steps(state, ScanCarry.start(), batches, examples_key, lambda i: (pixels[i], i), first_step,
                      progress=progress, progress_every=progress_every, objective=objective, kl_weight=kl_weight,
                      dynamic_binarization=dynamic_binarization, mesh=mesh)[:2]


def piece_steps(num_steps: int | None, epoch_steps: int) -> int:
    """`num_steps` (None: all `epoch_steps`), the length of a piece of an epoch, checked to fit it (`ConfigError`)."""
    num_steps = epoch_steps if num_steps is None else num_steps
    if not 0 < num_steps <= epoch_steps:
        raise ConfigError(f"num_steps={num_steps} does not fit an epoch of {epoch_steps} steps")
    return num_steps


class ScanCarry(NamedTuple):
    """What a piece of an epoch carries between its steps, besides the state: `failed_step`, `[]` int32 (the epoch's
    first step that was not finite, or -1), and `loss_sum`, `[]` float32 (the piece's losses so far, for progress)."""

    failed_step: jax.Array
    loss_sum: jax.Array

    @classmethod
    def start(cls) -> ScanCarry:
        return cls(jnp.array(-1, jnp.int32), jnp.zeros((), jnp.float32))


def scan_steps(
    state: TrainState,
    carry: ScanCarry,
    batches: Any,
    examples_key: jax.Array,
    batch_of: Callable[[Any], tuple[jax.Array, jax.Array]],
    first_step: jax.Array | int,
    done: jax.Array | int = 0,
    *,
    progress: Callable[[jax.Array, jax.Array], None] | None = None,
    progress_every: int = 50,
    **step_options: Any,
) -> tuple[TrainState, EpochResult, ScanCarry]:
    """Steps of a piece of an epoch as one `lax.scan` of `train_step`: the body that `train_epoch` (on a split
    resident on the device) and `vae_jax.stream.train_epoch` (on batches fed from the host) share. Returns the new
    state, the `EpochResult` of the `[S]` steps (`failed_step` within the epoch, over the piece so far) and the carry.

    Args:
        state, carry: the train state, and what the piece's steps before carried (`ScanCarry.start()` at its start).
        batches: a pytree with a leading `[S]` axis, one entry per step.
        examples_key: the base of the epoch's per-example keys (`epoch_batches`).
        batch_of: maps one step's entry of `batches` to its `(pixels [B, D] uint8, indices [B])`.
        first_step: the epoch's index of the piece's first step.
        done: the piece's steps before `batches[0]` (a piece scanned in parts).
        progress, progress_every, **step_options: as in `train_epoch` (`step_options` go to `train_step`).
    """
    def step(carry: tuple[TrainState, ScanCarry], batch: tuple[jax.Array, Any]) -> tuple[Any, Any]:
        current, (failed_step, loss_sum) = carry
        step_in_piece, entry = batch
        index_in_epoch = first_step + step_in_piece
        pixels, indices = batch_of(entry)
        current, result = train_step(current, pixels, indices, examples_key, update_if=failed_step < 0, **step_options)
        failed_step = jnp.where((failed_step < 0) & ~result.finite, index_in_epoch, failed_step)
        loss_sum = loss_sum + result.loss
        if progress is not None:
            _report(progress, progress_every, index_in_epoch + 1, loss_sum / (step_in_piece + 1).astype(loss_sum.dtype))
        return (current, ScanCarry(failed_step, loss_sum)), (result.loss, result.terms)

    steps_in_piece = done + jnp.arange(jax.tree.leaves(batches)[0].shape[0])
    (state, carry), (loss, terms) = jax.lax.scan(step, (state, carry), (steps_in_piece, batches))
    return state, EpochResult(loss, terms, carry.failed_step), carry


def _report(progress: Callable[[jax.Array, jax.Array], None], every: int, steps_done: jax.Array,
            running_loss: jax.Array) -> None:
    """Calls `progress(steps_done, running_loss)` on the host every `every` steps, from a compiled epoch on the CPU
    only (see `train_epoch`)."""
    def report() -> None:
        jax.lax.cond(steps_done % every == 0, lambda: jax.debug.callback(progress, steps_done, running_loss),
                     lambda: None)

    jax.lax.platform_dependent(cpu=report, default=lambda: None)


train_epoch_jit = jax.jit(train_epoch, static_argnames=(
    "batch_size", "objective", "dynamic_binarization", "mesh", "progress", "progress_every", "num_steps"))
