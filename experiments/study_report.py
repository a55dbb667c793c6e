"""Tables and figures of the studies of issue #3, from the committed results of their runs.

Reads `experiments/results/<study>/<run>/{eval.jsonl,metrics.jsonl}` (written by `train_and_eval.sh`) and writes
`experiments/results/<study>/results.csv`, `results.md` (the same table in Markdown) and `<study>.png`.

Usage: python experiments/study_report.py {latent_size,kl_weight,objectives_priors,binarization,architecture,datasets}
       [--iwae-k K]   (the K of the eval lines to report; 1000 for the studies, 100 for architecture)
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from vae_jax import data

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("run", "setting", "test_nelbo", "nelbo_stderr", "rec", "kl", "nll", "nll_stderr", "iwae_k",
           "active_units", "best_epoch", "epochs")
DATASET_COLUMNS = ("nll_bpd", "draw_entropy")  # the datasets study's own


def json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def nll_line_on_test_split(run_dir: Path, iwae_k: int = 5000, estimator: str = "iwae") -> dict:
    """The last `eval --split test --iwae-samples K [--bound fivo]` line of a committed run: the whole test split,
    one-sample ELBO, the `estimator`'s bound (lines with more ELBO samples, e.g. of `gaps`, are left out)."""
    return [line for line in json_lines(run_dir / "eval.jsonl")
            if line.get("iwae_k") == iwae_k and line["split"] == "test" and line.get("elbo_samples", 1) == 1
            and line.get("estimator", "iwae") == estimator][-1]


def draw_entropy(result: dict) -> float | None:
    """Of a dynamically binarized test split: the mean over its images of sum_d H(g_d), the entropy of the Bernoulli
    draws of grey levels g in [0, 1] (nats), a floor under any model's expected NLL (H(x) >= H(x | g)); else None."""
    if result["binarization"] != "dynamic":
        return None
    grey = data.load_split(result["dataset"], result["split"]).astype(np.float64) / 255
    inside = np.clip(grey, 1e-300, 1.0)  # 0 log 0 = 0 at both ends
    entropy = -(grey * np.log(inside) + (1 - grey) * np.log(np.clip(1 - grey, 1e-300, 1.0)))
    return float(entropy.sum(axis=1).mean())


def _setting(study: str, config: dict) -> str:
    """The value of the studied variable, as a label."""
    if study == "latent_size":
        return f"z = {config['model']['latent_dim']}"
    if study == "kl_weight":
        return f"beta = {config['kl_weight']:g}"
    if study == "architecture":
        model = config["model"]
        dense = "-".join(map(str, model["encoder_hidden"]))
        if model.get("architecture", "mlp") == "conv":
            return f"conv {'-'.join(map(str, model['conv_channels']))} + dense {dense}"
        return f"MLP {dense}"
    if study == "binarization":
        return "dynamic (mnist)" if config["dataset"] == "mnist" else "static (binarized_mnist)"
    if study == "datasets":
        form = {"8bit": "8 bits", "": "static" if config["dataset"] == "binarized_mnist" else "dynamic"}
        return f"{config['dataset']}, {form[config.get('data_form', '')]}"
    objective = "IWAE" if config["objective"] == "iwae" else "VAE"
    samples = f", K = {config['num_samples']}" if config["objective"] == "iwae" else ""
    prior = {"normal": "N(0, I) prior", "mixture": "mixture prior (GMVAE)", "vamp": "VampPrior"}
    return f"{objective}{samples}, {prior[config['model'].get('prior', 'normal')]}"


def collect(study: str, iwae_k: int) -> list[dict]:
    """One row per run of the study: its last eval line with a K-sample NLL, and its per-epoch metrics."""
    rows = []
    for eval_file in sorted((RESULTS / study).glob("*/eval.jsonl")):
        run_dir = eval_file.parent
        evals = [line for line in json_lines(eval_file) if line.get("iwae_k") == iwae_k]
        if not evals:
            continue
        result, metrics = evals[-1], json_lines(run_dir / "metrics.jsonl")
        rows.append({
            "run": run_dir.name, "setting": _setting(study, result["config"]),
            "test_nelbo": result["nelbo"], "nelbo_stderr": result["nelbo_stderr"], "rec": result["rec"],
            "kl": result["kl"], "nll": result["nll"], "nll_stderr": result["nll_stderr"], "iwae_k": result["iwae_k"],
            "active_units": result["active_units"], "best_epoch": result["epoch"], "epochs": len(metrics),
            # bits per dimension: of a grey level in 8 bits, of a binary pixel otherwise
            "nll_bpd": result["nll"] / (data.describe(result["dataset"]).num_pixels * np.log(2)),
            "draw_entropy": draw_entropy(result) if study == "datasets" else None,
            "config": result["config"], "metrics": metrics, "dir": run_dir,
        })
    return sorted(rows, key=lambda row: _order(study, row))


def _order(study: str, row: dict) -> tuple:
    """Rows in the order of the studied variable (objectives: the VAE first, then IWAE, then the priors)."""
    config = row["config"]
    if study == "latent_size":
        return (config["model"]["latent_dim"],)
    if study == "kl_weight":
        return (config["kl_weight"],)
    if study == "datasets":
        return (config.get("data_form") == "8bit", config["dataset"] != "binarized_mnist",
                config["dataset"] == "fashion_mnist")
    return (config["dataset"] != "binarized_mnist", config["model"].get("architecture", "mlp") != "mlp",
            config["model"].get("prior", "normal") != "normal", config["objective"], config["num_samples"])


def write_tables(study: str, rows: list[dict]) -> None:
    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    columns = COLUMNS + DATASET_COLUMNS * (study == "datasets")
    with open(RESULTS / study / "results.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        writer.writerows([[cell(row[name]) for name in columns] for row in rows])
    bits = study == "datasets"  # per dimension too, and the floor of the draws: the data differ in size and kind
    header = ("| setting | test NELBO | rec | KL | test NLL (K) |" + " NLL (bits/dim) | floor of the draws |" * bits
              + " active units | best epoch |\n| --- | --- | --- | --- | --- |" + " --- | --- |" * bits
              + " --- | --- |\n")
    lines = []
    for r in rows:
        floor = "–" if r["draw_entropy"] is None else f"{r['draw_entropy']:.2f}"
        per_dim = f" {r['nll_bpd']:.3f} | {floor} |" if bits else ""
        lines.append(f"| {r['setting']} | {r['test_nelbo']:.2f} ± {r['nelbo_stderr']:.2f} | {r['rec']:.2f} | "
                     f"{r['kl']:.2f} | {r['nll']:.2f} ± {r['nll_stderr']:.2f} ({r['iwae_k']}) |{per_dim} "
                     f"{r['active_units']} | {r['best_epoch']} of {r['epochs']} |\n")
    (RESULTS / study / "results.md").write_text(header + "".join(lines))
    print(header + "".join(lines), end="")


def _validation_curves(axes: Axes, rows: list[dict]) -> None:
    for row in rows:
        epochs = [line["epoch"] for line in row["metrics"]]
        axes.plot(epochs, [line["val_nelbo"] for line in row["metrics"]], label=row["setting"])
    axes.set(xlabel="epoch", ylabel="validation NELBO (nats)", title="learning curves")
    axes.legend(fontsize=7)


def plot_latent_size(figure: Figure, rows: list[dict]) -> None:
    z = [r["config"]["model"]["latent_dim"] for r in rows]
    left, right = figure.subplots(1, 2)
    left.plot(z, [r["test_nelbo"] for r in rows], "o-", label="test NELBO")
    left.plot(z, [r["nll"] for r in rows], "s-", label=f"test NLL (K = {rows[0]['iwae_k']})")
    left.set(xscale="log", xlabel="latent size z", ylabel="nats", title="bound and likelihood")
    left.legend()
    right.plot(z, [r["rec"] for r in rows], "o-", label="reconstruction")
    right.plot(z, [r["kl"] for r in rows], "s-", label="KL")
    for size, row in zip(z, rows, strict=True):
        right.annotate(f"{row['active_units']} active", (size, row["kl"]), fontsize=7, textcoords="offset points",
                       xytext=(0, 6), ha="center")
    right.set(xscale="log", xlabel="latent size z", ylabel="nats", title="the two terms, and active units")
    right.legend()
    for axes in (left, right):
        axes.set_xticks(z, [str(size) for size in z])
        axes.minorticks_off()


def plot_kl_weight(figure: Figure, rows: list[dict]) -> None:
    grid = figure.add_gridspec(2, len(rows), height_ratios=(3, 2))
    curve = figure.add_subplot(grid[0, :])
    curve.plot([r["kl"] for r in rows], [r["rec"] for r in rows], "o-")
    for row in rows:
        curve.annotate(row["setting"], (row["kl"], row["rec"]), textcoords="offset points", xytext=(5, 5))
    curve.set(xlabel="rate: KL(q(z|x) || p(z)) (nats)", ylabel="distortion: reconstruction loss (nats)",
              title="rate against distortion on the test split")
    for column, row in enumerate(rows):
        axes = figure.add_subplot(grid[1, column])
        axes.imshow(np.asarray(Image.open(row["dir"] / "samples.png"))[:117, :117], cmap="gray")
        axes.set_title(f"{row['setting']}: samples", fontsize=8)
        axes.axis("off")


def plot_curves_and_nll(figure: Figure, rows: list[dict]) -> None:
    left, right = figure.subplots(1, 2)
    _validation_curves(left, rows)
    positions = np.arange(len(rows))
    right.barh(positions, [r["nll"] for r in rows], xerr=[r["nll_stderr"] for r in rows])
    right.set_yticks(positions, [r["setting"] for r in rows], fontsize=7)
    low = min(r["nll"] for r in rows)
    right.set_xlim(low - 5, max(r["nll"] for r in rows) + 2)
    right.set(xlabel=f"test NLL (nats, K = {rows[0]['iwae_k']})", title="test negative log-likelihood")


def plot_datasets(figure: Figure, rows: list[dict]) -> None:
    """Top: the KL (nats) and the test NLL per dimension of each dataset; bottom: each model's samples."""
    grid = figure.add_gridspec(2, len(rows), height_ratios=(3, 2))
    kl, nll = figure.add_subplot(grid[0, : len(rows) // 2]), figure.add_subplot(grid[0, len(rows) // 2:])
    positions = np.arange(len(rows))
    kl.barh(positions, [r["kl"] for r in rows])
    for position, row in zip(positions, rows, strict=True):
        kl.annotate(f"{row['active_units']} active", (row["kl"], position), fontsize=7, xytext=(3, -3),
                    textcoords="offset points")
    kl.set_yticks(positions, [r["setting"] for r in rows], fontsize=7)
    kl.set(xlabel="KL(q(z|x) || p(z)) on the test split (nats)", title="what the code carries")
    nll.barh(positions, [r["nll_bpd"] for r in rows], label="test NLL")
    floors = [(p, r["draw_entropy"] / r["nll"] * r["nll_bpd"]) for p, r in zip(positions, rows, strict=True)
              if r["draw_entropy"] is not None]  # in the NLL's bits per dimension
    if floors:
        nll.plot([f for _, f in floors], [p for p, _ in floors], "k|", markersize=22, label="floor of the draws")
        nll.legend(fontsize=7)
    nll.set_yticks(positions, [""] * len(rows))
    for axes in (kl, nll):
        axes.invert_yaxis()  # the table's order, top down
    nll.set(xlabel=f"test NLL per dimension (bits, K = {rows[0]['iwae_k']})", title="what is left per pixel")
    for column, row in enumerate(rows):
        axes = figure.add_subplot(grid[1, column])
        axes.imshow(np.asarray(Image.open(row["dir"] / "samples.png"))[:117, :117], cmap="gray")
        axes.set_title(row["setting"], fontsize=7)
        axes.axis("off")


PLOTS: dict[str, Callable[[Figure, list[dict]], None]] = {
    "datasets": plot_datasets,
    "latent_size": plot_latent_size,
    "kl_weight": plot_kl_weight,
    "architecture": plot_curves_and_nll,
    "binarization": plot_curves_and_nll,
    "objectives_priors": plot_curves_and_nll,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(PLOTS))
    parser.add_argument("--iwae-k", type=int, default=None, help="default: 100 for architecture, else 1000")
    args = parser.parse_args()
    study = args.study
    rows = collect(study, args.iwae_k or (100 if study == "architecture" else 1000))
    write_tables(study, rows)
    figure = Figure(figsize=(11, 4.5), dpi=110, layout="constrained")
    PLOTS[study](figure, rows)
    figure.savefig(RESULTS / study / f"{study}.png")


if __name__ == "__main__":
    main()
