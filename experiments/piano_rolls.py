"""Piano rolls of the polyphonic-music study (docs/studies.md, section 7): for each dataset, a test sequence and
rolls drawn by each model (ancestral sampling from its best checkpoint, `vae_jax.generation.sample_rolls`), and the
probability of each key under the VRNN given the draws before it; and how many keys sound per step and where, in
the test split and in 20 draws of each model.

    python experiments/piano_rolls.py [--runs runs/sequences] [--out experiments/results/sequences]

Writes `<out>/piano_rolls_<dataset>.png` and `<out>/piano_rolls.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from vae_jax import data, figures, generation, resolve

MODELS = ("rnn", "vrnn", "srnn")


def statistics(frames: np.ndarray) -> dict[str, float]:
    """Keys sounding per step, and the mean and spread of their MIDI notes, over `[N, 88]` frames."""
    notes = np.nonzero(frames)[1] + 21
    return {"keys_per_step": float(frames.sum(axis=1).mean()), "mean_note": float(notes.mean()),
            "note_stddev": float(notes.std())}


def rolls_of(dataset: str, runs: Path, polyphonic: str, num_frames: int) -> tuple[dict[str, np.ndarray], dict]:
    """The panels of one dataset's figure (its first test sequence and a draw of each trained model), and the
    `statistics` of its test frames and of 20 draws of each model."""
    test = data.load_sequences(dataset, "test", manual_dir=polyphonic)
    panels = {f"{dataset}: test sequence 0": test.frames[0, :min(num_frames, test.lengths[0])]}
    mask = np.arange(test.frames.shape[1]) < test.lengths[:, None]
    stats = {"test split": statistics(test.frames[mask])}
    for name in MODELS:
        workdir = runs / f"{dataset}_{name}"
        if not (workdir / "checkpoints").is_dir():
            continue
        model = resolve.load_model(f"experiments/sequence_models.py:{name}")
        run, restored = resolve.open_run(workdir, model, manual_dir=polyphonic)
        rolls, probabilities = generation.sample_rolls(run.model.module, restored.state.eval_params,
                                                       jax.random.key(0), 20, num_frames)
        panels[f"{name.upper()} (epoch {restored.epoch}): a draw"] = np.asarray(rolls[0])
        if name == "vrnn":
            panels["VRNN: probability of each key given the draws before"] = np.asarray(probabilities[0])
        stats[name] = statistics(np.asarray(rolls).reshape(-1, rolls.shape[-1]))
    return panels, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/sequences"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/sequences"))
    parser.add_argument("--polyphonic", default="../shared/data/polyphonic")
    parser.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()
    report = {}
    for dataset in ("jsb_chorales", "nottingham"):
        path = args.out / f"piano_rolls_{dataset}.png"
        panels, report[dataset] = rolls_of(dataset, args.runs, args.polyphonic, args.frames)
        figures.save_piano_rolls(path, panels)
        print(path)
    (args.out / "piano_rolls.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
