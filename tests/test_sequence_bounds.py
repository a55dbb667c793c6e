"""The bounds of a sequence model against an exact likelihood: a linear-Gaussian state-space model whose log p(x) a
Kalman filter computes (tests/state_space.py), sampled by a filtering proposal that is either the locally optimal
one or the transition prior (a poor one).

Each of N = 8 sequences (lengths 5 to 16, padded to T = 16) gets R = 64 keys, and each key 1000 importance samples
(`objective.importance_samples`, sample k from fold_in(key, k), as `objective.iwae_bound` draws them): their
disjoint blocks of K samples are 1000 / K independent draws of IWAE_K (the first is `iwae_bound` itself, checked),
nested, so that for every key, deterministically (Jensen's inequality),

    mean log w  <=  mean IWAE_10  <=  mean IWAE_100  <=  IWAE_1000.

The statements about expectations hold for any keys with the probability stated; the keys are fixed, so the tests
are deterministic:

- Upper bound: exp(IWAE_K) is an unbiased estimate of p(x), so for the mean of n independent draws, by Markov's
  inequality on the product of their exp(IWAE_K - log p(x)) (whose mean is 1), P(mean - log p(x) > c) <= exp(-n c).
  With c = 20 / n a sound bound fails with probability below exp(-20) = 2e-9 per assertion.
- Equal or differing expectations are asserted within, or beyond, Z_MARGIN = 5 standard errors of the means over
  the R independent keys. Run at seeds 0 to 9 (of the parameters, the sequences and the keys), the two estimates of
  the ELBO differed by 3.2 standard errors at most, and each gap shrank by 7.5 standard errors or more.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from tests import state_space
from vae_jax import objective
from vae_jax.sequences import Sequence

NUM_FRAMES = 16  # T, the common padded length
LENGTHS = [16, 13, 11, 9, 16, 7, 14, 5]  # N = 8 sequences
NUM_KEYS = 64  # R keys per sequence
KS = (1, 10, 100, 1000)  # each key's 1000 importance samples hold 1000 / K disjoint blocks of K: draws of IWAE_K
NUM_ELBO = 100  # single-sample ELBO estimates per key
OPTIMAL, PRIOR = 1.0, 0.0  # proposal weights: the locally optimal proposal, the transition prior
MODEL = state_space.LinearGaussianSSM(latent_dim=2)


@pytest.fixture(autouse=True)
def float64():
    """Every test in float64 (restored afterwards)."""
    with jax.enable_x64(True):
        yield


@functools.partial(jax.jit, static_argnums=0)
def bound_samples(model: state_space.LinearGaussianSSM, params: dict, sequences: Sequence,
                  keys: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Every sequence's importance weights and ELBO estimates under every key, and its bounds under its first key.

    Args:
        model: the model (static).
        params: its parameters.
        sequences: `Sequence` of `[N, T, D]` frames and `[N]` lengths.
        keys: `[N, R]` keys.

    Returns:
        `[N, R, max(KS)]` log weights of `objective.importance_samples` (sample k from `fold_in(key_r, k)`, as
        `objective.iwae_bound` draws them); `[N, R, NUM_ELBO]` -nelbo of `objective.elbo_terms` with one sample,
        under the keys `split(fold_in(key_r, max(KS)), NUM_ELBO)`; `[N, len(KS)]` `objective.iwae_bound` for each
        K under `keys[:, 0]`.
    """
    def one(sequence: Sequence, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        log_w = objective.log_weights(objective.importance_samples(model, params, sequence, key,
                                                                   jnp.arange(max(KS))))
        subkeys = jax.random.split(jax.random.fold_in(key, max(KS)), NUM_ELBO)
        elbo = jax.vmap(lambda sub: -objective.elbo_terms(model, params, sequence, sub, 1).nelbo)(subkeys)
        return log_w, elbo

    def bounds(sequence: Sequence, key: jax.Array) -> jax.Array:
        return jnp.stack([objective.iwae_bound(model, params, sequence, key, k) for k in KS])

    log_w, elbo = jax.vmap(jax.vmap(one, in_axes=(None, 0)))(sequences, keys)
    return log_w, elbo, jax.vmap(bounds)(sequences, keys[:, 0])


def make_setting(seed: int = 0) -> dict:
    """The model's parameters (from key `seed`), N sequences drawn from it (NumPy seed `seed`, padded to T with
    garbage) and their exact log p(x) `[N]`."""
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
        example = Sequence(jnp.zeros((NUM_FRAMES, 2)), jnp.asarray(NUM_FRAMES, jnp.int32))
        params = MODEL.init(jax.random.key(seed), example)
    frames, lengths = state_space.simulate(params, LENGTHS, NUM_FRAMES, seed)
    exact = np.array([state_space.exact_log_likelihood(params, f, n) for f, n in zip(frames, lengths)])
    return {"params": params, "frames": frames, "lengths": lengths, "exact": exact}


def make_bounds(setting: dict, num_keys: int = NUM_KEYS, seed: int = 1) -> dict:
    """`bound_samples` of both proposals, sequence i's keys `split(fold_in(key(seed), i), num_keys)`.

    Returns:
        {proposal weight: {"iwae": {K: `[N, R, max(KS) // K]` IWAE_K of the disjoint blocks of K importance samples},
        "mean_log_w": `[N, R]` the mean log weight of the same samples, "elbo": `[N, R, NUM_ELBO]` -nelbo,
        "iwae_bound": `[N, len(KS)]` iwae_bound under each sequence's first key}}.
    """
    keys = jnp.stack([jax.random.split(jax.random.fold_in(jax.random.key(seed), i), num_keys)
                      for i in range(len(setting["lengths"]))])
    tables: dict = {}
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
        sequences = Sequence(jnp.asarray(setting["frames"]), jnp.asarray(setting["lengths"]))
        for weight in (OPTIMAL, PRIOR):
            params = dict(setting["params"], proposal_weight=jnp.asarray(weight))
            log_w, elbo, iwae_bound = (np.asarray(a) for a in bound_samples(MODEL, params, sequences, keys))
            blocks = {k: log_w.reshape(*log_w.shape[:2], -1, k) for k in KS}
            tables[weight] = {"iwae": {k: scipy.special.logsumexp(b, axis=-1) - np.log(k) for k, b in blocks.items()},
                              "mean_log_w": log_w.mean(axis=-1), "elbo": elbo, "iwae_bound": iwae_bound}
    return tables


def mean_and_stderr(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence mean `[N]` of `[N, R]` values independent over keys, and its standard error `[N]`."""
    return values.mean(axis=1), values.std(axis=1, ddof=1) / np.sqrt(values.shape[1])


@pytest.fixture(scope="module")
def setting() -> dict:
    """`make_setting()`."""
    return make_setting()


@pytest.fixture(scope="module")
def bounds(setting) -> dict:
    """`make_bounds(setting)`."""
    return make_bounds(setting)


def random_lgssm(rng: np.random.Generator, latent_dim: int, data_dim: int) -> tuple[np.ndarray, ...]:
    """Random (A, C, Q, R, m0, P0) with full (not diagonal) covariances."""
    def spd(n: int) -> np.ndarray:
        root = rng.normal(size=(n, n))
        return root @ root.T / n + 0.3 * np.eye(n)

    return (0.8 * rng.normal(size=(latent_dim, latent_dim)), rng.normal(size=(data_dim, latent_dim)),
            spd(latent_dim), spd(data_dim), rng.normal(size=latent_dim), spd(latent_dim))


@pytest.mark.parametrize("length", [4, 3, 1])
def test_kalman_filter_matches_the_joint_gaussian(length):
    """T = 4, D = 2, J = 2: the filter's prediction-error decomposition equals the log-density of the joint Gaussian
    of x_1:length built explicitly, to 1e-10 nats; the frames after `length` do not count."""
    rng = np.random.default_rng(length)
    A, C, Q, R, m0, P0 = random_lgssm(rng, latent_dim=2, data_dim=2)
    frames = rng.normal(size=(4, 2)) * 2
    frames[length:] = 1e3  # padding
    kalman = state_space.kalman_log_likelihood(frames, length, A, C, Q, R, m0, P0)
    joint = state_space.joint_gaussian_log_density(frames, length, A, C, Q, R, m0, P0)
    assert abs(kalman - joint) < 1e-10, (kalman, joint)


SAMPLE_KEY, NUM_SAMPLES = 3, 50


@jax.jit
def sequence_samples(params: dict, sequences: Sequence) -> objective.JointSamples:
    """NUM_SAMPLES joint samples of each of the N sequences under key(SAMPLE_KEY); each field `[N, NUM_SAMPLES]`."""
    return jax.vmap(lambda sequence: MODEL.joint_samples(params, sequence, jax.random.key(SAMPLE_KEY),
                                                         NUM_SAMPLES))(sequences)


def test_step_t_draws_its_noise_from_fold_in_key_t(setting):
    """Under the prior proposal z_t = A z_t-1 + L eps_t (L L^T = Q; P0 at t = 1), so log q(z) of each sample is
    sum_{t < length} log N(eps_t; 0, I) - log det L_t: it must equal that sum for eps_t = normal(fold_in(key, t)),
    to 1e-10 nats, for every sequence (a padding step that counted, or other noise, would not)."""
    params = dict(setting["params"], proposal_weight=jnp.asarray(PRIOR))
    _, _, Q, _, P0 = (np.asarray(m) for m in state_space.matrices(params))
    key = jax.random.key(SAMPLE_KEY)
    eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, t), (NUM_SAMPLES, 2), jnp.float64))
                    for t in range(NUM_FRAMES)])  # [T, S, J]
    step = -0.5 * np.sum(eps ** 2, axis=-1) - np.log(2 * np.pi)  # [T, S] log N(eps_t; 0, I), J = 2
    lengths = setting["lengths"]
    expected = np.stack([step[:length].sum(axis=0) for length in lengths]) - 0.5 * (
        np.linalg.slogdet(P0)[1] + (lengths[:, None] - 1) * np.linalg.slogdet(Q)[1])
    samples = sequence_samples(params, Sequence(jnp.asarray(setting["frames"]), jnp.asarray(lengths)))
    np.testing.assert_allclose(samples.log_posterior, expected, rtol=0, atol=1e-10)


def test_the_optimal_proposal_weighs_a_single_frame_exactly(setting):
    """With q(z_1 | x_1) = p(z_1 | x_1), every weight of a one-frame sequence is p(x_1) (to 1e-10 nats): this pins
    the Kalman update of the proposal and each log-density. The prior proposal's weights vary."""
    frames = setting["frames"]
    first_frames = Sequence(jnp.asarray(frames), jnp.ones(len(frames), jnp.int32))  # each sequence cut to 1 frame
    exact = [state_space.exact_log_likelihood(setting["params"], f, 1) for f in frames]

    def log_weights(weight: float) -> np.ndarray:
        params = dict(setting["params"], proposal_weight=jnp.asarray(weight))
        return np.asarray(objective.log_weights(sequence_samples(params, first_frames)))  # [N, S]

    np.testing.assert_allclose(log_weights(OPTIMAL) - np.array(exact)[:, None], 0.0, rtol=0, atol=1e-10)
    assert np.all(np.std(log_weights(PRIOR), axis=1) > 0.1)


@pytest.mark.parametrize("weight", [OPTIMAL, PRIOR])
def test_padding_changes_nothing(setting, weight):
    """The joint samples of each sequence padded to T and to T + 7 (with other garbage) agree to 1e-12 nats."""
    params = dict(setting["params"], proposal_weight=jnp.asarray(weight))
    frames, lengths = setting["frames"], setting["lengths"]
    longer = np.random.default_rng(5).uniform(-50, 50, (len(frames), NUM_FRAMES + 7, 2))  # other garbage
    for i, length in enumerate(lengths):
        longer[i, :length] = frames[i, :length]

    short, long = (sequence_samples(params, Sequence(jnp.asarray(f), jnp.asarray(lengths))) for f in (frames, longer))
    for name in ("log_likelihood", "log_prior", "log_posterior"):
        np.testing.assert_allclose(getattr(long, name), getattr(short, name), rtol=0, atol=1e-12, err_msg=name)


MARKOV = 20.0  # n c: a sound upper bound fails with probability exp(-MARKOV) (module docstring)
Z_MARGIN = 5.0  # standard errors


def check_ordered_below_exact(setting: dict, table: dict) -> None:
    """ELBO <= IWAE_1 <= IWAE_10 <= IWAE_100 <= IWAE_1000 <= log p(x), for each sequence (`make_bounds` table).

    `iwae_bound` equals the first block of the importance samples to 1e-10 nats; the blocks' means are ordered for
    every key to 1e-10 (Jensen, deterministic); the single-sample ELBO of `elbo_terms` has the expectation of the
    mean log weight (within Z_MARGIN standard errors); no bound's mean exceeds log p(x) by more than MARKOV / n,
    n its independent draws, for each sequence and for all together.
    """
    exact, iwae = setting["exact"], table["iwae"]
    first_blocks = np.stack([iwae[k][:, 0, 0] for k in KS], axis=1)
    np.testing.assert_allclose(table["iwae_bound"], first_blocks, rtol=0, atol=1e-10)
    ladder = [table["mean_log_w"]] + [iwae[k].mean(axis=-1) for k in KS]  # each [N, R]
    for lower, upper in zip(ladder[:-1], ladder[1:]):
        assert np.all(lower <= upper + 1e-10)
    difference, stderr = mean_and_stderr(table["elbo"].mean(axis=-1) - table["mean_log_w"])
    assert np.all(np.abs(difference) < Z_MARGIN * stderr), (difference, stderr)
    for draws in [table["elbo"], *iwae.values()]:
        excess = draws.reshape(len(exact), -1) - exact[:, None]  # [N, n] independent draws of bound - log p(x)
        assert np.all(excess.mean(axis=1) < MARKOV / excess.shape[1]), excess.mean(axis=1)
        assert excess.mean() < MARKOV / excess.size, excess.mean()


def test_bounds_are_ordered_below_the_exact_log_likelihood(setting, bounds):
    """With either proposal, ELBO <= IWAE_K <= log p(x) for K = 1, 10, 100, 1000 (`check_ordered_below_exact`)."""
    for weight in (OPTIMAL, PRIOR):
        check_ordered_below_exact(setting, bounds[weight])


def gap_table(setting: dict, table: dict) -> np.ndarray:
    """`[len(KS), N, R]` log p(x) - IWAE_K, each key's mean over its blocks."""
    return np.stack([setting["exact"][:, None] - table["iwae"][k].mean(axis=-1) for k in KS])


def check_gaps(setting: dict, bounds: dict) -> None:
    """The gap log p(x) - IWAE_K shrinks from each K to the next, for each sequence and proposal, by more than
    Z_MARGIN standard errors of the keys' paired differences (never negative: Jensen); with the optimal proposal
    IWAE_1000 lies within 0.25 nats of log p(x) for each sequence and within 0.06 nats on average over them (the
    expected gap is about 0.01 on average, 0.04 at most, with standard errors 0.007 and 0.04); the prior proposal's
    gap at K = 1 is larger than the optimal one's by 2 nats or more for each sequence and 5 times on average (19 to
    59 nats against 0.8 to 3.4 here), and at K = 1000 larger by half a nat on average (2.8 against 0.01)."""
    gaps = {weight: gap_table(setting, bounds[weight]) for weight in (OPTIMAL, PRIOR)}
    for weight, gap in gaps.items():
        for larger, smaller in zip(gap[:-1], gap[1:]):
            shrink, stderr = mean_and_stderr(larger - smaller)
            assert np.all(shrink > Z_MARGIN * stderr), (weight, shrink, stderr)
    optimal_1000 = gaps[OPTIMAL][-1].mean(axis=1)
    assert np.all(np.abs(optimal_1000) < 0.25) and abs(optimal_1000.mean()) < 0.06, optimal_1000
    assert np.all(gaps[PRIOR][0].mean(axis=1) > gaps[OPTIMAL][0].mean(axis=1) + 2)
    assert gaps[PRIOR][0].mean() > 5 * gaps[OPTIMAL][0].mean()
    assert gaps[PRIOR][-1].mean() > gaps[OPTIMAL][-1].mean() + 0.5


def test_the_gap_shrinks_with_k_to_the_exact_log_likelihood(setting, bounds):
    """`check_gaps`: the IWAE gap shrinks as K grows, to within a small tolerance with the optimal proposal."""
    check_gaps(setting, bounds)
