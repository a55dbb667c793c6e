"""Study 8's tables and figure, from the committed results of `experiments/sample_quality.sh` and the GAN's
(`experiments/gan.py score`).

Reads `experiments/results/samples/<dataset>/<run>/eval.jsonl` (the K = 1000 NLL line on the test split and the
sample-quality lines) and `experiments/results/gan/<dataset>/eval.jsonl`; writes, per dataset,
`experiments/results/samples/<dataset>/results.csv`, `results.md` and `samples.png` (the first 36 scored images of
each row, side by side). Its first row is the data against itself: the first 10,000 training images, binarized as
the references are (with another key), scored against the same references; no model can be expected to beat it.

Usage: python experiments/sample_quality_report.py [--datasets mnist fashion_mnist]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from vae_jax import data, features, figures, samples

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # the original files, where TFDS has no cache yet
RUNS = {"vae": "VAE", "vampprior": "VampPrior", "hvae_vampprior": "HVAE + VampPrior"}
COLUMNS = ("model", "sampled", "nll", "nll_stderr", "fid", "kid", "kid_stderr", "precision", "recall", "density",
           "coverage", "grid")
GRID_CELLS = 6  # a 6 x 6 corner of each 10 x 10 grid in the figure


def json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file (none if it does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _grid_tag(sampled: str) -> str:
    """The `grid_<tag>.png` that `sample_quality.sh` saved for a line's `sampled`."""
    if sampled.startswith("prior at temperature"):
        return "t" + sampled.rsplit(" ", 1)[-1]
    return {"prior": "prior"}.get(sampled, "gmm" if sampled.startswith("ex-post") else "two_stage")


def data_row(dataset: str, num_images: int = 10_000) -> dict:
    """The measures of `num_images` training images against the references of `vae_jax eval --sample-quality
    --seed 0` (the first `num_images` test images, binarized with `fold_in(key(0), 1)`); the training images are
    binarized with `fold_in(key(0), 4)`. Writes their grid as `data.png`."""
    description = data.describe(dataset)
    images = {split: data.load_split(dataset, split, manual_dir=SHARED / dataset)[:num_images]
              for split in ("train", "test")}
    real = samples.reference_images(images["test"], description, jax.random.fold_in(jax.random.key(0), 1))
    fake = samples.reference_images(images["train"], description, jax.random.fold_in(jax.random.key(0), 4))
    grid = RESULTS / "samples" / dataset / "data.png"
    figures.save_png(grid, figures.image_grid(fake[:100], 10, description.image_shape[:2]))
    return {"model": "data", "sampled": f"{num_images:,} training images", "nll": None, "nll_stderr": None,
            "grid": grid, **samples.measure(real, fake, features.load_extractor(dataset))}


def rows(dataset: str) -> list[dict]:
    """One row per scored sampler: the data's, the VAEs' (with their model's NLL), then the GAN's."""
    table = [data_row(dataset)]
    for run, name in RUNS.items():
        folder = RESULTS / "samples" / dataset / run
        lines = json_lines(folder / "eval.jsonl")
        nll = [line for line in lines if line.get("iwae_k") == 1000 and line["split"] == "test"]
        scored = {line["sampled"]: line for line in lines if line.get("estimator") == "sample quality"}
        for sampled, line in scored.items():  # the last line of each sampler
            table.append({"model": name, "sampled": sampled, "nll": nll[-1]["nll"] if nll else None,
                          "nll_stderr": nll[-1]["nll_stderr"] if nll else None,
                          "grid": folder / f"grid_{_grid_tag(sampled)}.png", **line})
    gan = RESULTS / "gan" / dataset
    for line in json_lines(gan / "eval.jsonl")[-1:]:
        table.append({"model": "DCGAN", "nll": None, "nll_stderr": None, "grid": gan / "grid.png", **line})
    return table


def _cell(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_tables(dataset: str, table: list[dict]) -> None:
    """`results.csv` and `results.md` of one dataset."""
    out = RESULTS / "samples" / dataset
    with open(out / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, "grid": Path(row["grid"]).relative_to(RESULTS)} for row in table)
    lines = ["| model | sampled | NLL (nats) | FID | KID | precision | recall | density | coverage |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table:
        nll = "" if row["nll"] is None else f"{row['nll']:.2f} ± {row['nll_stderr']:.2f}"
        measures = " | ".join(_cell(row[name], 3) for name in ("precision", "recall", "density", "coverage"))
        lines.append(f"| {row['model']} | {row['sampled']} | {nll} | {row['fid']:.2f} | "
                     f"{row['kid']:.2f} ± {row['kid_stderr']:.2f} | {measures} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"## {dataset}\n\n" + "\n".join(lines) + "\n")


def _short(sampled: str) -> str:
    """A figure title's version of a row's `sampled`."""
    for long, short in (("prior at temperature ", "prior, T = "), ("ex-post Gaussian mixture", "ex-post GMM"),
                        (" on q(z) of the training split", ""), (" (best validation FID)", "")):
        sampled = sampled.replace(long, short)
    return sampled


def save_figure(dataset: str, table: list[dict]) -> None:
    """`samples.png`: a 6 x 6 corner of each row's grid of scored images, titled by its model and sampler."""
    columns = 4
    figure = Figure(figsize=(3 * columns, 3.3 * -(-len(table) // columns)))
    for number, row in enumerate(table, start=1):
        axes = figure.add_subplot(-(-len(table) // columns), columns, number)
        picture = np.asarray(Image.open(row["grid"]))
        side = GRID_CELLS * (picture.shape[0] - 1) // 10 + 1
        axes.imshow(picture[:side, :side], cmap="gray", vmin=0, vmax=255)
        axes.set_title(f"{row['model']}\n{_short(row['sampled'])}\nFID {row['fid']:.1f}", fontsize=8)
        axes.axis("off")
    figure.tight_layout()
    figure.savefig(RESULTS / "samples" / dataset / "samples.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    for dataset in parser.parse_args().datasets:
        table = rows(dataset)
        write_tables(dataset, table)
        save_figure(dataset, table)


if __name__ == "__main__":
    main()
