"""The model contract that the whole library runs on.

A model yields, for one example x and a key, S joint samples z_s ~ q(z|x) with their log-densities:

    log p(x|z_s),  log p(z_s),  log q(z_s|x)          (each `[S]`)

and, where it has them, its closed-form KL(q(z|x) || p(z)) (whole and per latent dimension) and a posterior mean
for counting active units. Everything else derives from these numbers (`vae_jax.objective`): the S-sample ELBO,
beta and its warm-up, free bits, the importance-weighted bound for training and for the NLL, per-dimension KL and
active units. The training loop, checkpoints, the guard against non-finite steps, evaluation and the protocol
cards (`vae_jax.trainer`, `vae_jax.readback`) take any model that keeps the contract: the built-in ones
(`vae_jax.models.VAE`, `vae_jax.hierarchical.HierarchicalVAE`) and yours alike; `vae_jax.resolve.check_model`
checks it on real examples before anything compiles.

A model is either

- a Flax module whose `__call__(x [D], key, num_samples)` returns `JointSamples` (wrap it with `as_model`, or
  pass it anywhere a model is expected, which does so); or
- a small bundle of Flax modules: any hashable object with the methods of `Model` (`vae_jax.models.VAE` is one).

Optional methods, used where present:

- `generate(params, key, num_images) -> [N, D]` data means at draws from the prior (`vae_jax sample`);
- `reconstruct(params, x [N, D]) -> [N, D]` data means at the posterior mean (reconstruction figures);
- `encode(params, x [N, D]) -> [N, J]` and `decode(params, z [N, J]) -> [N, D]`: a point code and its decoding
  (latent interpolations; the manifold and scatter of a 2-D code);
- `posterior(params, x [D]) -> (mean, logvar)` and `joint_samples_given_posterior(params, x, mean, logvar, eps)`:
  the amortized Gaussian posterior's parameters (for a hierarchy, a factorized Gaussian guess at it), and the joint
  samples of a factorized Gaussian posterior with given parameters for noise `eps` (pytrees of the latent's
  structure, each leaf with a leading `[S]` axis in `eps`); per-example (non-amortized) inference
  (`vae_jax.inference`) needs them;
- `describe() -> dict`: a JSON-ready description for the protocol card and the config hash. Without it, the
  class name and the dataclass fields describe the model.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import flax.linen as nn
import jax

Params = Any  # a model's variables, a pytree of arrays


class JointSamples(NamedTuple):
    """S joint samples of one example, z_s ~ q(z|x), with their log-densities in nats.

    Attributes:
        log_likelihood: `[S]` log p(x | z_s).
        log_prior: `[S]` log p(z_s).
        log_posterior: `[S]` log q(z_s | x).
        kl: `[]` KL(q(z|x) || p(z)) in closed form, or None where there is none (a learned prior, a deeper
            hierarchy): the ELBO then uses the Monte-Carlo estimate mean_s [log q(z_s|x) - log p(z_s)]. Or `[S]`,
            one per sample: a KL in closed form given the sample's own draws, whose mean over the samples the ELBO
            takes (a sequence model's sum over steps of KL(q(z_t | z_<t, x) || p(z_t | z_<t)), `vae_jax.recurrent`).
        kl_per_dim: `[J]` the closed-form KL of each latent dimension (they sum to `kl`), or None; free bits need it.
            `[S, J]` where `kl` is `[S]`.
        posterior_mean: `[J]` E_q[z] (of the top layer in a hierarchy), or None; active units need it.
    """

    log_likelihood: jax.Array
    log_prior: jax.Array
    log_posterior: jax.Array
    kl: jax.Array | None = None
    kl_per_dim: jax.Array | None = None
    posterior_mean: jax.Array | None = None


@runtime_checkable
class Model(Protocol):
    """What vae_jax needs of a model (a hashable object: it is a static argument of compiled functions)."""

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        """The model's initial variables, from a key and one `[D]` example."""
        ...

    def joint_samples(self, params: Params, x: jax.Array, key: jax.Array, num_samples: int) -> JointSamples:
        """`num_samples` joint samples of the `[D]` example `x`, all randomness drawn from `key`."""
        ...


_OPTIONAL_METHODS = ("generate", "reconstruct", "encode", "decode", "posterior", "joint_samples_given_posterior",
                     "fivo_bound")


@dataclasses.dataclass(frozen=True)
class FlaxModel:
    """A Flax module that keeps the contract in its `__call__(x, key, num_samples) -> JointSamples`, as a `Model`.

    Its optional methods (`generate(key, num_images)`, `reconstruct(x)`, `encode(x)`, `decode(z)`, `posterior(x)`,
    `joint_samples_given_posterior(x, mean, logvar, eps)`, `fivo_bound(x, key, num_particles)`) are called through
    `module.apply(..., method=...)`; a module's own `describe()` describes it.

    Attributes:
        module: the Flax module.
    """

    module: nn.Module

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        """`module.init` with `key` for the parameters and a key folded from it for the samples."""
        return self.module.init(key, x, jax.random.fold_in(key, 1), 1)

    def joint_samples(self, params: Params, x: jax.Array, key: jax.Array, num_samples: int) -> JointSamples:
        """`module.apply(params, x, key, num_samples)`."""
        return self.module.apply(params, x, key, num_samples)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in _OPTIONAL_METHODS or not hasattr(self.module, name):
            raise AttributeError(f"{type(self.module).__name__} has no method {name!r}")
        return lambda params, *args: self.module.apply(params, *args, method=getattr(type(self.module), name))


def as_model(model: Any) -> Any:
    """A `FlaxModel` around a Flax module, `model` itself if it has the `Model` methods, else a `TypeError`."""
    if isinstance(model, nn.Module):
        return FlaxModel(model)
    if isinstance(model, Model):
        return model
    raise TypeError(f"expected a Flax module or an object with init() and joint_samples() (vae_jax.contract), "
                    f"got {type(model).__name__}")


def describe(model: Any) -> dict[str, Any]:
    """A JSON-ready description of a model: its own `describe()` if it has one, else `{"class": module.Name}` and
    its dataclass fields, described recursively (nested modules, tuples, numbers, strings, functions)."""
    if isinstance(model, FlaxModel):
        model = model.module
    own = getattr(model, "describe", None)
    if callable(own):
        return own()
    description: dict[str, Any] = {"class": f"{_module_name(type(model))}.{type(model).__qualname__}"}
    for field in dataclasses.fields(model):
        if field.name not in ("parent", "name"):  # Flax's own bookkeeping
            description[field.name] = _describe_value(getattr(model, field.name))
    return description


def _module_name(cls: type) -> str:
    """The module of a class, named the same whether its file was imported or run as a script (`__main__`)."""
    if cls.__module__ != "__main__":
        return cls.__module__
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(getattr(main, "__file__", "__main__")).stem


def _describe_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return describe(value)
    if isinstance(value, (list, tuple)):
        return [_describe_value(item) for item in value]
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value
