"""Piano rolls of the polyphonic-music study (docs/studies.md, section 7): for each dataset, a test sequence and
rolls drawn by each model (ancestral sampling from its best checkpoint, `vae_jax.generation.sample_rolls`), and the
probability of each key under the VRNN given the draws before it; how many keys sound per step and where, in
the test split and in 20 draws of each model; and the test sequence reconstructed: each latent model's probability
of each key given z_1:T at the posterior's means (`frame_logits` with zero noise), beside the baseline's
prediction from the past frames, with the log-likelihood per step of the shown sequence under each.

    python experiments/piano_rolls.py [--runs runs/sequences] [--out experiments/results/sequences]

Writes `<out>/piano_rolls_<dataset>.png`, `<out>/piano_rolls_reconstructed_<dataset>.png` and
`<out>/piano_rolls.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from vae_jax import data, distributions, figures, generation, resolve
from vae_jax.sequences import Sequence

MODELS = ("rnn", "vrnn", "srnn", "dmm")


def statistics(frames: np.ndarray) -> dict[str, float]:
    """Keys sounding per step, and the mean and spread of their MIDI notes, over `[N, 88]` frames."""
    notes = np.nonzero(frames)[1] + 21
    return {"keys_per_step": float(frames.sum(axis=1).mean()), "mean_note": float(notes.mean()),
            "note_stddev": float(notes.std())}


def reconstruction(module, params, frames: np.ndarray) -> tuple[np.ndarray, float]:
    """`(probabilities [T, D], log-likelihood per step)` of a whole sequence `frames [T, D]` under a sequence model:
    p(x_t | z_t, .) with z_1:T at the posterior's means step by step for a latent model, p(x_t | x_<t) for the
    baseline."""
    x = Sequence(frames, np.asarray(len(frames)))
    eps = np.zeros((len(frames), 1, getattr(module, "latent_dim", 1)), np.float32)
    logits = module.apply(params, x, eps, method=type(module).frame_logits)[:, 0]
    log_likelihood = distributions.bernoulli_log_prob(frames, logits)
    return np.asarray(jax.nn.sigmoid(logits)), float(np.mean(log_likelihood))


def rolls_of(dataset: str, runs: Path, polyphonic: str, num_frames: int) -> tuple[dict, dict, dict]:
    """The panels of one dataset's figures (its first test sequence and a draw of each trained model; the same
    sequence and its reconstructions), the `statistics` of its test frames and of 20 draws of each model, and each
    model's reconstruction log-likelihood per step of that sequence."""
    test = data.load_sequences(dataset, "test", manual_dir=polyphonic)
    sequence = test.frames[0, :test.lengths[0]]
    title = f"{dataset}: test sequence 0"
    panels, reconstructed = {title: sequence[:num_frames]}, {title: sequence[:num_frames]}
    mask = np.arange(test.frames.shape[1]) < test.lengths[:, None]
    stats, fits = {"test split": statistics(test.frames[mask])}, {}
    for name in MODELS:
        workdir = runs / f"{dataset}_{name}"
        if not (workdir / "checkpoints").is_dir():
            continue
        model = resolve.load_model(f"experiments/sequence_models.py:{name}")
        run, restored = resolve.open_run(workdir, model, manual_dir=polyphonic)
        module, params = run.model.module, restored.state.eval_params
        rolls, probabilities = generation.sample_rolls(module, params, jax.random.key(0), 20, num_frames)
        panels[f"{name.upper()} (epoch {restored.epoch}): a draw"] = np.asarray(rolls[0])
        if name == "vrnn":
            panels["VRNN: probability of each key given the draws before"] = np.asarray(probabilities[0])
        stats[name] = statistics(np.asarray(rolls).reshape(-1, rolls.shape[-1]))
        probabilities, fits[name] = reconstruction(module, params, sequence)
        given = "p(x_t | x_<t), from the past frames" if name == "rnn" else "p(x_t | z_t, .), z at q's means"
        reconstructed[f"{name.upper()}: {given}; log-likelihood {fits[name]:.2f} nats/step"] = probabilities[
            :num_frames]
    return panels, reconstructed, {"keys": stats, "reconstruction_log_likelihood_per_step": fits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/sequences"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/sequences"))
    parser.add_argument("--polyphonic", default="../shared/data/polyphonic")
    parser.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()
    report = {}
    for dataset in ("jsb_chorales", "nottingham"):
        panels, reconstructed, report[dataset] = rolls_of(dataset, args.runs, args.polyphonic, args.frames)
        for path, rolls in ((args.out / f"piano_rolls_{dataset}.png", panels),
                            (args.out / f"piano_rolls_reconstructed_{dataset}.png", reconstructed)):
            figures.save_piano_rolls(path, rolls)
            print(path)
    (args.out / "piano_rolls.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
