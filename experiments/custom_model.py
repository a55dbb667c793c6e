"""A model that vae_jax does not define, trained and evaluated through the same path as the presets.

The encoder and decoder are residual MLPs written here; nothing under `vae_jax/` knows them. `vae_jax.VAE` bundles
them with the N(0, I) prior and the Bernoulli likelihood, and `fit` gives the bundle what a preset
gets: resume, checkpoints (latest and best), `metrics.jsonl`, the guard against non-finite steps, and
`evaluate_checkpoint`'s eval line with its protocol card, which `compare` reads.

    python experiments/custom_model.py --manual-dir ../shared/data/binarized_mnist

trains `runs/custom_model` (20 epochs of the cs236 recipe) and copies its `metrics.jsonl` and `eval.jsonl` (test split,
NELBO and the K = 5000 NLL) to `experiments/results/custom_model/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

import vae_jax


class ResidualMLP(nn.Module):
    """Dense to `width`, then `blocks` residual blocks h + Dense(elu(Dense(elu(h)))), then Dense to `out`."""

    width: int
    blocks: int
    out: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """`[..., in] -> [..., out]`."""
        h = nn.Dense(self.width)(h)
        for _ in range(self.blocks):
            h = h + nn.Dense(self.width)(nn.elu(nn.Dense(self.width)(nn.elu(h))))
        return nn.Dense(self.out)(nn.elu(h))


class ResidualEncoder(nn.Module):
    """x `[..., 784]` -> (mean, logvar) `[..., latent_dim]`: the encoder signature of `vae_jax.VAE`."""

    latent_dim: int = 16
    width: int = 256

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, logvar = jnp.split(ResidualMLP(self.width, 2, 2 * self.latent_dim)(x), 2, axis=-1)
        return mean, logvar


class ResidualDecoder(nn.Module):
    """z `[..., latent_dim]` -> Bernoulli logits `[..., 784]`: the decoder signature of `vae_jax.VAE`."""

    width: int = 256

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        return ResidualMLP(self.width, 2, 784)(z)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iwae-samples", type=int, default=5000)
    parser.add_argument("--workdir", default="runs/custom_model")
    parser.add_argument("--results", default="experiments/results/custom_model")
    args = parser.parse_args()

    model = vae_jax.VAE(ResidualEncoder(), ResidualDecoder())
    config = dataclasses.replace(vae_jax.get_config("cs236"), epochs=args.epochs)
    vae_jax.fit(config, args.workdir, model=model, manual_dir=args.manual_dir, progress=False)
    (Path(args.workdir) / "eval.jsonl").unlink(missing_ok=True)
    print(vae_jax.evaluate_checkpoint(args.workdir, "test", model=model, iwae_samples=args.iwae_samples))
    Path(args.results).mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "eval.jsonl"):
        shutil.copy(Path(args.workdir) / name, Path(args.results) / name)


if __name__ == "__main__":
    main()
