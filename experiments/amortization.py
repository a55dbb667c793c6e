"""Study 5: what amortizing inference costs and buys (Cremer, Li & Duvenaud, 2018), for trained runs.

    python experiments/amortization.py --runs cs236 default [--manual-dir ../shared/data/binarized_mnist]

For each run (its work directory in `--runs-dir`, trained by `train_and_eval.sh`):

1. `vae_jax gaps` on the whole test split and on the first 1,000 training examples: log p(x) (K = 5000), L[q*]
   (each example's own Gaussian, Adam from the encoder's output) and L[q] (the encoder's), per example and as
   means with standard errors; the eval lines go to the run's `eval.jsonl`, the per-example numbers to
   `results/amortization/<run>_<split>.csv`;
2. the refinement trace on the first 1,000 test examples, from the encoder's output and from the prior N(0, I): the
   mean ELBO at each step, and the wall time per example per step, against which the figure plots it.

Writes `results/amortization/summary.json`, `results.md` (the table and the findings derived from it, the CSVs and
the traces) and `amortization.png`, and copies each run's `eval.jsonl` to `results/<run>/`.

    python experiments/amortization.py --report

remakes `results.md` and `amortization.png` from the committed `summary.json` and CSVs, without the models.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from vae_jax import configs, data, inference, readback, resolve
from vae_jax.workdir import EVAL_FILE

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "experiments" / "results" / "amortization"
TRACE_EXAMPLES = 1000


def gaps(run: str, workdir: Path, split: str, num_examples: int | None, args: argparse.Namespace) -> dict:
    """`readback.evaluate_gaps` of one run and split; writes the per-example CSV; returns the summary."""
    settings = configs.GapsConfig(steps=args.steps, num_samples=args.samples, learning_rate=args.learning_rate,
                                  eval_samples=args.eval_samples, iwae_samples=args.iwae_samples)
    summary, per_example = readback.evaluate_gaps(workdir, split, num_examples=num_examples, gaps=settings,
                                                  data_dir=args.data_dir, manual_dir=args.manual_dir)
    readback.write_gaps_csv(OUT / f"{run}_{split}.csv", per_example)
    return {"run_name": run, **summary}


def trace(workdir: Path, args: argparse.Namespace) -> dict:
    """Mean negative-ELBO trace of refinement from the encoder and from the prior, and seconds per example-step."""
    run, restored = resolve.open_run(workdir)
    pixels = jax.device_put(data.load_split(run.config.dataset, "test", data_dir=args.data_dir)[:TRACE_EXAMPLES])
    traces = {}
    for start in inference.STARTS:
        options = {"steps": args.trace_steps, "num_samples": args.samples, "start": start,
                   "dynamic_binarization": run.dataset.dynamic}
        compiled = inference.refine_posteriors.lower(restored.state.model, restored.state.params, pixels,
                                                     jax.random.key(0), learning_rate=args.trace_learning_rate,
                                                     **options).compile()
        begin = time.perf_counter()
        refined = jax.block_until_ready(compiled(restored.state.params, pixels, jax.random.key(0),
                                                 learning_rate=args.trace_learning_rate))
        seconds = time.perf_counter() - begin
        traces[start] = {"mean_nelbo": np.asarray(refined.trace, np.float64).mean(axis=0).round(4).tolist(),
                         "seconds_per_example_step": seconds / TRACE_EXAMPLES / args.trace_steps}
    return traces


def table(summaries: list[dict]) -> str:
    lines = ["| run | split (examples) | log p(x) | L[q*] | L[q] | approximation gap | amortization gap | "
             "inference gap | amortization share | s/example: encoder | s/example: optimization |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    def value(s: dict, name: str) -> str:
        return f"{s[name]:.2f} ± {s[name + '_stderr']:.2f}"

    for s in summaries:
        share = s["amortization_gap"] / s["inference_gap"]
        lines.append(f"| {s['run_name']} | {s['split']} ({s['num_examples']}) | {value(s, 'log_px')} | "
                     f"{value(s, 'elbo_refined')} | {value(s, 'elbo_amortized')} | {value(s, 'approximation_gap')} | "
                     f"{value(s, 'amortization_gap')} | {value(s, 'inference_gap')} | {share:.0%} | "
                     f"{s['encoder_seconds_per_example']:.1e} | {s['refine_seconds_per_example']:.1e} |")
    return "\n".join(lines) + "\n"


def findings(summaries: list[dict], traces: dict[str, dict]) -> dict[str, dict]:
    """Per run, what the docs read off the test split's CSV and the traces (first `TRACE_EXAMPLES` test digits):
    the mean negative L[q*] of the table's optimization and where each trace ends, the steps (and seconds, and
    encoder passes' worth of seconds) that Adam from the prior takes to reach the encoder's mean ELBO, the cost of
    the table's optimization in encoder passes, and the share of examples whose approximation gap is negative."""
    out = {}
    for run, run_traces in traces.items():
        [test] = [s for s in summaries if s["run_name"] == run and s["split"] == "test"]
        columns = np.genfromtxt(OUT / f"{run}_test.csv", delimiter=",", names=True)
        encoder_nelbo = -columns["elbo_amortized"][:TRACE_EXAMPLES].mean()
        from_prior = np.asarray(run_traces["prior"]["mean_nelbo"])
        steps = int(np.argmax(from_prior <= encoder_nelbo))  # trace[i]: the loss after i steps
        seconds = steps * run_traces["prior"]["seconds_per_example_step"]
        out[run] = {
            "refined_nelbo": -columns["elbo_refined"][:TRACE_EXAMPLES].mean(),
            "trace_end_from_encoder": run_traces["encoder"]["mean_nelbo"][-1],
            "trace_end_from_prior": run_traces["prior"]["mean_nelbo"][-1],
            "encoder_nelbo": encoder_nelbo,
            "prior_steps_to_encoder": steps, "prior_seconds_to_encoder": seconds,
            "prior_seconds_to_encoder_in_encoder_passes": seconds / test["encoder_seconds_per_example"],
            "optimization_in_encoder_passes": test["refine_seconds_per_example"] / test["encoder_seconds_per_example"],
            "negative_approximation_gaps": float((columns["approximation_gap"] < 0).mean()),
        }
    return out


def findings_table(found: dict[str, dict]) -> str:
    """`findings` as a Markdown table, one column per run."""
    rows = {  # key: (label, format)
        "refined_nelbo": ("-L[q*] of the table's optimization (as its card's inference says)", ".2f"),
        "trace_end_from_encoder": ("-ELBO at the end of the trace from the encoder", ".2f"),
        "trace_end_from_prior": ("-ELBO at the end of the trace from the prior", ".2f"),
        "encoder_nelbo": ("-L[q], the encoder's", ".2f"),
        "prior_steps_to_encoder": ("Adam steps from the prior to reach L[q]", ",.0f"),
        "prior_seconds_to_encoder": ("their seconds per example", ".1e"),
        "prior_seconds_to_encoder_in_encoder_passes": ("the same, in encoder passes", ",.0f"),
        "optimization_in_encoder_passes": ("the table's optimization, in encoder passes (whole test split)", ",.0f"),
        "negative_approximation_gaps": ("test examples with a negative approximation gap (whole split)", ".1%"),
    }
    runs = list(found)
    lines = [f"| first {TRACE_EXAMPLES:,} test digits | " + " | ".join(runs) + " |", "| --- |" + " --- |" * len(runs)]
    for key, (label, spec) in rows.items():
        lines.append(f"| {label} | " + " | ".join(format(found[run][key], spec) for run in runs) + " |")
    return "\n".join(lines) + "\n"


def write_report(summaries: list[dict], traces: dict[str, dict], iwae_samples: int) -> None:
    """`results.md` (the table and the findings) and `amortization.png`."""
    (OUT / "results.md").write_text(table(summaries) + "\n" + findings_table(findings(summaries, traces)))
    figure(summaries, traces, iwae_samples, OUT / "amortization.png")


def figure(summaries: list[dict], traces: dict[str, dict], iwae_samples: int, path: Path) -> None:
    """ELBO against refinement steps and against wall time, from the encoder and from the prior, with the amortized
    ELBO and log p(x) (the test split's) as references."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2 * len(traces)), dpi=110)
    for row, (run, run_traces) in enumerate(traces.items()):
        [test] = [s for s in summaries if s["run_name"] == run and s["split"] == "test"]
        for column, against in enumerate(("steps", "seconds")):
            axes = figure.add_subplot(len(traces), 2, 2 * row + column + 1)
            for start, style in (("encoder", "-"), ("prior", "--")):
                elbo = -np.asarray(run_traces[start]["mean_nelbo"])[1:]  # after 1, 2, ... steps
                x = np.arange(1, len(elbo) + 1, dtype=np.float64)
                if against == "seconds":
                    x = x * run_traces[start]["seconds_per_example_step"]
                axes.plot(x, elbo, style, label=f"per-example Adam from the {start}")
            encoder_x = test["encoder_seconds_per_example"] if against == "seconds" else 1
            axes.plot([encoder_x], [test["elbo_amortized"]], "o", color="black", label="L[q]: the encoder, one pass")
            axes.axhline(test["log_px"], color="grey", linestyle=":", label=f"log p(x), K = {iwae_samples}")
            axes.set_xscale("log")
            axes.set_ylim(test["elbo_amortized"] - 4 * (test["log_px"] - test["elbo_amortized"]),
                          test["log_px"] + 0.5 * (test["log_px"] - test["elbo_amortized"]))
            axes.set(xlabel="Adam steps" if against == "steps" else "seconds per example (this CPU)",
                     ylabel="mean ELBO, nats", title=f"{run}: first {TRACE_EXAMPLES} test digits")
            if row == 0 and column == 0:
                axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["cs236", "default"])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--manual-dir", default=None)
    parser.add_argument("--data-dir", default=str(data.DEFAULT_DATA_DIR))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--trace-steps", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=5e-2)
    parser.add_argument("--trace-learning-rate", type=float, default=0.1,
                        help="of the traces, which start from the prior too")
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--iwae-samples", type=int, default=5000)
    parser.add_argument("--report", action="store_true",
                        help="only remake results.md and the figure from the committed summary.json and CSVs")
    args = parser.parse_args()

    if args.report:
        summary = json.loads((OUT / "summary.json").read_text())
        write_report(summary["summaries"], summary["traces"], summary["summaries"][0]["iwae_k"])
        print((OUT / "results.md").read_text())
        return
    OUT.mkdir(parents=True, exist_ok=True)
    summaries, traces = [], {}
    for run in args.runs:
        workdir = Path(args.runs_dir) / run
        summaries.append(gaps(run, workdir, "test", None, args))
        summaries.append(gaps(run, workdir, "train", 1000, args))
        traces[run] = trace(workdir, args)
        shutil.copy(workdir / EVAL_FILE, REPO / "experiments" / "results" / run / EVAL_FILE)
        print(table(summaries), flush=True)
    command = "python experiments/amortization.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in [
        ("runs", " ".join(args.runs)), ("steps", args.steps), ("trace_steps", args.trace_steps),
        ("samples", args.samples), ("learning_rate", args.learning_rate),
        ("trace_learning_rate", args.trace_learning_rate), ("eval_samples", args.eval_samples),
        ("iwae_samples", args.iwae_samples)])
    (OUT / "summary.json").write_text(json.dumps({"command": command, "summaries": summaries, "traces": traces},
                                                 indent=1) + "\n")
    write_report(summaries, traces, args.iwae_samples)


if __name__ == "__main__":
    main()
