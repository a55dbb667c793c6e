"""Where the wall time of `train` and `eval` goes, with the compilation cache off, cold and warm, in one run.

    python experiments/time_to_result.py --manual-dir ../shared/data/binarized_mnist [--baseline-checkout DIR]

Each command runs in a fresh process, as a user runs it: `train --config cs236 --epochs 1` in a new work directory,
then `eval --split test` of that run (and, with `--iwae-samples K`, `eval --split test --iwae-samples K`). Each is
run with the cache off, then with an empty cache folder (cold) and again with it filled (warm), `--rounds` times
in turn, and, with `--baseline-checkout`, the same commands of that (older) checkout of vae_jax in the same rounds.
The worker times the phases from inside: the imports, data loading (`data.load_split`), tracing, lowering and
compiling every jitted function (JAX's monitoring events; a compile that the cache answers counts as its
retrieval; of functions compiled side by side, "compile" counts the wall time), checkpoint saves and restores
(until the call returns: a save in the background goes on beside), the epochs with their validation
(`metrics.jsonl`'s `seconds`) and the evaluations of `eval` (less their compilation); the rest, "other", is the
interpreter, the initialization of the model, the host work between these.
Writes `--out` (JSON) with the machine's description and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmark import REPO, markdown, save_report

PHASES = ("imports", "data", "trace", "lower", "compile", "checkpoint save", "checkpoint restore", "epochs",
          "evaluation", "other")
VARIANTS = ("off", "cold", "warm")


def worker(argv: list[str], checkout: str) -> dict:
    """Runs `python -m vae_jax ARGV` inside this process with timers around its phases (see the module docstring)."""
    start = time.perf_counter()
    import jax

    from vae_jax import cli, data, evaluate

    try:  # vae_jax from 0.3 on trains in `trainer`; a baseline checkout may be older
        from vae_jax import trainer as training
    except ImportError:
        from vae_jax import runner as training
    from vae_jax.checkpoint import Checkpointer

    phases: dict[str, float] = defaultdict(float)
    phases["imports"] = time.perf_counter() - start
    counts: dict[str, int] = defaultdict(int)
    events = {"/jax/core/compile/jaxpr_trace_duration": "trace",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
              "/jax/core/compile/backend_compile_duration": "compile"}

    def on_duration(event: str, duration: float, **kwargs: Any) -> None:
        if event in events:
            phases[events[event]] += duration
            counts[events[event]] += 1

    def on_event(event: str, **kwargs: Any) -> None:
        if event.startswith("/jax/compilation_cache/cache_"):
            counts[event.rsplit("/", 1)[1]] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

    def timed(owner: Any, name: str, phase: str) -> None:
        """Times `owner.name` (waiting for its result), less the tracing and compiling inside it."""
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            compiling = phases["trace"] + phases["lower"] + phases["compile"]
            begin = time.perf_counter()
            try:
                return jax.block_until_ready(original(*args, **kwargs))
            finally:
                elapsed = time.perf_counter() - begin
                phases[phase] += elapsed - (phases["trace"] + phases["lower"] + phases["compile"] - compiling)

        for attribute in ("lower", "trace"):  # a jitted function's ahead-of-time stages stay reachable
            if hasattr(original, attribute):
                setattr(wrapper, attribute, getattr(original, attribute))
        setattr(owner, name, wrapper)

    timed(data, "load_split", "data")
    timed(Checkpointer, "save", "checkpoint save")
    timed(Checkpointer, "restore", "checkpoint restore")
    for name in ("evaluate_elbo", "evaluate_iwae"):  # `eval` calls them; `train` compiles its own beforehand
        timed(evaluate, name, "evaluation")
    if hasattr(training, "compile_in_parallel"):  # compilations side by side: the overlap is taken off "compile"
        timed(training, "compile_in_parallel", "compile")
    code = cli.main(argv)
    total = time.perf_counter() - start
    metrics = Path(argv[argv.index("--workdir") + 1]) / "metrics.jsonl"
    if argv[0] == "train" and metrics.exists():  # each epoch's `seconds`: the epoch and its validation
        phases["epochs"] = sum(json.loads(line).get("seconds", 0.0) for line in metrics.read_text().splitlines())
    phases["other"] = total - sum(phases.values())
    report = {"exit_code": code, "inside_seconds": total, "phases": dict(phases), "counts": dict(counts),
              "checkout": checkout}
    eval_file = Path(argv[argv.index("--workdir") + 1]) / "eval.jsonl"
    if argv[0] == "eval" and eval_file.exists():
        line = json.loads(eval_file.read_text().splitlines()[-1])
        report["result"] = {name: line.get(name) for name in ("nelbo", "nelbo_stderr", "nll", "nll_stderr", "kl")}
    return report


def run_command(argv: list[str], checkout: Path, cache: str, manual_dir: str | None, data_dir: str) -> dict:
    """One fresh process of `worker`, the code of `checkout` first on its path; returns its report and wall time."""
    env = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{REPO / 'experiments'}", "TF_CPP_MIN_LOG_LEVEL": "3",
           "VAE_JAX_COMPILATION_CACHE": cache, "JAX_COMPILATION_CACHE_DIR": "" if cache == "off" else cache}
    data_options = ["--data-dir", data_dir] + (["--manual-dir", manual_dir] if argv[0] == "train" and manual_dir
                                               else [])
    command = [sys.executable, "-c", "import json, sys, time_to_result as t; "
               "print(json.dumps(t.worker(json.loads(sys.argv[1]), sys.argv[2])))",
               json.dumps([*argv, *data_options]), str(checkout)]
    begin = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=checkout, env=env)
    wall = time.perf_counter() - begin
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300], "wall_seconds": wall}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_seconds": wall}


def commands(workdir: Path, iwae_samples: int, epochs: int) -> dict[str, list[str]]:
    cases = {f"train --epochs {epochs}": ["train", "--workdir", str(workdir), "--config", "cs236", "--epochs",
                                          str(epochs), "--no-progress"],
             "eval --split test": ["eval", "--workdir", str(workdir), "--split", "test"]}
    if iwae_samples:
        cases[f"eval --iwae-samples {iwae_samples}"] = [*cases["eval --split test"], "--iwae-samples",
                                                       str(iwae_samples)]
    return cases


def one_round(checkouts: dict[str, Path], scratch: Path, args: argparse.Namespace) -> list[dict]:
    """Every command of every checkout and cache variant once, in turn."""
    results = []
    for code, checkout in checkouts.items():
        for variant in args.variants if code == "this" else ("off",):
            cache = "off" if variant == "off" else str(scratch / f"cache-{code}")
            if variant == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            workdir = scratch / f"run-{code}-{variant}"
            shutil.rmtree(workdir, ignore_errors=True)
            for name, argv in commands(workdir, args.iwae_samples, args.train_epochs).items():
                result = run_command(argv, checkout, cache, args.manual_dir, args.data_dir)
                results.append({"code": code, "variant": variant, "command": name, **result})
                print(json.dumps({k: v for k, v in results[-1].items() if k != "phases"}), flush=True)
    return results


def summarize(runs: list[dict]) -> list[dict]:
    """Median wall time and phases of each (code, variant, command) over the rounds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[run["code"], run["variant"], run["command"]].append(run)
    rows = []
    for (code, variant, command), group in groups.items():
        good = [run for run in group if "phases" in run]
        row = {"code": code, "variant": variant, "command": command, "rounds": len(group)}
        if good:
            row["wall_seconds"] = statistics.median(run["wall_seconds"] for run in good)
            row["phases"] = {phase: statistics.median(run["phases"].get(phase, 0.0) for run in good)
                             for phase in PHASES}
            row["counts"] = good[-1]["counts"]
            if "result" in good[-1]:
                row["result"] = good[-1]["result"]
        else:
            row["error"] = group[-1].get("error")
        rows.append(row)
    return rows


def markdown_report(report: dict) -> str:
    rows = report["rows"]
    lines = ["| code | cache | command | wall s | " + " | ".join(PHASES) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in PHASES) + " |"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['code']} | {row['variant']} | {row['command']} | failed: {row['error']} |")
            continue
        phases = " | ".join(f"{row['phases'][phase]:.1f}" for phase in PHASES)
        lines.append(f"| {row['code']} | {row['variant']} | `{row['command']}` | {row['wall_seconds']:.1f} | "
                     f"{phases} |")
    baseline = {row["command"]: row["wall_seconds"] for row in rows
                if row["code"] == "baseline" and "wall_seconds" in row}
    ratios = [f"`{row['command']}` {row['variant']} cache: {row['wall_seconds'] / baseline[row['command']]:.2f}x"
              for row in rows if row["code"] == "this" and row["command"] in baseline and "wall_seconds" in row]
    if ratios:
        lines += ["", f"Against the baseline checkout ({report.get('baseline_commit')}): " + "; ".join(ratios) + "."]
    return markdown(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", default=None)
    parser.add_argument("--data-dir",
                        default=os.environ.get("TFDS_DATA_DIR", str(Path.home() / "tensorflow_datasets")))
    parser.add_argument("--baseline-checkout", default=None, help="an older checkout of vae_jax to time beside")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iwae-samples", type=int, default=0, help="also time eval with this K (0: no)")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs of the timed `train` (cs236)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="cache variants of this checkout (in this order: cold before warm)")
    parser.add_argument("--out", default="experiments/results/time_to_result_cpu.json")
    args = parser.parse_args()
    checkouts = {"this": REPO}
    baseline_commit = None
    if args.baseline_checkout:
        checkouts["baseline"] = Path(args.baseline_checkout).resolve()
        baseline_commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkouts["baseline"],
                                         capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch:
        runs = [run for _ in range(args.rounds) for run in one_round(checkouts, Path(scratch), args)]
    save_report({"rows": summarize(runs), "runs": runs, "baseline_commit": baseline_commit}, args.out,
                markdown_report)


if __name__ == "__main__":
    main()
