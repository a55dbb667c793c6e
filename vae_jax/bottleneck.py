"""The information bottleneck of a trained model: how much its code says about x, and how useful the code is.

Three measurements of a model that keeps the contract (`vae_jax.contract`) with a Gaussian `posterior`:

- the mutual information between x and z under the encoder and the empirical data distribution, and the KL of the
  aggregate posterior from the prior. With q(z) = (1/N) sum_n q(z|x_n), the aggregate posterior over N examples,
  the average KL splits as (Hoffman & Johnson, 2016, "ELBO surgery", eq. 3)

      (1/N) sum_n KL(q(z|x_n) || p(z))  =  I_q(x; z)  +  KL(q(z) || p(z)),
      I_q(x; z) = E_n E_{z~q(z|x_n)} [log q(z|x_n) - log q(z)]  <=  log N,

  estimated by Monte Carlo (`aggregate_posterior_information`);
- the accuracy of a linear probe (multinomial logistic regression) on the posterior means, predicting class labels
  (`fit_probe`, `select_probe`);
- both read from a trained run's work directory (`read_run`), as `vae_jax eval` opens it.

With the rate R (the average KL) and the distortion D (the reconstruction loss -E_q log p(x|z)), Alemi et al.
(2018, "Fixing a Broken ELBO", eq. 6) bound the mutual information of the encoder under the data distribution:
H - D <= I(x; z) <= R, with H the data's entropy.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import data, evaluate
from vae_jax.distributions import gaussian_log_prob_of_noise, standard_normal_log_prob
from vae_jax.objective import map_examples

DEFAULT_L2S = (1e-4, 1e-3, 1e-2, 1e-1)  # the probe's L2 penalties that `select_probe` tries
MEMORY_BUDGET = 2**25  # floats of one chunk of the [C, N, J] pairwise differences (128 MiB in float32)


class Information(NamedTuple):
    """The ELBO-surgery terms of an encoder on N examples, in nats (scalars).

    Attributes:
        mutual_information: I_q(x; z), at most `log_n`.
        marginal_kl: KL(q(z) || p(z)), the aggregate posterior's KL from the prior.
        average_kl: (1/N) sum_n KL(q(z|x_n) || p(z)), Monte Carlo at the same draws: it equals
            `mutual_information + marginal_kl` to rounding.
        log_n: log N, the most that I_q can be on N examples.
    """

    mutual_information: jax.Array
    marginal_kl: jax.Array
    average_kl: jax.Array
    log_n: float


class Probe(NamedTuple):
    """A linear probe: logits = ((features - center) / scale) @ weights + bias.

    Attributes:
        weights: `[J, C]`.
        bias: `[C]`.
        center: `[J]` the training features' mean.
        scale: `[J]` their standard deviation (plus 1e-6).
    """

    weights: jax.Array
    bias: jax.Array
    center: jax.Array
    scale: jax.Array


def log_aggregate_posterior(z: jax.Array, mean: jax.Array, logvar: jax.Array, chunk_size: int = 0) -> jax.Array:
    """log q(z_i) = logsumexp_n log N(z_i; mean_n, diag exp(logvar_n)) - log N for each point.

    The `[M, N]` log-densities are formed `chunk_size` points at a time (default: as many as `MEMORY_BUDGET` floats of
    `[C, N, J]` differences allow), so that N = 10,000 fits in memory.

    Args:
        z: `[M, J]` points.
        mean: `[N, J]` posterior means, one per example.
        logvar: `[N, J]` posterior log-variances.
        chunk_size: points per chunk; 0 chooses it from `MEMORY_BUDGET`.

    Returns:
        `[M]` log-densities of the aggregate posterior q(z) = (1/N) sum_n q(z|x_n), in nats.
    """
    num_points, num_examples = z.shape[0], mean.shape[0]
    chunk = chunk_size or max(1, min(num_points, MEMORY_BUDGET // max(num_examples * mean.shape[1], 1)))
    padded = jnp.pad(z, ((0, -num_points % chunk), (0, 0)))
    precision = jnp.exp(-logvar)
    constant = -0.5 * jnp.sum(logvar + math.log(2 * math.pi), axis=-1)  # [N]

    def one_chunk(points: jax.Array) -> jax.Array:  # [C, J] -> [C]
        squared = jnp.einsum("cnj,nj->cn", jnp.square(points[:, None, :] - mean[None]), precision)
        return jax.nn.logsumexp(constant[None] - 0.5 * squared, axis=1) - math.log(num_examples)

    chunks = padded.reshape(-1, chunk, z.shape[1])
    return jax.lax.map(one_chunk, chunks).reshape(-1)[:num_points]


def aggregate_posterior_information(
    mean: jax.Array,
    logvar: jax.Array,
    key: jax.Array,
    num_samples: int = 1,
    log_prior: Callable[[jax.Array], jax.Array] = standard_normal_log_prob,
    chunk_size: int = 0,
) -> Information:
    """I_q(x; z), KL(q(z) || p(z)) and the average KL of a diagonal-Gaussian encoder on N examples (Monte Carlo).

    For each example n, `num_samples` draws z_ns = mean_n + sigma_n * eps_ns with eps from `fold_in(key, n)`;

        I_q   = mean_{n,s} [log q(z_ns|x_n) - log q(z_ns)],   q(z) = (1/N) sum_m q(z|x_m)
        KL_m  = mean_{n,s} [log q(z_ns) - log p(z_ns)]
        KL    = mean_{n,s} [log q(z_ns|x_n) - log p(z_ns)]  = I_q + KL_m

    (Hoffman & Johnson, 2016). The estimate of I_q counts x_n's own posterior in q(z_ns), so it is at most log N
    (each term is: q(z) >= q(z|x_n) / N), and 0 when q(z|x) does not depend on x. It is an estimate of the
    information about *which of the N examples* x is: for well separated posteriors it saturates at log N.

    Args:
        mean: `[N, J]` posterior means.
        logvar: `[N, J]` posterior log-variances.
        key: the key of the draws; example n uses `fold_in(key, n)`.
        num_samples: draws per example (S).
        log_prior: log p(z), `[..., J] -> [...]` (default the standard normal).
        chunk_size: as in `log_aggregate_posterior`.

    Returns:
        `Information` (scalars in nats).
    """
    num_examples = mean.shape[0]
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(num_examples))
    eps = jax.vmap(lambda k: jax.random.normal(k, (num_samples, mean.shape[1]), mean.dtype))(keys)  # [N, S, J]
    z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps
    log_posterior = gaussian_log_prob_of_noise(eps, logvar[:, None])  # [N, S], exact at its own draws
    log_aggregate = log_aggregate_posterior(z.reshape(-1, mean.shape[1]), mean, logvar, chunk_size)
    log_aggregate = log_aggregate.reshape(num_examples, num_samples)
    log_p = log_prior(z)
    return Information(mutual_information=jnp.mean(log_posterior - log_aggregate),
                       marginal_kl=jnp.mean(log_aggregate - log_p), average_kl=jnp.mean(log_posterior - log_p),
                       log_n=math.log(num_examples))


def _probe_logits(probe: Probe, features: jax.Array) -> jax.Array:
    """`[N, J] -> [N, C]`."""
    return ((features - probe.center) / probe.scale) @ probe.weights + probe.bias


def fit_probe(features: jax.Array, labels: jax.Array, num_classes: int, l2: float = 1e-3,
              steps: int = 200) -> Probe:
    """Multinomial logistic regression on standardized features, full batch, `steps` iterations of L-BFGS.

    Minimizes (1/N) sum_n -log softmax(W^T f_n + b)[y_n] + (l2 / 2) ||W||^2 from W = 0, b = 0, with
    f_n = (x_n - center) / scale. Deterministic (no randomness; a fixed number of steps); compiled.

    Args:
        features: `[N, J]` e.g. posterior means.
        labels: `[N]` integer classes in [0, num_classes).
        num_classes: C.
        l2: the weights' L2 penalty (not the bias's).
        steps: L-BFGS iterations (each with its zoom line search).

    Returns:
        The fitted `Probe`.
    """
    return _fit_probe(jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.int32), num_classes,
                      jnp.float32(l2), steps)


@functools.partial(jax.jit, static_argnums=(2, 4))
def _fit_probe(features: jax.Array, labels: jax.Array, num_classes: int, l2: jax.Array, steps: int) -> Probe:
    center, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    standard = Probe(jnp.zeros((features.shape[1], num_classes)), jnp.zeros(num_classes), center, scale)

    def loss(parameters: tuple[jax.Array, jax.Array]) -> jax.Array:
        logits = _probe_logits(standard._replace(weights=parameters[0], bias=parameters[1]), features)
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return cross_entropy + 0.5 * l2 * jnp.sum(jnp.square(parameters[0]))

    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], None]:
        parameters, state = carry
        value, grad = value_and_grad(parameters, state=state)
        updates, state = optimizer.update(grad, state, parameters, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(parameters, updates), state), None

    start = (standard.weights, standard.bias)
    ((weights, bias), _), _ = jax.lax.scan(step, (start, optimizer.init(start)), None, length=steps)
    return standard._replace(weights=weights, bias=bias)


def probe_accuracy(probe: Probe, features: jax.Array, labels: jax.Array) -> float:
    """The fraction of `[N]` labels that the probe's most likely class gets right on `[N, J]` features."""
    predicted = jnp.argmax(_probe_logits(probe, jnp.asarray(features, jnp.float32)), axis=-1)
    return float(jnp.mean(predicted == jnp.asarray(labels, jnp.int32)))


def select_probe(train: tuple[jax.Array, jax.Array], validation: tuple[jax.Array, jax.Array], num_classes: int,
                 l2s: Sequence[float] = DEFAULT_L2S, steps: int = 200) -> tuple[Probe, float, float]:
    """The probe fitted on `train` (features `[N, J]`, labels `[N]`) whose L2 penalty, among `l2s`, is most accurate
    on `validation` (the first of equals).

    Returns:
        `(probe, l2, validation accuracy)`.
    """
    best = None
    for l2 in l2s:
        probe = fit_probe(*train, num_classes, l2, steps)
        accuracy = probe_accuracy(probe, *validation)
        if best is None or accuracy > best[2]:
            best = (probe, float(l2), accuracy)
    return best


def posterior_of_split(model: Any, params: Any, pixels: np.ndarray, key: jax.Array, dynamic: bool,
                       batch_size: int = 5000) -> tuple[np.ndarray, np.ndarray | None]:
    """Each example's posterior `(mean [N, J], logvar [N, J])`, example i binarized as `vae_jax eval` does it
    (`map_examples` with `fold_in(key, i)`): the model's `posterior` if it has one (leaves of a pytree latent are
    concatenated), else `(encode(x), None)`."""
    def one(params: Any, x: jax.Array, _: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        if hasattr(model, "posterior"):
            mean, logvar = model.posterior(params, x)
            flat = [jnp.concatenate([leaf.reshape(-1) for leaf in jax.tree.leaves(part)]) for part in (mean, logvar)]
            return flat[0], flat[1]
        return model.encode(params, x[None])[0], None

    batch = jax.jit(lambda params, chunk, indices: map_examples(functools.partial(one, params), chunk, indices, key,
                                                                dynamic))
    parts = [batch(params, pixels[start:start + batch_size], np.arange(start, min(start + batch_size, len(pixels))))
             for start in range(0, len(pixels), batch_size)]
    mean = np.concatenate([np.asarray(part[0]) for part in parts])
    return mean, None if parts[0][1] is None else np.concatenate([np.asarray(part[1]) for part in parts])


def read_run(workdir: str | os.PathLike, *, model: Any = None, epoch: int | None = None, eval_seed: int = 0,
             num_samples: int = 1, l2s: Sequence[float] = DEFAULT_L2S,
             log_prior: Callable[[jax.Array], jax.Array] = standard_normal_log_prob,
             data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
             manual_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The bottleneck numbers of a trained run of a labelled image dataset, from its best (or `epoch`'s) checkpoint.

    Opens the run as `vae_jax eval` does (`readback.open_split`); the test split's examples are binarized with the
    evaluation's keys (`jax.random.key(eval_seed)`, as `eval`'s ELBO), the training and validation splits' with the
    same key. I_q and the marginal KL are over the whole test split (`aggregate_posterior_information`, `num_samples`
    draws per example, prior `log_prior`); the probe is fitted on the training split's posterior means, its L2
    penalty chosen on the validation split, and scored on the test split.

    Returns:
        `mutual_information`, `marginal_kl`, `average_kl` (the Monte-Carlo KL of the same draws), `log_n` (None for
        the first four without a `posterior`), `active_units` (as `eval` counts them: Var_x E[z_j] > 0.01 on the test
        split), `probe_accuracy` (test), `probe_validation_accuracy`, `probe_l2`, the same three of a probe on the
        active units only (`probe_accuracy_active`, ...), `latent_size`, `num_samples`, `run`, `epoch`, `step`.
    """
    from vae_jax.readback import open_split

    opened = open_split(workdir, "test", model=model, epoch=epoch, eval_seed=eval_seed, data_dir=data_dir,
                        manual_dir=manual_dir)
    run, params = opened.run, opened.restored.state.eval_params
    dataset, dynamic = run.config.dataset, run.dataset.dynamic
    codes, labels = {}, {}
    for split in ("train", "validation", "test"):
        pixels = opened.pixels if split == "test" else data.load_split(dataset, split, data_dir=data_dir,
                                                                      manual_dir=manual_dir, mmap=True)
        codes[split] = posterior_of_split(run.model, params, np.asarray(pixels), opened.key, dynamic)
        labels[split] = data.load_labels(split, dataset, data_dir=data_dir, manual_dir=manual_dir)
    mean, logvar = codes["test"]
    active = mean.var(axis=0) > evaluate.ACTIVE_UNIT_THRESHOLD  # as `eval` counts them, on the test split
    result: dict[str, Any] = {"mutual_information": None, "marginal_kl": None, "average_kl": None, "log_n": None}
    if logvar is not None:
        information = aggregate_posterior_information(jnp.asarray(mean), jnp.asarray(logvar),
                                                      jax.random.fold_in(opened.key, 1), num_samples, log_prior)
        result = {name: float(value) for name, value in information._asdict().items()}
    probes = {"": np.ones_like(active), "_active": active}  # all dimensions; the active ones only
    for suffix, kept in probes.items():
        result |= _probe_scores({split: codes[split][0][:, kept] for split in codes}, labels, l2s, suffix)
    return {**result, "active_units": int(active.sum()), "latent_size": int(mean.shape[1]),
            "num_samples": num_samples, **opened.provenance()}


def _probe_scores(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], l2s: Sequence[float],
                  suffix: str) -> dict[str, Any]:
    """`select_probe` on the `train` and `validation` features `[N, J]`, scored on `test`: `probe_accuracy`,
    `probe_validation_accuracy`, `probe_l2` (`suffix` appended to each name; None for features without a column)."""
    names = [f"probe_accuracy{suffix}", f"probe_validation_accuracy{suffix}", f"probe_l2{suffix}"]
    if features["test"].shape[1] == 0:
        return dict.fromkeys(names)
    num_classes = int(max(labels["train"].max(), labels["test"].max())) + 1
    probe, l2, validation_accuracy = select_probe((features["train"], labels["train"]),
                                                  (features["validation"], labels["validation"]), num_classes, l2s)
    return dict(zip(names, (probe_accuracy(probe, features["test"], labels["test"]), validation_accuracy, l2),
                    strict=True))
