"""Piano rolls of the polyphonic-music study (docs/studies.md, section 7): for each dataset, a test sequence and
rolls drawn by each model (ancestral sampling from its best checkpoint, `vae_jax.generation.sample_rolls`), and the
probability of each key under the VRNN given the draws before it.

    python experiments/piano_rolls.py [--runs runs/sequences] [--out experiments/results/sequences]

Writes `<out>/piano_rolls_<dataset>.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from vae_jax import data, figures, generation, resolve

MODELS = ("rnn", "vrnn", "srnn")


def rolls_of(dataset: str, runs: Path, polyphonic: str, num_frames: int) -> dict[str, np.ndarray]:
    """The panels of one dataset's figure: its first test sequence and a draw of each trained model."""
    test = data.load_sequences(dataset, "test", manual_dir=polyphonic)
    panels = {f"{dataset}: test sequence 0": test.frames[0, :min(num_frames, test.lengths[0])]}
    for name in MODELS:
        workdir = runs / f"{dataset}_{name}"
        if not (workdir / "checkpoints").is_dir():
            continue
        model = resolve.load_model(f"experiments/sequence_models.py:{name}")
        run, restored = resolve.open_run(workdir, model, manual_dir=polyphonic)
        rolls, probabilities = generation.sample_rolls(run.model.module, restored.state.eval_params,
                                                       jax.random.key(0), 1, num_frames)
        panels[f"{name.upper()} (epoch {restored.epoch}): a draw"] = np.asarray(rolls[0])
        if name == "vrnn":
            panels["VRNN: probability of each key given the draws before"] = np.asarray(probabilities[0])
    return panels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/sequences"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/sequences"))
    parser.add_argument("--polyphonic", default="../shared/data/polyphonic")
    parser.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()
    for dataset in ("jsb_chorales", "nottingham"):
        path = args.out / f"piano_rolls_{dataset}.png"
        figures.save_piano_rolls(path, rolls_of(dataset, args.runs, args.polyphonic, args.frames))
        print(path)


if __name__ == "__main__":
    main()
