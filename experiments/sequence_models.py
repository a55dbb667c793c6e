"""The sequence models of the polyphonic-music study (docs/studies.md), by name for `--model`: the recurrent
baseline without latents, the VRNN, the SRNN and the deep Markov model (`vae_jax.recurrent`), all with GRU states
of 128 units, one-layer MLPs of 128 and latents of 32 per step, sized for a CPU; and the VRNN and SRNN at the size
of Fraccaro et al. (2016) for polyphonic music, GRUs and MLPs of 300 and latents of 100 (`*_large`).

    python -m vae_jax train --model experiments/sequence_models.py:vrnn --dataset jsb_chorales ...
"""

from vae_jax import recurrent

HIDDEN, FEATURES, LATENT = 128, 128, 32
LARGE = {"hidden": 300, "features": 300, "latent_dim": 100}


def rnn() -> recurrent.RNNBaseline:
    """p(x_t | x_<t) from a GRU: no latent variable."""
    return recurrent.RNNBaseline(hidden=HIDDEN, features=FEATURES)


def vrnn() -> recurrent.VRNN:
    """The VRNN of Chung et al. (2015): filtering posterior, learned transition prior."""
    return recurrent.VRNN(latent_dim=LATENT, hidden=HIDDEN, features=FEATURES)


def srnn() -> recurrent.SRNN:
    """The SRNN of Fraccaro et al. (2016): deterministic and stochastic layers, smoothing posterior."""
    return recurrent.SRNN(latent_dim=LATENT, hidden=HIDDEN, features=FEATURES)


def dmm() -> recurrent.DMM:
    """The deep Markov model of Krishnan et al. (2017): a gated transition, the past reaching x_t only through z_t."""
    return recurrent.DMM(latent_dim=LATENT, hidden=HIDDEN, features=FEATURES)


def vrnn_large() -> recurrent.VRNN:
    """`vrnn` at the size of Fraccaro et al.'s polyphonic-music models."""
    return recurrent.VRNN(**LARGE)


def srnn_large() -> recurrent.SRNN:
    """`srnn` at the size of Fraccaro et al.'s polyphonic-music models."""
    return recurrent.SRNN(**LARGE)
