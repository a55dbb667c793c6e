"""A GAN baseline for issue #35 (VAE samples against a GAN): a DCGAN (`gan_models.py`) on dynamically binarized
MNIST or Fashion-MNIST, the VAEs' data and splits (train 50,000 / validation 10,000 / test 10,000).

    python experiments/gan.py train --dataset mnist --workdir runs/gan/mnist --epochs 15 --checkpoint-every 1
    python experiments/gan.py train --dataset fashion_mnist --workdir runs/gan/fashion_mnist --epochs 20 \
        --checkpoint-every 1 --fake-input sample
    python experiments/gan.py select --workdir runs/gan/mnist     # validation FID of every checkpoint
    python experiments/gan.py score --workdir runs/gan/mnist      # the selected one against the test split
    python experiments/gan.py sample --workdir runs/gan/mnist --out DIR   # DIR/samples.png, means.png (latest)

`train` keeps a checkpoint (Orbax) every `--checkpoint-every` epochs, all of them, and resumes bit for bit from the
latest when run again (with more `--epochs` to train on). Keys: `jax.random.key(seed)` split into an init, a train
and a sample key; epoch e is `fold_in(train_key, e)`, split into a shuffle key and its examples' key
(`vae_jax.train.epoch_batches`, as a VAE's training); example i then draws its binarization and latent codes from
`fold_in(examples_key, i)` (`gan_models.batch_inputs`). `select` scores each checkpoint's 10,000 binary samples
(`fold_in(sample_key, 0)`) by FID against the validation split binarized as the VAEs' references are
(`vae_jax.samples.reference_images`, `--real-seed` as `eval --seed`) and keeps the lowest; `score` draws the selected
checkpoint's samples with `fold_in(sample_key, 1)` and measures them against the first 10,000 test images binarized
the same way, the VAEs' references, into `experiments/results/gan/<dataset>/eval.jsonl`: one line with the card of
`vae_jax eval --sample-quality` (`protocol.sample_quality_card`), which `compare` tables beside the VAEs', and the
first 100 scored samples in `grid.png`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from gan_models import GanState, batch_inputs, create_state, sample_binary, sample_means, train_step

from vae_jax import data, features, figures, protocol, sample_quality, samples
from vae_jax.train import epoch_batches

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results" / "gan"
DATA_DIR = os.path.expanduser("~/tensorflow_datasets")
SETTINGS = ("dataset", "seed", "batch_size", "latent_dim", "g_channels", "d_channels", "learning_rate", "b1",
            "checkpoint_every", "fake_input")


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The run's init, train and sample keys: `jax.random.key(seed)` split in three."""
    init_key, train_key, sample_key = jax.random.split(jax.random.key(seed), 3)
    return init_key, train_key, sample_key


@functools.partial(jax.jit, static_argnames=("batch_size",))
def train_epoch(state: GanState, pixels: jax.Array, epoch_key: jax.Array,
                batch_size: int) -> tuple[GanState, dict[str, jax.Array]]:
    """One epoch as one compiled `lax.scan` of `train_step` over the shuffled split in batches (the last
    `N mod batch_size` examples dropped).

    Args:
        state: the `GanState`.
        pixels: `[N, 784]` uint8 training split.
        epoch_key: `fold_in(train_key, epoch)`.
        batch_size: B.

    Returns:
        The new state and the steps' metrics, each `[N // B]`.
    """
    examples_key, batches = epoch_batches(epoch_key, pixels.shape[0], batch_size)

    def step(state: GanState, indices: jax.Array) -> tuple[GanState, dict[str, jax.Array]]:
        return train_step(state, batch_inputs(pixels[indices], indices, examples_key, state.latent_dim,
                                              state.binary_fakes))

    return jax.lax.scan(step, state, batches)


def checkpoint_manager(workdir: str | os.PathLike) -> ocp.CheckpointManager:
    """The run's Orbax checkpoints, `<workdir>/checkpoints/<epoch>`, every one kept, written synchronously."""
    options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(workdir).resolve() / "checkpoints", options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler()})


def _tree(state: GanState) -> dict[str, Any]:
    return {"step": state.step, "g_params": state.g_params, "d_params": state.d_params, "g_opt": state.g_opt,
            "d_opt": state.d_opt}


def save(manager: ocp.CheckpointManager, epoch: int, state: GanState) -> None:
    """Saves `state` after `epoch` completed epochs."""
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(_tree(state))))
    manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, epoch: int, template: GanState) -> GanState:
    """The state saved after `epoch` epochs, into `template`'s structure (a fresh `create_state`)."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(_tree(template)))
    return template.replace(**manager.restore(epoch, args=args)["state"])


def load_config(workdir: str | os.PathLike, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's `config.json`; with `settings`, written if absent, else checked to agree with them."""
    path = Path(workdir) / "config.json"
    if path.exists():
        config = json.loads(path.read_text())
        if settings is not None and config != settings:
            raise SystemExit(f"{path} holds {config}, not this command's {settings}: use another --workdir")
        return config
    if settings is None:
        raise SystemExit(f"no run in {workdir} (no config.json)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")
    return settings


def load_pixels(dataset: str, split: str, manual_dir: str | None = None) -> np.ndarray:
    """`[N, 784]` uint8 grey levels of a split of `mnist` or `fashion_mnist` (`vae_jax.data.load_split`)."""
    manual_dir = manual_dir or str(REPO.parent / "shared" / "data" / dataset)
    return data.load_split(dataset, split, data_dir=DATA_DIR, manual_dir=manual_dir)


def template_state(config: dict[str, Any]) -> GanState:
    """A fresh state of the run's `config`, initialized from its init key."""
    return create_state(run_keys(config["seed"])[0], config["latent_dim"], config["learning_rate"], config["b1"],
                        config["g_channels"], config["d_channels"], config["fake_input"] == "sample")


def _trim_metrics(path: Path, last_epoch: int) -> None:
    """Drops the lines of `metrics.jsonl` after `last_epoch` (epochs that a resumed run trains again)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["epoch"] <= last_epoch]
        path.write_text("".join(line + "\n" for line in lines))


def fit(config: dict[str, Any], workdir: str | os.PathLike, epochs: int, pixels: np.ndarray) -> GanState:
    """Trains the run of `config` in `workdir` up to `epochs` epochs, from its latest checkpoint if it has one.

    Appends one line per epoch to `<workdir>/metrics.jsonl` (the epoch's mean losses and discriminator outputs,
    its seconds, the first epoch's with compilation) and saves a checkpoint every `checkpoint_every` epochs and
    after the last.
    """
    manager, metrics_path = checkpoint_manager(workdir), Path(workdir) / "metrics.jsonl"
    state, start = template_state(config), manager.latest_step() or 0
    if start:
        state = restore(manager, start, state)
        print(f"resumed from the checkpoint of epoch {start}", flush=True)
    _trim_metrics(metrics_path, start)
    train_key, device_pixels = run_keys(config["seed"])[1], jnp.asarray(pixels)
    for epoch in range(start, epochs):
        began = time.perf_counter()
        state, metrics = train_epoch(state, device_pixels, jax.random.fold_in(train_key, epoch), config["batch_size"])
        metrics = jax.device_get(metrics)
        record = {"epoch": epoch + 1, "step": int(state.step), **{k: float(np.mean(v)) for k, v in metrics.items()},
                  "seconds": round(time.perf_counter() - began, 2)}
        with metrics_path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        if not np.isfinite(record["d_loss"] + record["g_loss"]):
            raise SystemExit(f"epoch {epoch + 1}: a loss is not finite")
        if (epoch + 1) % config["checkpoint_every"] == 0 or epoch + 1 == epochs:
            save(manager, epoch + 1, state)
    manager.close()
    return state


@functools.partial(jax.jit, static_argnames=("binary",))
def _draw(state: GanState, key: jax.Array, indices: jax.Array, binary: bool) -> jax.Array:
    sampler = sample_binary if binary else sample_means
    return sampler(state.generator, state.g_params, key, indices, state.latent_dim)


def draw(state: GanState, key: jax.Array, num: int, binary: bool = True, chunk: int = 1000) -> np.ndarray:
    """`[num, 784]` float samples 0..num-1 of `key` (`gan_models.sample_binary`, or the means), in chunks."""
    parts = [_draw(state, key, jnp.arange(i, min(i + chunk, num)), binary) for i in range(0, num, chunk)]
    return np.concatenate([np.asarray(part) for part in parts])


def real_images(dataset: str, split: str, real_seed: int, manual_dir: str | None = None) -> np.ndarray:
    """`[N, 784]` float 0/1: the split binarized as `vae_jax eval --sample-quality --seed real_seed` binarizes the
    VAEs' references (`samples.reference_images`), so that both score against the same images."""
    key = jax.random.fold_in(jax.random.key(real_seed), 1)
    return samples.reference_images(load_pixels(dataset, split, manual_dir), data.describe(dataset), key)


def select(workdir: str | os.PathLike, num_samples: int = 10_000, real_seed: int = 0,
           manual_dir: str | None = None) -> dict[str, Any]:
    """Scores every checkpoint by the FID of its `num_samples` binary samples (`fold_in(sample_key, 0)`) against
    the validation split binarized with `jax.random.key(real_seed)`; writes and returns `selection.json`
    (`{"fid": {epoch: fid}, "selected_epoch": ...}`) in the workdir and in `experiments/results/gan/<dataset>/`."""
    config, manager = load_config(workdir), checkpoint_manager(workdir)
    extractor = features.load_extractor(config["dataset"])
    real = features.extract(extractor, real_images(config["dataset"], "validation", real_seed, manual_dir))
    key, template, fids = jax.random.fold_in(run_keys(config["seed"])[2], 0), template_state(config), {}
    for epoch in manager.all_steps():
        fake = draw(restore(manager, epoch, template), key, num_samples)
        fids[str(epoch)] = float(sample_quality.fid(real, features.extract(extractor, fake)))
        print(f"epoch {epoch}: validation FID {fids[str(epoch)]:.3f}", flush=True)
    manager.close()
    selected = min(fids, key=fids.__getitem__)
    selection = {"dataset": config["dataset"], "split": "validation", "num_samples": num_samples,
                 "real_seed": real_seed, "fid": fids, "selected_epoch": int(selected)}
    _write_json(selection, Path(workdir) / "selection.json", RESULTS / config["dataset"] / "selection.json")
    return selection


def score(workdir: str | os.PathLike, epoch: int | None = None, num_samples: int = 10_000, real_seed: int = 0,
          manual_dir: str | None = None) -> dict[str, Any]:
    """`sample_quality` of the selected checkpoint's (or `epoch`'s) `num_samples` binary samples
    (`fold_in(sample_key, 1)`) against the test split binarized with `jax.random.key(real_seed)`, written to
    `experiments/results/gan/<dataset>/sample_quality.json` with `samples.png` and `means.png` beside it."""
    config = load_config(workdir)
    epoch = epoch or json.loads((Path(workdir) / "selection.json").read_text())["selected_epoch"]
    manager = checkpoint_manager(workdir)
    state = restore(manager, epoch, template_state(config))
    manager.close()
    extractor = features.load_extractor(config["dataset"])
    real = features.extract(extractor, real_images(config["dataset"], "test", real_seed, manual_dir)[:num_samples])
    key = jax.random.fold_in(run_keys(config["seed"])[2], 1)
    fake = draw(state, key, num_samples)
    quality = sample_quality.sample_quality(real, features.extract(extractor, fake))
    description = {"model": {"class": "DCGAN", **config}, "dataset": config["dataset"]}
    card = protocol.sample_quality_card(data.describe(config["dataset"]), "test", num_samples, extractor, real_seed,
                                        description, data_hash=data.split_hash(config["dataset"], "test"))
    result = {**quality, "sampled": f"generator, epoch {epoch} (best validation FID)", "run": "dcgan",
              "epoch": epoch, **card}
    out = RESULTS / config["dataset"]
    (out / "eval.jsonl").write_text(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)
    figures.save_png(out / "grid.png", figures.image_grid(fake[:100], 10, (28, 28)))
    write_grids(state, key, out)
    return result


def write_grids(state: GanState, key: jax.Array, out: Path, num: int = 100, columns: int = 10) -> None:
    """`samples.png` (binary samples 0..num-1 of `key`) and `means.png` (their Bernoulli means) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name, binary in (("samples", True), ("means", False)):
        images = draw(state, key, num, binary)
        figures.save_png(out / f"{name}.png", figures.image_grid(images, columns, (28, 28)))


def _write_json(value: dict[str, Any], *paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=1) + "\n")
    print(json.dumps(value), flush=True)


def main(argv: list[str] | None = None) -> None:
    """The command line: `train`, `select`, `score`, `sample` (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train (or resume) a run")
    train.add_argument("--dataset", choices=("mnist", "fashion_mnist"), required=True)
    train.add_argument("--epochs", type=int, required=True)
    for name, kind, default in (("seed", int, 0), ("batch-size", int, 64), ("latent-dim", int, 64),
                                ("g-channels", int, 32), ("d-channels", int, 16), ("learning-rate", float, 2e-4),
                                ("b1", float, 0.5), ("checkpoint-every", int, 2)):
        train.add_argument(f"--{name}", type=kind, default=default)
    train.add_argument("--fake-input", choices=("mean", "sample"), default="mean",
                       help="what the discriminator sees of fakes: the Bernoulli means, or draws (straight-through)")
    for name, command in (("select", "validation FID of every checkpoint"), ("score", "the test-split scores"),
                          ("sample", "a grid of samples and their means")):
        sub = commands.add_parser(name, help=command)
        sub.add_argument("--num-samples", type=int, default=10_000 if name != "sample" else 100)
        sub.add_argument("--real-seed", type=int, default=0)
        sub.add_argument("--epoch", type=int, default=None)
        sub.add_argument("--out", default=None, help="sample: the folder of samples.png and means.png")
    for sub in commands.choices.values():
        sub.add_argument("--workdir", required=True)
        sub.add_argument("--manual-dir", default=None, help="the dataset's original files (../shared/data/<dataset>)")
    args = parser.parse_args(argv)
    run(args)


def run(args: argparse.Namespace) -> None:
    """Runs the parsed command."""
    if args.command == "train":
        settings = {name: getattr(args, name) for name in SETTINGS}
        config = load_config(args.workdir, settings)
        fit(config, args.workdir, args.epochs, load_pixels(config["dataset"], "train", args.manual_dir))
        results = RESULTS / config["dataset"]
        results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(args.workdir) / "metrics.jsonl", results / "metrics.jsonl")
    elif args.command == "select":
        select(args.workdir, args.num_samples, args.real_seed, args.manual_dir)
    elif args.command == "score":
        score(args.workdir, args.epoch, args.num_samples, args.real_seed, args.manual_dir)
    else:
        config, manager = load_config(args.workdir), checkpoint_manager(args.workdir)
        state = restore(manager, args.epoch or manager.latest_step(), template_state(config))
        manager.close()
        write_grids(state, jax.random.fold_in(run_keys(config["seed"])[2], 1), Path(args.out or args.workdir),
                    args.num_samples)


if __name__ == "__main__":
    main()
