"""Command line: `python -m vae_jax train|eval|gaps|sample|compare`. The only place that prints errors and exits.

Exit codes: 0 success; 2 bad input, or a work directory in use by another `train` (one line on stderr); 3 training
diverged (non-finite loss or gradient); 4 a storage fault (a full disk, a read-only or unwritable folder: one line
naming the path, the last good checkpoint kept); 143 stopped by SIGTERM and 130 by SIGINT (Ctrl-C), each after
keeping a checkpoint of the finished work; a second signal ends the process at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from vae_jax import configs, data
from vae_jax.errors import DivergenceError, StorageError, VaeError
from vae_jax.interrupt import StopRequested


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host run: call jax.distributed.initialize() first (see vae_jax/parallel.py)")
    _add_cache_option(parser)


def _add_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compilation-cache", default=None, metavar="DIR|off",
                        help="folder of JAX's persistent compilation cache, or off (default: "
                             "$VAE_JAX_COMPILATION_CACHE, else $JAX_COMPILATION_CACHE_DIR, else "
                             "$XDG_CACHE_HOME or ~/.cache, /vae_jax/jax/<machine>; see vae_jax/compilation_cache.py)")


def _add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="MODULE:NAME",
                        help="a model that vae_jax does not define: MODULE:NAME or FILE.py:NAME, a model object or a "
                             "callable that returns one (a run of such a model needs it to resume and to be read)")


def _add_budget_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device-memory-budget", default=None, metavar="SIZE",
                        help="device memory for a split, e.g. 512M or 2G (powers of 1024) or bytes: a larger split "
                             "streams from the host in chunks (default 4G; see vae_jax/stream.py); changes no number")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=str(data.DEFAULT_DATA_DIR),
                        help="where TFDS stores prepared datasets and vae_jax caches decoded splits")
    parser.add_argument("--manual-dir", default=None,
                        help="folder with the dataset's original files, for machines without internet "
                             "(e.g. ../shared/data/binarized_mnist)")


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m vae_jax", description="Variational autoencoders on MNIST.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train_command(commands)
    _add_eval_command(commands)
    _add_sample_command(commands)
    _add_gaps_command(commands)
    _add_compare_command(commands)
    return parser


def _add_train_command(commands: Any) -> None:
    """The `train` subcommand."""
    train = commands.add_parser("train", help="train (or resume) a run in a work directory")
    _add_model_option(train)
    train.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics.jsonl")
    train.add_argument("--config", default=None,
                       help=f"preset, one of {sorted(configs.PRESETS)} (default: the stored one when resuming, "
                            "else 'default')")
    train.add_argument("--dataset", default=None,
                       help=f"one of {list(data.NAMED_DATASETS)}, or a TFDS image dataset's name (e.g. cifar10)")
    train.add_argument("--epochs", type=int, default=None, help="total epochs; a larger N continues a finished run")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--stop-check-steps", type=int, default=None, metavar="N",
                       help="optimizer steps between two checks for SIGTERM/SIGINT, which bounds how long a graceful "
                            "stop takes (default: once per epoch); changes no number")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write the per-epoch metrics as TensorBoard scalars to <workdir>/tensorboard")
    train.add_argument("--data-parallel", action="store_true",
                       help="split each batch over all devices (sets data_parallel=true)")
    _add_device_options(train)
    _add_budget_option(train)
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. model.latent_dim=20 optim.learning_rate=3e-4")
    _add_data_options(train)


def _add_eval_command(commands: Any) -> None:
    """The `eval` subcommand."""
    evaluate = commands.add_parser("eval", help="negative ELBO of a checkpoint on a whole split (one JSON line)")
    _add_model_option(evaluate)
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", default="test", help=f"one of {list(data.SPLITS)}")
    evaluate.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (default: best validation)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="examples evaluated at once (memory only)")
    evaluate.add_argument("--iwae-samples", type=int, default=0,
                          help="K: also estimate log p(x) by the importance-weighted bound (standard: 5000)")
    evaluate.add_argument("--iwae-chunk", type=int, default=500, help="importance samples at once (memory only)")
    evaluate.add_argument("--bound", default="iwae", choices=("iwae", "fivo"),
                          help="the log p(x) estimate with K = --iwae-samples: the importance-weighted bound, or FIVO "
                               "(particle filter; latent sequence models)")
    evaluate.add_argument("--seed", type=int, default=0, help="evaluation seed (noise, dynamic binarization)")
    evaluate.add_argument("--sample-quality", type=int, default=0, metavar="N",
                          help="instead of the likelihood: FID, KID, precision/recall, density/coverage of N samples "
                               "against N examples of the split (standard: 10000)")
    evaluate.add_argument("--latent-density", default="prior", choices=configs.LATENT_DENSITIES,
                          help="with --sample-quality: decode codes from the prior, or from a Gaussian mixture or a "
                               "second-stage VAE fitted to the aggregate posterior")
    evaluate.add_argument("--temperature", type=float, default=1.0,
                          help="with --sample-quality: scale the N(0, I) prior's standard deviation")
    evaluate.add_argument("--latent-components", type=int, default=10, help="components of --latent-density gmm")
    evaluate.add_argument("--sample-grid", default=None, metavar="PNG",
                          help="with --sample-quality: save the first 100 scored images as a 10 x 10 grid")
    _add_device_options(evaluate)
    _add_budget_option(evaluate)
    _add_data_options(evaluate)


def _add_sample_command(commands: Any) -> None:
    """The `sample` subcommand."""
    sample = commands.add_parser("sample", help="PNG grids: prior samples, reconstructions, interpolations, manifold")
    _add_model_option(sample)
    sample.add_argument("--workdir", required=True)
    sample.add_argument("--out", required=True,
                        help="PNG of prior samples; the other figures go beside it as <stem>_<figure>.png")
    sample.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (default: best validation)")
    sample.add_argument("--num-images", type=int, default=100)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--mnist-dir", default=None,
                        help="folder with the original MNIST files (e.g. ../shared/data/mnist): the labels of the "
                             "latent scatter of a 2-D model, offline, when mnist is not prepared in --data-dir yet")
    _add_data_options(sample)
    _add_cache_option(sample)


def _add_gaps_command(commands: Any) -> None:
    """The `gaps` subcommand."""
    gaps = commands.add_parser("gaps", help="inference gaps: log p(x), the ELBO of per-example posteriors and of the "
                                            "encoder's, per example (Cremer et al., 2018)")
    _add_model_option(gaps)
    gaps.add_argument("--workdir", required=True)
    gaps.add_argument("--split", default="test", help=f"one of {list(data.SPLITS)}")
    gaps.add_argument("--num-examples", type=int, default=None, help="the split's first N examples (default: all)")
    defaults = configs.GapsConfig()
    gaps.add_argument("--steps", type=int, default=defaults.steps, help="Adam steps on each example's posterior")
    gaps.add_argument("--samples", type=int, default=defaults.num_samples,
                      help="samples of the ELBO estimate at each step")
    gaps.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                      help="Adam's first learning rate, decaying to 1%% of it (cosine)")
    gaps.add_argument("--eval-samples", type=int, default=defaults.eval_samples,
                      help="samples per example of the final ELBOs")
    gaps.add_argument("--iwae-samples", type=int, default=defaults.iwae_samples, help="K of the log p(x) estimate")
    gaps.add_argument("--batch-size", type=int, default=defaults.batch_size, help="examples at once (memory only)")
    gaps.add_argument("--seed", type=int, default=0, help="evaluation seed")
    gaps.add_argument("--csv", default=None, help="also write the per-example numbers to this CSV file")
    _add_data_options(gaps)
    _add_cache_option(gaps)


def _add_compare_command(commands: Any) -> None:
    """The `compare` subcommand."""
    compare = commands.add_parser("compare", help="Markdown tables of eval results, one table per protocol")
    compare.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="eval.jsonl files or folders holding them")


def _model(args: argparse.Namespace) -> object | None:
    from vae_jax import resolve

    return None if args.model is None else resolve.load_model(args.model)


def _train_config(args: argparse.Namespace, model: object | None) -> configs.Config:
    """The preset (or the stored config of a run being resumed) with the command line's overrides."""
    from vae_jax import resolve

    stored = resolve.stored_config(args.workdir, model)
    if args.config is None and stored is not None:
        config = stored
    else:
        config = configs.get_config(args.config or "default")
    overrides = list(args.overrides)
    if args.dataset is not None:
        overrides.append(f"dataset={args.dataset}")
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.data_parallel:
        overrides.append("data_parallel=true")
    return configs.apply_overrides(config, overrides)


def _require_workdir(workdir: str) -> None:
    if not Path(workdir).is_dir():
        raise VaeError(f"work directory {workdir} does not exist; pass the --workdir of a trained run")


def _notice(message: str) -> None:
    print(message, file=sys.stderr)


def _budget(args: argparse.Namespace) -> dict[str, str]:
    """`device_memory_budget` where the command line gives one (else the library's default holds)."""
    return {} if args.device_memory_budget is None else {"device_memory_budget": args.device_memory_budget}


def _train(args: argparse.Namespace) -> object:
    from vae_jax import trainer

    model = _model(args)
    return trainer.fit(_train_config(args, model), args.workdir, model=model, data_dir=args.data_dir,
                       manual_dir=args.manual_dir, progress=not args.no_progress, tensorboard=args.tensorboard,
                       log=_notice, stop_check_steps=args.stop_check_steps, **_budget(args))


def _eval(args: argparse.Namespace) -> object:
    from vae_jax import readback

    _require_workdir(args.workdir)
    if args.sample_quality:
        from vae_jax import samples

        return samples.evaluate_samples(
            args.workdir, args.split, num_samples=args.sample_quality, model=_model(args), epoch=args.epoch,
            latent=args.latent_density, temperature=args.temperature, components=args.latent_components,
            eval_seed=args.seed, grid=args.sample_grid, data_dir=args.data_dir, manual_dir=args.manual_dir,
            log=_notice)
    return readback.evaluate_checkpoint(
        args.workdir, args.split, model=_model(args), epoch=args.epoch, batch_size=args.batch_size,
        iwae_samples=args.iwae_samples, iwae_chunk=args.iwae_chunk, eval_seed=args.seed, data_dir=args.data_dir,
        manual_dir=args.manual_dir, log=_notice, bound=args.bound, **_budget(args))


def _gaps(args: argparse.Namespace) -> object:
    from vae_jax import readback

    _require_workdir(args.workdir)
    settings = configs.GapsConfig(steps=args.steps, num_samples=args.samples, learning_rate=args.learning_rate,
                                  eval_samples=args.eval_samples, iwae_samples=args.iwae_samples,
                                  batch_size=args.batch_size)
    summary, gaps = readback.evaluate_gaps(args.workdir, args.split, model=_model(args),
                                           num_examples=args.num_examples, gaps=settings, eval_seed=args.seed,
                                           data_dir=args.data_dir, manual_dir=args.manual_dir)
    if args.csv:
        readback.write_gaps_csv(args.csv, gaps)
    return summary


def _sample(args: argparse.Namespace) -> object:
    from vae_jax import readback

    _require_workdir(args.workdir)
    figures = readback.write_sample_figures(args.workdir, args.out, model=_model(args), epoch=args.epoch,
                                            num_images=args.num_images, seed=args.seed, data_dir=args.data_dir,
                                            manual_dir=args.manual_dir, mnist_dir=args.mnist_dir)
    return {name: str(path) for name, path in figures.items()}


def _compare(args: argparse.Namespace) -> None:
    from vae_jax import protocol

    print(protocol.compare_tables(protocol.read_results(args.paths)), end="")


# Each subcommand: whether it compiles (and so needs the compilation cache), and what runs it; a command that returns
# a result prints it as one JSON line.
COMMANDS = {"train": (True, _train), "eval": (True, _eval), "gaps": (True, _gaps), "sample": (True, _sample),
            "compare": (False, _compare)}


def run(args: argparse.Namespace) -> int:
    compiles, command = COMMANDS[args.command]
    if compiles:
        from vae_jax import compilation_cache

        if args.compilation_cache is not None:
            os.environ[compilation_cache.ENVIRONMENT_VARIABLE] = args.compilation_cache
        compilation_cache.enable()
    if getattr(args, "distributed", False):
        from vae_jax import parallel

        parallel.initialize_distributed()
    result = command(args)
    if result is not None:
        print(json.dumps(result))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of `build_parser`, where `train`'s key=value overrides may also follow options."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and hasattr(args, "overrides") and all("=" in arg and not arg.startswith("-") for arg in unknown):
        args.overrides = [*args.overrides, *unknown]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _drop_closed_loop_noise(unraisable: sys.UnraisableHookArgs) -> None:
    """After a failed write, TensorStore's callbacks may find their event loop closed and print it as an ignored
    exception; that is the storage fault's echo, which its one-line error already names."""
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
        return
    sys.__unraisablehook__(unraisable)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.unraisablehook = _drop_closed_loop_noise
    args = parse_args(argv)
    try:
        return run(args)
    except StopRequested as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    except DivergenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except StorageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    except VaeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; checkpoints of completed epochs are kept, re-run the same command to resume",
              file=sys.stderr)
        return 130
