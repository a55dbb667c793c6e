"""What a compiled loop does to a conv VAE's training step on this machine, with lax's convolutions and with
`vae_jax.convolution`'s (patches times the kernel, what the conv networks run on the CPU).

    python experiments/conv_in_scan.py

The `default` conv VAE with the discretized logistic mixture on MNIST's 8-bit shape (the run of
experiments/mnist_8bit_conv.sh), one Adam step on a batch of 100 random grey images: compiled alone and called from
Python, and inside a `lax.scan` as `train.train_epoch` runs its steps. Each case compiles once, then runs `--steps`
steps `--rounds` times, all cases in turn in each round; reports the median seconds per step and each case's ratio to
lax's convolutions compiled alone. Writes `--out`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from benchmark import markdown, save_report
from jax import lax

from vae_jax import builders, configs, convolution, data, train


def lax_convolution(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                    feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` everywhere: the conv networks as they ran before `vae_jax.convolution`."""
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                    feature_group_count, precision=precision)


def _runner(in_scan: bool, state: train.TrainState, batches: jax.Array):
    """A function `state -> state` that runs one step per entry of `batches [S, B, D]`, compiled as asked."""
    def step(current: train.TrainState, batch: jax.Array) -> train.TrainState:
        return train.train_step(current, batch, jnp.arange(batch.shape[0]), jax.random.key(1))[0]

    if in_scan:
        scanned = jax.jit(lambda current: lax.scan(lambda c, b: (step(c, b), None), current, batches)[0])
        return scanned
    one = jax.jit(step)

    def looped(current: train.TrainState) -> train.TrainState:
        for batch in batches:
            current = one(current, batch)
        return current

    return looped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=f"experiments/results/conv_in_scan_{jax.default_backend()}.json")
    args = parser.parse_args()
    dataset = data.describe("mnist", "8bit")
    config = configs.apply_overrides(configs.get_config("default"),
                                     ["model.architecture=conv", "model.likelihood=logistic_mixture"])
    batches = jnp.asarray(np.random.default_rng(0).integers(0, 256, (args.steps, 100, dataset.num_pixels)), jnp.uint8)
    cases = {}
    for conv_name, conv in (("lax", lax_convolution), ("patches", convolution.conv_general_dilated)):
        with mock.patch.object(convolution, "conv_general_dilated", conv):
            model = builders.build_model(config.model, dataset)
            state = train.create_train_state(jax.random.key(0), model, optax.adam(1e-3), (dataset.num_pixels,))
            for in_scan in (False, True):
                run = _runner(in_scan, state, batches)
                jax.block_until_ready(run(state).params)  # compiles
                cases[(conv_name, "in a scan" if in_scan else "alone")] = (run, state)
    seconds = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, (run, state) in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(run(state).params)
            seconds[case].append((time.perf_counter() - start) / args.steps)
    baseline = statistics.median(seconds[("lax", "alone")])
    rows = [{"convolutions": conv_name, "step": where, "seconds_per_step": statistics.median(times),
             "ratio_to_lax_alone": statistics.median(times) / baseline, "all_seconds_per_step": times}
            for (conv_name, where), times in seconds.items()]
    save_report({"backend": jax.default_backend(), "steps": args.steps, "rounds": args.rounds, "cases": rows},
                args.out, render)


def render(report: dict) -> str:
    lines = ["| convolutions | step | s/step (median) | vs lax alone |", "| --- | --- | --- | --- |"]
    lines += [f"| {row['convolutions']} | {row['step']} | {row['seconds_per_step']:.3f} | "
              f"{row['ratio_to_lax_alone']:.2f} |" for row in report["cases"]]
    return markdown(lines + ["", f"{report['backend']}; {report['steps']} steps of 100, {report['rounds']} rounds."])


if __name__ == "__main__":
    main()
