"""What a compiled loop does to a conv VAE's training step on this machine, with lax's convolutions and with
`vae_jax.convolution`'s (patches times the kernel, what the conv networks run on the CPU).

    python experiments/conv_in_scan.py

The `default` conv VAE with the discretized logistic mixture on MNIST's 8-bit shape (the run of
experiments/mnist_8bit_conv.sh), one Adam step on a batch of 100 random grey images: compiled alone and called from
Python, and inside a `lax.scan` as `train.train_epoch` runs its steps; beside them the same network and step in
eager PyTorch (`TorchConvVAE`: torch's own convolutions, PixelCNN++'s formula for the mixture). Each case compiles
(or warms up) once, then runs `--steps` steps `--rounds` times, all cases in turn in each round; reports the median
seconds per step and each case's ratio to PyTorch's. Writes `--out`.
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
import torch
import torch.nn.functional as F
from benchmark import markdown, save_report
from jax import lax
from torch import nn

from vae_jax import builders, configs, convolution, data, train


class TorchConvVAE(nn.Module):
    """The `default` conv VAE with the mixture in eager PyTorch, for `[B, 784]` grey levels: 3x3 stride-2
    convolutions of 32 and 64 channels, ELU MLPs 512-512, z = 32, transposed convolutions back to 30 values per pixel
    (10 components: logits, means, log-scales)."""

    def __init__(self, latent: int = 32, components: int = 10) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, 2, 1), nn.ELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ELU(), nn.Flatten(),
            nn.Linear(7 * 7 * 64, 512), nn.ELU(), nn.Linear(512, 512), nn.ELU(), nn.Linear(512, 2 * latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, 512), nn.ELU(), nn.Linear(512, 512), nn.ELU(), nn.Linear(512, 7 * 7 * 64), nn.ELU(),
            nn.Unflatten(1, (64, 7, 7)), nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ELU(),
            nn.ConvTranspose2d(32, 3 * components, 3, 2, 1, output_padding=1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The batch's mean negative ELBO, one reparameterized sample per example."""
        x = pixels.reshape(-1, 1, 28, 28)
        mean, logvar = self.encoder(x / 255).chunk(2, dim=-1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        logits, means, log_scales = self.decoder(z).chunk(3, dim=1)  # each [B, K, 28, 28]
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(-1)
        return (kl - self._log_prob(x / 127.5 - 1, logits, means, log_scales.clamp(min=-7.0))).mean()

    @staticmethod
    def _log_prob(x: torch.Tensor, logits: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
        """PixelCNN++'s discretized logistic mixture, x `[B, 1, 28, 28]` in [-1, 1] -> log p(x) `[B]`."""
        centered, inverse_scale = x - means, torch.exp(-log_scales)
        upper, lower = inverse_scale * (centered + 1 / 255), inverse_scale * (centered - 1 / 255)
        log_below_upper, log_above_lower = upper - F.softplus(upper), -F.softplus(lower)
        log_bin = torch.log(torch.clamp(torch.sigmoid(upper) - torch.sigmoid(lower), min=1e-12))
        log_probs = torch.where(x < -0.999, log_below_upper, torch.where(x > 0.999, log_above_lower, log_bin))
        return torch.logsumexp(log_probs + F.log_softmax(logits, dim=1), dim=1).sum((1, 2))


def _torch_runner(batches: np.ndarray):
    """A function `_ -> None` that runs one eager Adam step of `TorchConvVAE` per entry of `batches`."""
    torch.manual_seed(0)
    model = TorchConvVAE()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    tensors = [torch.tensor(batch, dtype=torch.float32) for batch in batches]

    def run(_: object) -> None:
        for batch in tensors:
            optimizer.zero_grad()
            model(batch).backward()
            optimizer.step()

    return run


def _runner(in_scan: bool, state: train.TrainState, batches: jax.Array):
    """A function `state -> state` that runs one step per entry of `batches [S, B, D]`, compiled as asked."""
    def step(current: train.TrainState, batch: jax.Array) -> train.TrainState:
        return train.train_step(current, batch, jnp.arange(batch.shape[0]), jax.random.key(1))[0]

    if in_scan:
        return jax.jit(lambda current: lax.scan(lambda c, b: (step(c, b), None), current, batches)[0])
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
    # lax everywhere: the conv networks as they ran before `vae_jax.convolution`
    for conv_name, conv in (("lax", lax.conv_general_dilated), ("patches", convolution.conv_general_dilated)):
        with mock.patch.object(convolution, "conv_general_dilated", conv):
            model = builders.build_model(config.model, dataset)
            state = train.create_train_state(jax.random.key(0), model, optax.adam(1e-3), (dataset.num_pixels,))
            for in_scan in (False, True):
                run = _runner(in_scan, state, batches)
                jax.block_until_ready(run(state))  # compiles
                cases[(conv_name, "in a scan" if in_scan else "alone")] = (run, state)
    torch_run = _torch_runner(np.asarray(batches))
    torch_run(None)  # warms up
    cases[("PyTorch eager", "alone")] = (torch_run, None)
    seconds = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, (run, state) in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(run(state))
            seconds[case].append((time.perf_counter() - start) / args.steps)
    baseline = statistics.median(seconds[("PyTorch eager", "alone")])
    rows = [{"convolutions": conv_name, "step": where, "seconds_per_step": statistics.median(times),
             "ratio_to_pytorch": statistics.median(times) / baseline, "all_seconds_per_step": times}
            for (conv_name, where), times in seconds.items()]
    save_report({"backend": jax.default_backend(), "jax": jax.__version__, "torch": torch.__version__,
                 "steps": args.steps, "rounds": args.rounds, "cases": rows},
                args.out, markdown_report)


def markdown_report(report: dict) -> str:
    """The table of `report` and the machine under it."""
    lines = ["| convolutions | step | s/step (median) | time vs PyTorch eager |", "| --- | --- | --- | --- |"]
    lines += [f"| {row['convolutions']} | {row['step']} | {row['seconds_per_step']:.3f} | "
              f"{row['ratio_to_pytorch']:.2f} |" for row in report["cases"]]
    machine = report["machine"]
    return markdown(lines + ["", f"Machine: {machine['cpu']}, {machine['cores']} cores ({report['backend']}).",
                             f"{report['steps']} steps of 100, {report['rounds']} rounds; torch {report['torch']}, "
                             f"jax {report['jax']}."])


if __name__ == "__main__":
    main()
