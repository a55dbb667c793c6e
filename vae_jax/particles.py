"""The particle-filter bound of Maddison et al. (2017), FIVO, for sequence models: K particles each carry a model's
recurrent state; at every step each draws z_t from the model's proposal q and is weighted by
w_t = p(x_t | .) p(z_t | .) / q(z_t | .); when the weights degenerate (effective sample size below K / 2) the
particles are resampled and the step's mean weight enters the estimate:

    log p_hat(x_1:T) = sum over resampling points r of log (1/K) sum_k W_k^(r)    (W: weights since the last one)

exp(log p_hat) is an unbiased estimate of p(x_1:T) (the particle filter's likelihood estimate), so E[log p_hat] <=
log p(x_1:T): a lower bound, which resampling makes tighter than the importance-weighted bound with the same K on
long sequences. Without resampling it is the importance-weighted bound itself.

Resampling is systematic (one uniform per step, `fold_in(key, t)`) and happens only at real steps (`mask` 1), so a
padded sequence gets the same estimate as the sequence alone.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def effective_sample_size(log_weights: jax.Array) -> jax.Array:
    """`[]` (sum_k w_k)^2 / sum_k w_k^2 of `[K]` log-weights, between 1 and K."""
    normalized = log_weights - jax.nn.logsumexp(log_weights)
    return jnp.exp(-jax.nn.logsumexp(2.0 * normalized))


def systematic_indices(key: jax.Array, log_weights: jax.Array) -> jax.Array:
    """`[K]` ancestor indices drawn by systematic resampling from `[K]` log-weights: particle k is chosen about
    K w_k / sum w times, with one uniform u for the K points (u + k) / K."""
    num = log_weights.shape[0]
    cumulative = jnp.cumsum(jax.nn.softmax(log_weights))
    points = (jax.random.uniform(key, (), cumulative.dtype) + jnp.arange(num, dtype=cumulative.dtype)) / num
    return jnp.clip(jnp.searchsorted(cumulative, points), 0, num - 1)


def start(state: Any, dtype: Any) -> tuple[Any, jax.Array, jax.Array]:
    """The filter before the first step: `state` with a leading `[K]`, zero log-weights and estimate."""
    num = jax.tree.leaves(state)[0].shape[0]
    return state, jnp.zeros(num, dtype), jnp.zeros((), dtype)


def step(carry: tuple[Any, jax.Array, jax.Array], new_state: Any, log_increments: jax.Array, key: jax.Array,
         mask: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
    """One step of the filter: the particles moved to `new_state`, their weights multiplied by the step's
    `log_increments [K]` (0 at padding), then resampled by `key` if `mask` is 1 and the effective sample size fell
    below K / 2. Returns the new `(state, log_weights, log_estimate)`."""
    _, log_weights, log_estimate = carry
    log_weights = log_weights + log_increments
    num = log_weights.shape[0]
    resample = (mask > 0) & (effective_sample_size(log_weights) < num / 2)
    drawn = systematic_indices(key, log_weights)
    indices = jnp.where(resample, drawn, jnp.arange(num, dtype=drawn.dtype))
    mean_weight = jax.nn.logsumexp(log_weights) - jnp.log(num)
    return (jax.tree.map(lambda leaf: leaf[indices], new_state), jnp.where(resample, 0.0, log_weights),
            jnp.where(resample, log_estimate + mean_weight, log_estimate))


def finish(carry: tuple[Any, jax.Array, jax.Array]) -> jax.Array:
    """`[]` log p_hat(x): the estimate with the weights since the last resampling."""
    _, log_weights, log_estimate = carry
    return log_estimate + jax.nn.logsumexp(log_weights) - jnp.log(log_weights.shape[0])


def filter_steps(cell: nn.Module, initial_state: Any, inputs: tuple[jax.Array, ...], key: jax.Array) -> jax.Array:
    """`[]` the FIVO estimate log p_hat(x) of a sequence model's step: `cell(state [K, ...], inputs_t) -> (state,
    (StepTerms of [K], _))` (a Flax module of `vae_jax.recurrent`, scanned with its parameters shared by all steps)
    from `initial_state [K, ...]` over `inputs` (leading `[T]`, the mask `[T]` last), its K samples the particles,
    resampled with `fold_in(key, t)` at step t."""

    def filter_step(module: nn.Module, carry: Any, step_inputs: tuple[Any, jax.Array]) -> tuple[Any, None]:
        cell_inputs, t = step_inputs
        state, (terms, _) = module(carry[0], cell_inputs)
        increments = terms.log_likelihood + terms.log_prior - terms.log_posterior
        return step(carry, state, increments, jax.random.fold_in(key, t), cell_inputs[-1]), None

    num_frames = inputs[0].shape[0]
    carry = start(initial_state, inputs[0].dtype)
    carry, _ = nn.scan(filter_step, variable_broadcast="params", split_rngs={"params": False})(
        cell, carry, (inputs, jnp.arange(num_frames)))
    return finish(carry)
