"""Piano rolls drawn from the sequence models (`vae_jax.generation`) follow the models' own distributions: the
baseline's sampled probabilities are its p(x_t | x_<t) exactly; for the latent models the frequencies of 40,000
draws of every sequence of 2 frames of 3 keys match p(x) estimated by importance sampling (K = 4096)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import generation, objective, recurrent
from vae_jax.contract import as_model
from vae_jax.sequences import Sequence

SMALL = dict(hidden=8, features=8)
ALL = np.array(list(itertools.product([0, 1], repeat=6)), np.uint8).reshape(64, 2, 3)


def _params(model, scale: float = 1.5):
    params = as_model(model).init(jax.random.key(0), Sequence(jnp.asarray(ALL[0]), jnp.asarray(2)))
    # Frames that depend more on the latents and the past; much larger weights (or a prior far from the posterior)
    # leave the importance-sampling estimates of p(x) too biased to compare with: the DMM's posterior, which sees
    # no past frames, proposes worse at 1.5 (its 64 estimates then sum to 0.71 with K = 4096, 0.77 with 65,536).
    return jax.tree.map(lambda p: scale * p, params)


def test_the_baseline_draws_with_its_own_probabilities():
    model = recurrent.RNNBaseline(**SMALL)
    params = _params(model)
    rolls, probabilities = generation.sample_rolls(model, params, jax.random.key(1), 5, 6, num_keys=3)
    assert set(np.unique(np.asarray(rolls))) <= {0.0, 1.0}
    for roll, p in zip(np.asarray(rolls), np.asarray(probabilities, np.float64)):
        log_p = as_model(model).joint_samples(params, Sequence(jnp.asarray(roll, jnp.uint8), jnp.asarray(6)),
                                              jax.random.key(0), 1).log_likelihood[0]
        expected = np.sum(roll * np.log(p) + (1 - roll) * np.log1p(-p))
        np.testing.assert_allclose(float(log_p), expected, rtol=1e-5)


@pytest.mark.parametrize(("model", "scale"), [(recurrent.VRNN(latent_dim=2, **SMALL), 1.5),
                                              (recurrent.SRNN(latent_dim=2, **SMALL), 1.5),
                                              (recurrent.DMM(latent_dim=2, **SMALL), 1.0)], ids=["vrnn", "srnn", "dmm"])
def test_latent_models_draw_sequences_as_often_as_their_likelihood_says(model, scale):
    params = _params(model, scale)
    rolls, _ = generation.sample_rolls(model, params, jax.random.key(2), 40_000, 2, num_keys=3)
    codes = np.asarray(rolls, np.int64).reshape(40_000, 6) @ (2 ** np.arange(5, -1, -1))
    frequencies = np.bincount(codes, minlength=64) / 40_000

    def log_p(frames):
        return objective.iwae_bound(as_model(model), params, Sequence(frames, jnp.asarray(2)), jax.random.key(3),
                                    4096, 1024)

    probabilities = np.exp(np.asarray(jax.jit(jax.vmap(log_p))(jnp.asarray(ALL)), np.float64))
    assert abs(probabilities.sum() - 1.0) < 0.05  # estimates (biased low) of a distribution's 64 probabilities
    probabilities /= probabilities.sum()
    # each frequency within 5 binomial standard errors (plus 3% for the estimate's own error) of its probability
    tolerance = 5 * np.sqrt(probabilities * (1 - probabilities) / 40_000) + 0.03 * probabilities
    assert np.all(np.abs(frequencies - probabilities) < tolerance)
    assert np.ptp(probabilities) > 3 * tolerance.max()  # not all alike: the test can tell the sequences apart


def test_only_the_sequence_models_draw_rolls():
    with pytest.raises(TypeError, match="RNNBaseline, VRNN, SRNN or DMM"):
        generation.sample_rolls(object(), {}, jax.random.key(0), 1, 1)
