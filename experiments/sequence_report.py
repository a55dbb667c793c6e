"""The tables of the polyphonic-music study (docs/studies.md, section 7) from the runs of experiments/sequences.sh:
per dataset, each model's test NELBO and importance-weighted NLL in nats per time step (total over the test split
divided by its frames, with standard errors), its KL per time step and the epoch of its best validation NELBO.

    python experiments/sequence_report.py [--results experiments/results/sequences]

Writes `results.md` and `results.csv` beside the runs' folders and prints the Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

MODELS = {"rnn": "GRU baseline (no latents)", "vrnn": "VRNN", "srnn": "SRNN"}
COLUMNS = ("dataset", "model", "epoch", "nelbo_per_frame", "nelbo_per_frame_stderr", "nll_per_frame",
           "nll_per_frame_stderr", "kl_per_frame", "iwae_k", "num_frames", "epochs_run", "val_nelbo_per_frame_best",
           "val_nelbo_per_frame_last")
VALIDATION = {"jsb_chorales": (76, 4_602), "nottingham": (173, 45_513)}  # sequences, frames of the validation split


def rows(results: Path) -> list[dict]:
    """One row per run folder `<dataset>_<model>` holding an `eval.jsonl`: its last evaluation line."""
    found = []
    for path in sorted(results.glob("*/eval.jsonl")):
        line = json.loads(path.read_text().splitlines()[-1])
        model = path.parent.name.rsplit("_", 1)[1]
        epochs = [json.loads(text) for text in (path.parent / "metrics.jsonl").read_text().splitlines()]
        sequences, frames = VALIDATION[line["dataset"]]
        per_frame = {epoch["epoch"]: epoch["val_nelbo"] * sequences / frames for epoch in epochs}
        found.append({"dataset": line["dataset"], "model": MODELS.get(model, model), "epoch": line["epoch"],
                      **{key: line[key] for key in COLUMNS[3:] if key in line},
                      "kl_per_frame": line["kl"] * line["num_examples"] / line["num_frames"],
                      "epochs_run": len(epochs), "val_nelbo_per_frame_best": per_frame[line["epoch"]],
                      "val_nelbo_per_frame_last": per_frame[epochs[-1]["epoch"]]})
    return found


def markdown(table: list[dict]) -> str:
    """A Markdown table per dataset."""
    lines = []
    for dataset in dict.fromkeys(row["dataset"] for row in table):
        lines += [f"### {dataset}", "",
                  "| model | best epoch | NELBO (nats/step) | NLL, IWAE (nats/step) | K | KL (nats/step) "
                  "| validation NELBO/step, best / last epoch |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in (r for r in table if r["dataset"] == dataset):
            lines.append(f"| {row['model']} | {row['epoch']} | {row['nelbo_per_frame']:.3f} ± "
                         f"{row['nelbo_per_frame_stderr']:.3f} | {row['nll_per_frame']:.3f} ± "
                         f"{row['nll_per_frame_stderr']:.3f} | {row['iwae_k']} | {row['kl_per_frame']:.3f} | "
                         f"{row['val_nelbo_per_frame_best']:.3f} (epoch {row['epoch']}) / "
                         f"{row['val_nelbo_per_frame_last']:.3f} (epoch {row['epochs_run']}) |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("experiments/results/sequences"))
    args = parser.parse_args()
    table = rows(args.results)
    with open(args.results / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    text = markdown(table)
    (args.results / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
