"""The tables of the polyphonic-music study (docs/studies.md, section 7) from the runs of experiments/sequences.sh:
per dataset, each model's test NELBO and NLL bounds, importance-weighted and (where evaluated) FIVO, in nats per time
step (total over the test split divided by its frames, with standard errors), its KL per time step and the epoch of
its best validation NELBO. A run folder is `<dataset>_<model>[_<variant>...]`, each variant a name of `VARIANTS`.

    python experiments/sequence_report.py [--results experiments/results/sequences]

Writes `results.md` and `results.csv` beside the runs' folders and prints the Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from vae_jax import data

MODELS = {"rnn": "GRU baseline (no latents)", "vrnn": "VRNN", "srnn": "SRNN", "dmm": "deep Markov model"}
VARIANTS = {"large": "GRUs and MLPs of 300, z_t of 100", "wd0.1": "AdamW, weight decay 0.1",
            "600epochs": "600 epochs"}
COLUMNS = ("dataset", "model", "epoch", "nelbo_per_frame", "nelbo_per_frame_stderr", "nll_per_frame",
           "nll_per_frame_stderr", "kl_per_frame", "iwae_k", "num_frames", "epochs_run", "val_nelbo_per_frame_best",
           "val_nelbo_per_frame_last", "fivo_nll_per_frame", "fivo_nll_per_frame_stderr")


def label(run: str, dataset: str) -> str:
    """The table's name of the run folder `run` of `dataset`: its model, then its variants."""
    model, *variants = run.removeprefix(f"{dataset}_").split("_")
    return ", ".join([MODELS[model]] + [VARIANTS[variant] for variant in variants])


def rows(results: Path) -> list[dict]:
    """One row per run folder `<dataset>_<model>` holding an `eval.jsonl`: its last importance-weighted evaluation
    line, and the NLL of its last FIVO line with the same K (None without one)."""
    found = []
    for path in sorted(results.glob("*/eval.jsonl")):
        evaluations = [json.loads(text) for text in path.read_text().splitlines()]
        line = [e for e in evaluations if e["estimator"] == "iwae"][-1]
        fivo = [e for e in evaluations if e["estimator"] == "fivo" and e["iwae_k"] == line["iwae_k"]]
        epochs = [json.loads(text) for text in (path.parent / "metrics.jsonl").read_text().splitlines()]
        description = data.describe(line["dataset"])
        sequences, frames = description.split_sizes[1], description.split_frames[1]  # the validation split's
        per_frame = {epoch["epoch"]: epoch["val_nelbo"] * sequences / frames for epoch in epochs}
        found.append({"dataset": line["dataset"], "model": label(path.parent.name, line["dataset"]),
                      "epoch": line["epoch"],
                      **{key: line[key] for key in COLUMNS[3:] if key in line},
                      "kl_per_frame": line["kl"] * line["num_examples"] / line["num_frames"],
                      "epochs_run": len(epochs), "val_nelbo_per_frame_best": per_frame[line["epoch"]],
                      "val_nelbo_per_frame_last": per_frame[epochs[-1]["epoch"]],
                      "fivo_nll_per_frame": fivo[-1]["nll_per_frame"] if fivo else None,
                      "fivo_nll_per_frame_stderr": fivo[-1]["nll_per_frame_stderr"] if fivo else None})
    return sorted(found, key=lambda row: (row["dataset"], list(MODELS.values()).index(row["model"].split(", ")[0]),
                                          row["model"]))


def markdown(table: list[dict]) -> str:
    """A Markdown table per dataset."""
    lines = []
    for dataset in dict.fromkeys(row["dataset"] for row in table):
        lines += [f"### {dataset}", "",
                  "| model | best epoch | NELBO (nats/step) | NLL, IWAE (nats/step) | NLL, FIVO (nats/step) | K "
                  "| KL (nats/step) | validation NELBO/step, best / last epoch |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in (r for r in table if r["dataset"] == dataset):
            lines.append(f"| {row['model']} | {row['epoch']} | {row['nelbo_per_frame']:.3f} ± "
                         f"{row['nelbo_per_frame_stderr']:.3f} | {row['nll_per_frame']:.3f} ± "
                         f"{row['nll_per_frame_stderr']:.3f} | {_fivo(row)} | {row['iwae_k']} | "
                         f"{row['kl_per_frame']:.3f} | "
                         f"{row['val_nelbo_per_frame_best']:.3f} (epoch {row['epoch']}) / "
                         f"{row['val_nelbo_per_frame_last']:.3f} (epoch {row['epochs_run']}) |")
        lines.append("")
    return "\n".join(lines)


def _fivo(row: dict) -> str:
    """The FIVO cell of a row: its NLL ± standard error, or a dash where none was evaluated."""
    if row["fivo_nll_per_frame"] is None:
        return "—"
    return f"{row['fivo_nll_per_frame']:.3f} ± {row['fivo_nll_per_frame_stderr']:.3f}"


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
