"""Per-example (non-amortized) inference, and the inference gaps of Cremer, Li & Duvenaud (2018).

An amortized encoder maps each x to its posterior's parameters in one pass. Per-example inference instead optimizes
each example's own Gaussian parameters phi_i = (mean_i, logvar_i) to maximize its ELBO, the formulation of the
Stanford CS236 notes before they introduce the encoder. For a trained decoder, with q the encoder's posterior and q*
the best Gaussian for each example:

    approximation gap = log p(x) - L[q*]     (the cost of the Gaussian family)
    amortization gap  = L[q*] - L[q]         (the cost of sharing one encoder across all examples)

log p(x) is estimated by the importance-weighted bound with a large K. A posterior given by per-example parameters
is one more model of the contract: the model's `joint_samples_given_posterior` (`vae_jax.contract`) gives its joint
samples, and the ELBO comes out of `objective.elbo_terms_from_samples` as for any model (with the closed-form KL
where the model has one).

Randomness: example i (its index in the split) gets `fold_in(key, i)`, split into a binarization key and a noise key;
step t of its optimization draws its S samples from `fold_in(noise_key, t)`. A q* therefore does not depend on the
batch it is optimized in.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import evaluate
from vae_jax.contract import Model, Params, as_model
from vae_jax.objective import elbo_terms_from_samples, map_examples

STARTS = ("encoder", "prior")
FINAL_LEARNING_RATE_FRACTION = 0.01  # of Adam's learning rate at the last refinement step


class Refinement(NamedTuple):
    """Per-example Gaussian posteriors found by `refine_posteriors`.

    Attributes:
        mean, logvar: the optimized parameters, pytrees of the model's latent with a leading `[N]` axis.
        trace: `[N, steps]` the S-sample negative-ELBO estimate at each step's parameters (before its update).
    """

    mean: Any
    logvar: Any
    trace: jax.Array


def gaussian_noise(key: jax.Array, like: Any, num_samples: int) -> Any:
    """Standard normal noise `[S, *leaf.shape]` for each leaf of the pytree `like`, leaf l drawn with
    `fold_in(key, l)`."""
    leaves, treedef = jax.tree.flatten(like)
    noise = [jax.random.normal(jax.random.fold_in(key, i), (num_samples, *leaf.shape), leaf.dtype)
             for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, noise)


def posterior_nelbo(model: Model, params: Params, x: jax.Array, mean: Any, logvar: Any, eps: Any) -> jax.Array:
    """`[]` negative ELBO of the `[D]` example under the Gaussian posterior N(mean, diag exp(logvar)) with the noise
    `eps` (`model.joint_samples_given_posterior`)."""
    return elbo_terms_from_samples(model.joint_samples_given_posterior(params, x, mean, logvar, eps)).nelbo


def _start(model: Model, params: Params, x: jax.Array, start: str) -> tuple[Any, Any]:
    """The starting (mean, logvar): the encoder's, or N(0, I) (`start="prior"`) in the encoder's shapes."""
    mean, logvar = model.posterior(params, x)
    if start == "prior":
        return jax.tree.map(jnp.zeros_like, mean), jax.tree.map(jnp.zeros_like, logvar)
    return mean, logvar


def refine_one(model: Model, params: Params, x: jax.Array, key: jax.Array, start: tuple[Any, Any], *, steps: int,
               num_samples: int, learning_rate: float | jax.Array) -> tuple[Any, Any, jax.Array]:
    """Adam on one example's (mean, logvar) for `steps` steps of the `num_samples`-sample negative ELBO, step t
    with the noise of `fold_in(key, t)`. The learning rate decays from `learning_rate` to 1% of it over the steps
    (cosine), so that the last steps settle on the optimum instead of wandering around it at the noise's scale.
    Returns the final (mean, logvar) and the `[steps]` loss trace."""
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=FINAL_LEARNING_RATE_FRACTION))
    phi = start

    def step(carry: tuple[Any, Any], t: jax.Array) -> tuple[tuple[Any, Any], jax.Array]:
        phi, opt_state = carry
        eps = gaussian_noise(jax.random.fold_in(key, t), phi[0], num_samples)
        loss, grads = jax.value_and_grad(lambda p: posterior_nelbo(model, params, x, *p, eps))(phi)
        with jax.numpy_dtype_promotion("standard"):  # Optax mixes its int32 step count with floats
            updates, opt_state = tx.update(grads, opt_state, phi)
        return (optax.apply_updates(phi, updates), opt_state), loss

    (phi, _), trace = jax.lax.scan(step, (phi, tx.init(phi)), jnp.arange(steps))
    return *phi, trace


@functools.partial(jax.jit, static_argnames=("model", "steps", "num_samples", "start", "batch_size",
                                             "dynamic_binarization"))
def refine_posteriors(
    model: Model,
    params: Params,
    pixels: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    num_samples: int,
    learning_rate: float | jax.Array = 5e-2,
    start: str = "encoder",
    batch_size: int = 100,
    dynamic_binarization: bool = False,
) -> Refinement:
    """Optimizes each example's own Gaussian posterior: the whole split in one compiled program, vmapped over the
    examples of a chunk and mapped over `batch_size`-example chunks.

    Args:
        model: a model with `posterior` and `joint_samples_given_posterior` (`vae_jax.contract`).
        params: its variables (fixed: only the per-example parameters move).
        pixels: `[N, D]` uint8 split (the examples' indices are their rows).
        key: the inference key (see the module's docstring).
        steps: Adam steps per example.
        num_samples: S, samples of the ELBO estimate at each step.
        learning_rate: Adam's learning rate.
        start: `encoder` (semi-amortized: from the encoder's output) or `prior` (from N(0, I)).
        batch_size: examples optimized at once (memory only).
        dynamic_binarization: binarize grey levels with a Bernoulli draw keyed by the example.

    Returns:
        `Refinement`.
    """
    model = as_model(model)

    def chunk(chunk_pixels: jax.Array, chunk_indices: jax.Array) -> tuple[Any, Any, jax.Array]:
        def one(x: jax.Array, noise_key: jax.Array) -> tuple[Any, Any, jax.Array]:
            return refine_one(model, params, x, noise_key, _start(model, params, x, start), steps=steps,
                              num_samples=num_samples, learning_rate=learning_rate)

        return map_examples(one, chunk_pixels, chunk_indices, key, dynamic_binarization)

    return Refinement(*evaluate.map_over_split(chunk, pixels, batch_size, None))


EVALUATION_STEP = 2**31 - 1  # the noise step of `evaluate_posteriors`, beyond any refinement's steps


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "batch_size", "dynamic_binarization"))
def evaluate_posteriors(
    model: Model,
    params: Params,
    pixels: jax.Array,
    key: jax.Array,
    mean: Any,
    logvar: Any,
    *,
    num_samples: int,
    batch_size: int = 100,
    dynamic_binarization: bool = False,
) -> jax.Array:
    """`[N]` negative ELBO of each example under its own Gaussian posterior (`mean`, `logvar`, pytrees with a leading
    `[N]`), estimated with `num_samples` fresh samples: those of step `EVALUATION_STEP`, which no refinement uses."""
    model = as_model(model)

    def chunk(chunk_pixels: jax.Array, chunk_indices: jax.Array) -> jax.Array:
        phi = jax.tree.map(lambda leaf: leaf[chunk_indices], (mean, logvar))  # padding rows read a clamped index
        x, keys = map_examples(lambda x, k: (x, k), chunk_pixels, chunk_indices, key, dynamic_binarization)

        def one(x: jax.Array, noise_key: jax.Array, phi: tuple[Any, Any]) -> jax.Array:
            eps = gaussian_noise(jax.random.fold_in(noise_key, EVALUATION_STEP), phi[0], num_samples)
            return posterior_nelbo(model, params, x, *phi, eps)

        return jax.vmap(one)(x, keys, phi)

    return evaluate.map_over_split(chunk, pixels, batch_size, None)


class Gaps(NamedTuple):
    """Per-example results of `amortization_gaps`, each `[N]` in nats, and the wall times per example.

    Attributes:
        log_px: the importance-weighted estimate of log p(x).
        elbo_refined: L[q*], the ELBO of the per-example posterior.
        elbo_amortized: L[q], the ELBO of the encoder's posterior.
        encoder_seconds: wall time of amortized inference (one encoder pass, the shortest of 5), per example.
        refine_seconds: wall time of the per-example optimization, per example.
    """

    log_px: np.ndarray
    elbo_refined: np.ndarray
    elbo_amortized: np.ndarray
    encoder_seconds: float
    refine_seconds: float


def _timed(run: Any, repeats: int = 1) -> tuple[Any, float]:
    """`run()`'s result and its shortest wall time over `repeats` calls (call it with an already compiled function)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(run())
        seconds.append(time.perf_counter() - start)
    return result, min(seconds)


def amortization_gaps(
    model: Model,
    params: Params,
    pixels: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    num_samples: int,
    learning_rate: float = 5e-2,
    eval_samples: int = 100,
    iwae_samples: int = 5000,
    batch_size: int = 100,
    dynamic_binarization: bool = False,
) -> Gaps:
    """log p(x), L[q*] and L[q] of every example of a split, and what amortized and per-example inference cost.

    L[q*] comes from `refine_posteriors` (from the encoder's output) and `evaluate_posteriors`; L[q] is the ELBO of
    the model's own amortized posterior (`evaluate.evaluate_elbo`), both with `eval_samples` samples per example;
    log p(x) is the K = `iwae_samples` bound (`evaluate.evaluate_iwae`). All three use `key` as an evaluation does,
    so each example is binarized the same way in each.

    Returns:
        `Gaps`.
    """
    model = as_model(model)
    dynamic = {"dynamic_binarization": dynamic_binarization}
    amortized = evaluate.evaluate_elbo(model, params, pixels, key, batch_size=batch_size, num_samples=eval_samples,
                                       **dynamic)
    log_px = evaluate.evaluate_iwae(model, params, pixels, key, num_samples=iwae_samples, batch_size=batch_size,
                                    **dynamic)
    encode = jax.jit(lambda p, x: evaluate.map_over_split(lambda b, _: model.posterior(p, b.astype(jnp.float32)), x,
                                                          batch_size, None)).lower(params, pixels).compile()
    _, encoder_seconds = _timed(lambda: encode(params, pixels), repeats=5)
    options = {"steps": steps, "num_samples": num_samples, "batch_size": batch_size, **dynamic}
    refine = refine_posteriors.lower(model, params, pixels, key, learning_rate=learning_rate, **options).compile()
    refined, refine_seconds = _timed(lambda: refine(params, pixels, key, learning_rate=learning_rate))
    nelbo_refined = evaluate_posteriors(model, params, pixels, key, refined.mean, refined.logvar,
                                        num_samples=eval_samples, batch_size=batch_size, **dynamic)
    count = pixels.shape[0]
    return Gaps(log_px=np.asarray(log_px, np.float64), elbo_refined=-np.asarray(nelbo_refined, np.float64),
                elbo_amortized=-np.asarray(amortized.nelbo, np.float64), encoder_seconds=encoder_seconds / count,
                refine_seconds=refine_seconds / count)
