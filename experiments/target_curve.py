"""How far the best runs here are from the issue's NLL targets, and where their learning curves are heading.

Reads `experiments/results/<run>/{metrics.jsonl,eval.jsonl}` of the runs named below, and writes
`experiments/results/target_curve.json` (each run's test NLL with K = 5000, its distance to the targets, and the
validation NELBO's fall over its last 10 epochs) and `target_curve.png` (validation NELBO per epoch, with the
test NLL at the epoch evaluated and the targets as lines). A run trained on from another's checkpoint (`init_from`)
is drawn from the epoch it started at.

Usage: python experiments/target_curve.py
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from study_report import RESULTS, json_lines, nll_line_on_test_split

RUNS = {"default": "standard VAE (default preset)",
        "default_vampprior": "VampPrior (default + model.prior=vamp)",
        "vampprior": "VampPrior, one layer (vampprior preset)",
        "hvae_vampprior": "HVAE + VampPrior (hvae_vampprior preset)",
        "vampprior_iwae5_finetune": "VampPrior, one layer, trained on with IWAE (K = 5)",
        "hvae_vampprior_authors": "HVAE + VampPrior, authors' protocol",
        "hvae_vampprior_authors_decay": "HVAE + VampPrior, authors' protocol + decay",
        "hvae_vampprior_authors_ema": "HVAE + VampPrior, authors' protocol + averaging",
        "hvae_vampprior_authors_ema_lr1e-3": "HVAE + VampPrior, authors' protocol + averaging at 1e-3",
        "hvae_vampprior_authors_ema_lr1e-3_e120": "HVAE + VampPrior, authors' protocol + averaging at 1e-3, 120 epochs",
        "hvae_vampprior_authors_ema_lr1e-3_wd0.05": "HVAE + VampPrior, authors' protocol + averaging at 1e-3, "
                                                    "weight decay 0.05"}
TARGETS = {"one-layer VampPrior": 85.5, "best model shipped": 84.0}


def summarize(run: str) -> dict:
    metrics = json_lines(RESULTS / run / "metrics.jsonl")
    result = nll_line_on_test_split(RESULTS / run)
    val = [line["val_nelbo"] for line in metrics]
    parent = Path(result["config"].get("init_from", "")).name  # the run it started from, named by its work directory
    return {
        "run": run, "epochs": len(metrics), "evaluated_epoch": result["epoch"],
        "started_after_epoch": nll_line_on_test_split(RESULTS / parent)["epoch"] if parent else 0,
        "test_nll": result["nll"], "test_nll_stderr": result["nll_stderr"],
        "test_nelbo": result["nelbo"], "nll_above_target": {name: result["nll"] - target
                                                            for name, target in TARGETS.items()},
        "val_nelbo_fall_over_last_10_epochs": val[-11] - val[-1], "val_nelbo": val,
    }


def main() -> None:
    runs = [summarize(run) for run in RUNS if (RESULTS / run / "eval.jsonl").exists()]
    figure = Figure(figsize=(12, 8), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    axes.set_prop_cycle(color=colormaps["tab20"].colors)  # one colour per run beyond the default cycle's 10
    for run in runs:
        start = run["started_after_epoch"]
        epochs = range(start + 1, start + run["epochs"] + 1)
        (line,) = axes.plot(epochs, run["val_nelbo"], label=f"{RUNS[run['run']]}: validation NELBO")
        axes.errorbar([start + run["evaluated_epoch"]], [run["test_nll"]], yerr=[run["test_nll_stderr"]],
                      fmt="o", color=line.get_color(),
                      label=f"{RUNS[run['run']]}: test NLL (K = 5000) {run['test_nll']:.2f}")
    for name, target in TARGETS.items():
        axes.axhline(target, linestyle="--", color="gray", linewidth=1)
        axes.annotate(f"target, {name}: {target}", (1, target), textcoords="offset points", xytext=(2, 3),
                      fontsize=8)
    axes.set(xlabel="epoch", ylabel="nats", ylim=(82, 100), title="learning curves and the NLL targets")
    figure.legend(fontsize=8, loc="outside lower center", ncols=2)
    figure.savefig(RESULTS / "target_curve.png")
    summary = [{key: value for key, value in run.items() if key != "val_nelbo"} for run in runs]
    (RESULTS / "target_curve.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
