"""Tables and figure of the information-bottleneck study (docs/studies.md, "The information bottleneck"), per dataset.

Reads each run's committed evaluation (`experiments/results/bottleneck/<dataset>/<run>/eval.jsonl`, written by
`train_and_eval.sh`: the rate R = KL, the distortion D = reconstruction loss, the NELBO and the K-sample NLL) and its
bottleneck numbers (`vae_jax.bottleneck.read_run`: I_q, the marginal KL, active units, the linear probe's accuracy),
which it computes from the run's checkpoint in `--runs-dir` (the evaluated epoch) and keeps beside the evaluation as
`bottleneck.json`; with that file committed, the report is remade without the runs. Writes `results.csv`,
`results.md` and `bottleneck.png` in `experiments/results/bottleneck/<dataset>/`.

H, the entropy of the (dynamically binarized) data, is unknown. H_hat = the best test NLL of the dataset's runs is
an upper bound on H (up to its Monte-Carlo error), so H_hat - D is an estimate of Alemi et al.'s lower bound
H - D <= I(x; z), not a guaranteed one; floor - D, with the entropy of the binarization's draws as the floor
(H >= H(x | grey levels)), is a guaranteed lower bound, and a loose one.

Usage: python experiments/bottleneck_report.py DATASET [--runs-dir DIR] [--iwae-k K] [--data-dir DIR] [--manual-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from study_report import draw_entropy, json_lines, nll_line_on_test_split

from vae_jax import bottleneck, data

RESULTS = Path(__file__).resolve().parent / "results" / "bottleneck"
COLUMNS = ("run", "setting", "beta", "z", "rate", "distortion", "nelbo", "nll", "h_minus_d", "floor_minus_d",
           "i_q", "log_n", "marginal_kl", "active_units", "probe_accuracy", "probe_l2", "probe_accuracy_active",
           "best_epoch", "epochs")


def bottleneck_numbers(run_dir: Path, epoch: int, runs_dir: Path | None, data_dir: str, manual_dir: str | None) -> dict:
    """The run's `bottleneck.json` if it is of `epoch`, else `bottleneck.read_run` of its checkpoint (then kept)."""
    cached = run_dir / "bottleneck.json"
    if cached.exists():
        numbers = json.loads(cached.read_text())
        if numbers["epoch"] == epoch and "probe_accuracy_active" in numbers:
            return numbers
    if runs_dir is None or not (runs_dir / run_dir.name).exists():
        raise SystemExit(f"{cached} is missing or not of epoch {epoch}, and no run in --runs-dir to compute it from")
    numbers = bottleneck.read_run(runs_dir / run_dir.name, epoch=epoch, data_dir=data_dir, manual_dir=manual_dir)
    cached.write_text(json.dumps(numbers) + "\n")
    return numbers


def collect(dataset: str, iwae_k: int, runs_dir: Path | None, data_dir: str, manual_dir: str | None) -> list[dict]:
    """One row per evaluated run, ordered: the beta sweep (z = 10), then the other latent sizes (beta = 1)."""
    rows = []
    for eval_file in sorted((RESULTS / dataset).glob("*/eval.jsonl")):
        result = nll_line_on_test_split(eval_file.parent, iwae_k)
        numbers = bottleneck_numbers(eval_file.parent, result["epoch"], runs_dir, data_dir, manual_dir)
        config = result["config"]
        beta, z = config["kl_weight"], config["model"]["latent_dim"]
        rows.append({
            "run": eval_file.parent.name, "setting": f"z = {z}, beta = {beta:g}", "beta": beta, "z": z,
            "rate": result["kl"], "distortion": result["rec"], "nelbo": result["nelbo"], "nll": result["nll"],
            "nll_stderr": result["nll_stderr"], "iwae_k": iwae_k, "i_q": numbers["mutual_information"],
            "log_n": numbers["log_n"], "marginal_kl": numbers["marginal_kl"], "active_units": result["active_units"],
            "probe_accuracy": numbers["probe_accuracy"], "probe_l2": numbers["probe_l2"],
            "probe_accuracy_active": numbers["probe_accuracy_active"],
            "best_epoch": result["epoch"], "epochs": len(json_lines(eval_file.parent / "metrics.jsonl")),
            "floor": draw_entropy(result),
        })
    entropy = min(row["nll"] for row in rows)  # H_hat: the best NLL, an upper bound on H
    for row in rows:
        row["h_minus_d"] = entropy - row["distortion"]
        row["floor_minus_d"] = None if row["floor"] is None else row["floor"] - row["distortion"]
    return sorted(rows, key=lambda row: (row["z"] != 10, row["z"], row["beta"]))


def write_tables(dataset: str, rows: list[dict]) -> str:
    """results.csv and results.md; returns the Markdown."""
    def cell(value: object) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    with open(RESULTS / dataset / "results.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        writer.writerows([[cell(row[name]) for name in COLUMNS] for row in rows])
    entropy = min(row["nll"] for row in rows)
    lines = [f"{dataset}, dynamically binarized; whole test split (N = 10,000, log N = {rows[0]['log_n']:.2f}); "
             f"NLL with K = {rows[0]['iwae_k']}; H_hat = best test NLL = {entropy:.2f}; floor of the draws = "
             f"{rows[0]['floor']:.2f}\n\n",
             "| setting | R: KL | D: rec | NELBO | test NLL | H_hat - D | I_q | marginal KL | active units | "
             "probe accuracy | probe, active units only | best epoch |\n",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['rate']:.2f} | {r['distortion']:.2f} | {r['nelbo']:.2f} | "
                     f"{r['nll']:.2f} ± {r['nll_stderr']:.2f} | {r['h_minus_d']:.2f} | {r['i_q']:.2f} | "
                     f"{r['marginal_kl']:.2f} | {r['active_units']} | {100 * r['probe_accuracy']:.2f}% | "
                     f"{100 * r['probe_accuracy_active']:.2f}% | "
                     f"{r['best_epoch']} of {r['epochs']} |\n")
    text = "".join(lines)
    (RESULTS / dataset / "results.md").write_text(text)
    return text


def plot(dataset: str, rows: list[dict]) -> None:
    """Against the rate R: the distortion, the probe's accuracy, and the information (I_q, H_hat - D, R itself)."""
    figure = Figure(figsize=(15, 4.5), layout="constrained")
    panels = figure.subplots(1, 3)
    sweeps = {"beta sweep (z = 10)": [r for r in rows if r["z"] == 10],
              "latent size (beta = 1)": sorted((r for r in rows if r["beta"] == 1), key=lambda r: r["z"])}
    for (label, sweep), marker in zip(sweeps.items(), ("o-", "s--"), strict=True):
        rate = [r["rate"] for r in sweep]
        panels[0].plot(rate, [r["distortion"] for r in sweep], marker, label=label)
        panels[1].plot(rate, [100 * r["probe_accuracy"] for r in sweep], marker, label=label)
        panels[2].plot(rate, [r["i_q"] for r in sweep], marker, label=f"I_q, {label}")
        for r in sweep:
            name = f"beta {r['beta']:g}" if label.startswith("beta") else f"z {r['z']}"
            if name != "z 10":  # the shared run is named once, as beta 1
                panels[1].annotate(name, (r["rate"], 100 * r["probe_accuracy"]), fontsize=7)
    shared = next(r for r in rows if r["z"] == 10 and r["beta"] == 1)
    for axes, value in zip(panels, (shared["distortion"], 100 * shared["probe_accuracy"], shared["i_q"]), strict=True):
        axes.plot([shared["rate"]], [value], "*", color="black", markersize=14, label="beta = 1, z = 10 (the ELBO)")
    rate = np.linspace(0, max(r["rate"] for r in rows) * 1.05, 50)
    entropy = min(r["nll"] for r in rows)
    panels[0].plot(rate, entropy - rate, ":", color="grey", label="D = H_hat - R (the ELBO's frontier)")
    panels[2].plot(rate, rate, ":", color="grey", label="I = R (upper bound)")
    panels[2].axhline(rows[0]["log_n"], color="red", linestyle=":", label="log N (I_q's ceiling)")
    panels[2].plot([r["rate"] for r in rows], [r["h_minus_d"] for r in rows], "x", color="grey",
                   label="H_hat - D (estimated lower bound)")
    panels[0].set(xlabel="rate R = KL (nats)", ylabel="distortion D (nats)", title=f"{dataset}: rate-distortion")
    panels[1].set(xlabel="rate R (nats)", ylabel="test accuracy (%)", title="linear probe on the posterior means")
    panels[2].set(xlabel="rate R (nats)", ylabel="nats", title="mutual information I(x; z)")
    for axes in panels:
        axes.legend(fontsize=7)
    figure.savefig(RESULTS / dataset / "bottleneck.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist", "fashion_mnist"])
    parser.add_argument("--runs-dir", type=Path, help="the runs, to compute a missing bottleneck.json")
    parser.add_argument("--iwae-k", type=int, default=100)
    parser.add_argument("--data-dir", default=str(data.DEFAULT_DATA_DIR))
    parser.add_argument("--manual-dir", help="the dataset's original files (default ../shared/data/<dataset>)")
    args = parser.parse_args()
    manual_dir = args.manual_dir or str(Path(__file__).resolve().parents[2] / "shared" / "data" / args.dataset)
    rows = collect(args.dataset, args.iwae_k, args.runs_dir, args.data_dir, manual_dir)
    print(write_tables(args.dataset, rows), end="")
    plot(args.dataset, rows)


if __name__ == "__main__":
    main()
