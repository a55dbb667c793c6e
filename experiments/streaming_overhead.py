"""What streaming a split from the host costs against keeping it on the device (`vae_jax.stream`), on this machine.

    python experiments/streaming_overhead.py --manual-dir ../shared/data/binarized_mnist

One cs236 training epoch (500 steps of 100 on binarized MNIST) and one validation pass (the NELBO of the 10,000
validation images, 1,000 at a time), on the resident split and streamed in chunks of the sizes that two budgets
give: 16M (4 MiB chunks: 53 steps, or 5 evaluation batches) and 1M (256 KiB chunks: 3 steps, or 1 batch, the
least). Each case
runs once to compile, then `--rounds` times, all cases in turn in each round (a shared machine's drift falls on all
alike); reports each case's median and fastest seconds and its median ratio to the resident case. Writes `--out`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from benchmark import markdown, save_report

from vae_jax import builders, compilation_cache, configs, data, evaluate, resolve, stream, train

CHUNKS = {"4 MiB": 4 * 2**20, "256 KiB": 2**18}  # what budgets of 16M and 1M give (a quarter of the budget)


def _seconds(run_case: Callable[[int], Any], round_index: int) -> float:
    start = time.perf_counter()
    jax.block_until_ready(run_case(round_index))
    return time.perf_counter() - start


def _epoch(epoch: Callable[..., Any], state: train.TrainState, pixels: Any, objective: Any, round_index: int) -> Any:
    key = jax.random.fold_in(jax.random.key(0), round_index)
    return epoch(state, pixels, key, batch_size=100, objective=objective, kl_weight=jnp.float32(1.0))


def _validation(validate: Callable[..., Any], params: Any, round_index: int) -> Any:
    return validate(params, jax.random.key(round_index))


def cases(manual_dir: str | None) -> dict[str, Callable[[int], Any]]:
    """Each case: a function of the round that trains one epoch or validates once."""
    config = configs.get_config("cs236")
    run = resolve.resolve_run(config, "unused")
    state, objective = run.template_state(), builders.build_objective(config)
    splits = {name: data.load_split("binarized_mnist", name, manual_dir=manual_dir, mmap=True)
              for name in ("train", "validation")}
    found: dict[str, Callable[[int], Any]] = {}
    for label, chunk_bytes in {"resident": None, **{f"streamed, {k} chunks": v for k, v in CHUNKS.items()}}.items():
        pixels, val = (jax.device_put(split) if chunk_bytes is None else stream.Streamed(split, chunk_bytes)
                       for split in splits.values())
        epoch = train.train_epoch_jit if chunk_bytes is None else stream.train_epoch
        found[f"epoch, {label}"] = functools.partial(_epoch, epoch, state, pixels, objective)
        validate = stream.over_split(functools.partial(evaluate.evaluate_elbo, run.model, batch_size=1000), val, 1000)
        found[f"validation, {label}"] = functools.partial(_validation, validate, state.params)
    return found


def measure(rounds: int, manual_dir: str | None) -> dict[str, list[float]]:
    """Seconds of each case in each round, after one call that compiles it."""
    found = cases(manual_dir)
    for run_case in found.values():
        _seconds(run_case, 0)
    times: dict[str, list[float]] = {name: [] for name in found}
    for round_index in range(1, rounds + 1):
        for name, run_case in found.items():
            times[name].append(_seconds(run_case, round_index))
    return times


def summarize(times: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for name, seconds in times.items():
        kind = name.split(",")[0]
        base = times[f"{kind}, resident"]
        ratio = statistics.median(s / b for s, b in zip(seconds, base))
        rows.append({"case": name, "median_s": round(statistics.median(seconds), 3),
                     "fastest_s": round(min(seconds), 3), "ratio_to_resident": round(ratio, 3),
                     "seconds": [round(s, 3) for s in seconds]})
    return rows


def markdown_report(report: dict) -> str:
    lines = ["| case | median s | fastest s | median ratio to resident |", "| --- | --- | --- | --- |"]
    lines += [f"| {row['case']} | {row['median_s']:.2f} | {row['fastest_s']:.2f} | {row['ratio_to_resident']:.2f} |"
              for row in report["rows"]]
    machine = report["machine"]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores; {report['rounds']} rounds."]
    return markdown(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", default=None, help="the original binarized MNIST files, offline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="experiments/results/streaming_overhead_cpu.json")
    args = parser.parse_args()
    compilation_cache.enable()
    rows = summarize(measure(args.rounds, args.manual_dir))
    save_report({"model": "cs236", "batch": 100, "rounds": args.rounds, "rows": rows}, args.out, markdown_report)


if __name__ == "__main__":
    main()
