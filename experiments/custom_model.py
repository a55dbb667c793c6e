"""A model that vae_jax does not define, trained and evaluated through its Python API alone.

The encoder and decoder are residual MLPs written here; nothing under `vae_jax/` knows them. The script
trains them with `train_epoch_jit`, keeps Orbax checkpoints with `Checkpointer`, restores the best one by
validation NELBO and evaluates it on the whole test split (ELBO and importance-weighted NLL).

    python experiments/custom_model.py --manual-dir ../shared/data/binarized_mnist

writes `experiments/results/custom_model.json` (its output, committed) and checkpoints under `runs/custom_model`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import vae_jax
from vae_jax.protocol import protocol_card


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
    """x `[..., 784]` -> (mean, logvar) `[..., latent_dim]`: the encoder signature vae_jax expects."""

    latent_dim: int = 16
    width: int = 256

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, logvar = jnp.split(ResidualMLP(self.width, 2, 2 * self.latent_dim)(x), 2, axis=-1)
        return mean, logvar


class ResidualDecoder(nn.Module):
    """z `[..., latent_dim]` -> Bernoulli logits `[..., 784]`: the decoder signature vae_jax expects."""

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
    parser.add_argument("--out", default="experiments/results/custom_model.json")
    args = parser.parse_args()

    splits = {split: jax.device_put(vae_jax.load_split("binarized_mnist", split, manual_dir=args.manual_dir))
              for split in ("train", "validation", "test")}
    encoder, decoder = ResidualEncoder(), ResidualDecoder()
    keys = vae_jax.run_keys(jax.random.key(0))
    state = vae_jax.create_train_state(keys.init, encoder, decoder, optax.adam(1e-3))
    checkpointer = vae_jax.Checkpointer(args.workdir, keep=2)
    for epoch in range(1, args.epochs + 1):
        state, result = vae_jax.train_epoch_jit(state, splits["train"], jax.random.fold_in(keys.train, epoch),
                                                batch_size=100)
        val = vae_jax.summarize(vae_jax.evaluate_elbo(state.params, splits["validation"], keys.eval,
                                                      encoder=encoder, decoder=decoder, batch_size=1000))
        checkpointer.save(epoch, state, keys.train, val_nelbo=val["nelbo"], metadata={"model": "residual_mlp"})
        print(f"epoch {epoch}: train NELBO {float(result.nelbo.mean()):.2f}, validation NELBO {val['nelbo']:.2f}")

    best = checkpointer.restore(state, keys.train, epoch=checkpointer.best_epoch())
    test_key = jax.random.key(0)
    models = {"encoder": encoder, "decoder": decoder}
    summary = vae_jax.summarize(
        vae_jax.evaluate_elbo(best.state.params, splits["test"], test_key, **models, batch_size=1000),
        vae_jax.evaluate_iwae(best.state.params, splits["test"], test_key, **models, num_samples=args.iwae_samples),
    )
    config = {"model": "residual_mlp", "latent_dim": 16, "width": 256, "blocks": 2, "optimizer": "adam 1e-3",
              "batch_size": 100, "epochs": args.epochs, "seed": 0}
    card = protocol_card("binarized_mnist", "test", summary["num_examples"], args.iwae_samples, 0, config)
    record = {**summary, "run": "custom_model (residual MLP)", "epoch": best.epoch, **card}
    print(json.dumps(record))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
