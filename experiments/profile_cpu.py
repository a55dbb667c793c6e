"""Where a CPU training epoch's time goes, and what XLA:CPU's other kernel libraries and cores make of it.

    python experiments/profile_cpu.py --manual-dir ../shared/data/binarized_mnist

Part 1 traces one compiled epoch of the `cs236` model (batch 100, Adam) with XLA's per-operation trace events
(`--xla_cpu_enable_xprof_traceme`) and sums each worker thread's self time by what the operation does, read from
the `op_name` of its instruction in the compiled HLO: dense-layer matrix products, the elementwise work of the
forward and backward passes, the optimizer update and the finiteness check (named scopes in `vae_jax.train`),
random numbers, control flow, and the runtime's own scheduling and waits (during which a thread may also run a
share of another operation, so busy thread-seconds over wall time is a lower bound on the cores at work).
Part 2 times the same epoch (benchmark.py's vae_jax case, a fresh process each) under XLA flags that route matrix
products or elementwise work to oneDNN, XNNPACK or YNNPACK, split over two host devices with data parallelism,
and pinned to one core, beside the eager PyTorch reference on both cores and on one core, timed in the same run.
Writes `--out` (JSON) and prints both tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmark import machine, run_case

CATEGORIES = (  # (category, pattern on an instruction's text), first match wins
    ("optimizer update", r"optimizer_update"),
    ("finiteness check", r"finite_check"),
    ("random numbers", r"threefry|random_|/_normal|/_uniform"),
    ("matrix products", r" dot\(|dot_general"),
    ("backward elementwise", r"transpose\("),
    ("forward elementwise", r"jvp\("),
)
VARIANTS = (  # (name, XLA_FLAGS, extra case fields)
    ("default (YNNPACK matmuls, Eigen for the rest)", "", {}),
    ("Eigen matmuls", "--xla_cpu_experimental_ynn_fusion_type=reduce", {}),
    ("oneDNN matmuls", "--xla_cpu_experimental_ynn_fusion_type=reduce "
                       "--xla_cpu_experimental_onednn_fusion_type=dot", {}),
    ("XNNPACK matmuls", "--xla_cpu_experimental_ynn_fusion_type=reduce "
                        "--xla_cpu_experimental_xnn_fusion_type=dot", {}),
    ("YNNPACK matmuls and elementwise", "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce", {}),
    ("XNNPACK graph fusion (greedy)", "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
     {}),
    ("data parallel over 2 host devices", "--xla_force_host_platform_device_count=2", {"data_parallel": True}),
    ("default, pinned to one core", "", {"cpus": [0]}),
)


def instruction_texts(hlo_text: str) -> dict[str, str]:
    """`{instruction name: its line}` of every instruction in an HLO module's text."""
    pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", re.MULTILINE)
    return {name: line for name, line in pattern.findall(hlo_text)}


def category(event_name: str, instructions: dict[str, str]) -> str:
    """What a trace event's operation does; events that are no instruction are the runtime's own work."""
    line = instructions.get(event_name)
    if line is None:
        return "runtime (scheduling, waits)"
    if re.search(r" (while|conditional|call)\(", line):
        return "control flow"
    return next((name for name, pattern in CATEGORIES if re.search(pattern, line)), "other")


def self_times(events: list[tuple[str, float, float]]) -> Counter:
    """Self time in ns by event name, from one thread's `(name, start_ns, duration_ns)` events (nested spans)."""
    totals: Counter = Counter()
    stack: list[tuple[str, float]] = []  # (name, end_ns) of the open spans
    for name, start, duration in sorted(events, key=lambda e: (e[1], -e[2])):
        while stack and stack[-1][1] <= start:
            stack.pop()
        if stack:
            totals[stack[-1][0]] -= duration
        totals[name] += duration
        stack.append((name, start + duration))
    return totals


def trace_epoch(manual_dir: str | None) -> dict:
    """Part 1, in this process: the thread-seconds of one traced epoch by category."""
    import jax
    import optax

    from vae_jax import data, models, train
    from vae_jax.configs import ModelConfig

    pixels = jax.device_put(data.load_split("binarized_mnist", "train", manual_dir=manual_dir))
    encoder, decoder = models.build_models(ModelConfig(10, (300, 300), (300, 300)))
    state = train.create_train_state(jax.random.key(0), encoder, decoder, optax.adam(1e-3))
    epoch = train.train_epoch_jit.lower(state, pixels, jax.random.key(1), batch_size=100).compile()
    instructions = instruction_texts(epoch.as_text())
    jax.block_until_ready(epoch(state, pixels, jax.random.key(1)))  # warm-up
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        jax.block_until_ready(epoch(state, pixels, jax.random.key(2)))
        wall = time.perf_counter() - start
        jax.profiler.stop_trace()
        profile = jax.profiler.ProfileData.from_file(str(next(Path(trace_dir).rglob("*.xplane.pb"))))
    by_name: Counter = Counter()
    for plane in profile.planes:
        for line in plane.lines:
            if line.name.startswith("tf_XLAEigen"):  # XLA:CPU's worker threads
                by_name += self_times([(e.name, e.start_ns, e.duration_ns) for e in line.events])
    by_category: Counter = Counter()
    for name, nanoseconds in by_name.items():
        by_category[category(name, instructions)] += nanoseconds / 1e9
    busy = sum(seconds for name, seconds in by_category.items() if not name.startswith("runtime"))
    top = [{"instruction": name, "category": category(name, instructions), "seconds": ns / 1e9}
           for name, ns in by_name.most_common(15)]
    return {"wall_seconds": wall, "busy_thread_seconds": busy, "average_busy_cores": busy / wall,
            "thread_seconds_by_category": dict(by_category.most_common()), "top_instructions": top}


def time_variants(manual_dir: str | None, epochs: int) -> list[dict]:
    """Part 2: the epoch under each variant, and the eager PyTorch reference, each in a fresh process."""
    case = {"framework": "jax", "model": "cs236", "batch": 100, "epochs": epochs, "manual_dir": manual_dir}
    references = [run_case({**case, "framework": "torch"}), run_case({**case, "framework": "torch", "cpus": [0]})]
    torch_seconds = [statistics.median(r["epoch_times"]) if "epoch_times" in r else float("nan") for r in references]
    results = [{"variant": "PyTorch eager (reference)", "seconds_per_epoch": torch_seconds[0],
                "time_ratio_vs_torch_eager": 1.0},
               {"variant": "PyTorch eager, pinned to one core", "cpus": [0], "seconds_per_epoch": torch_seconds[1],
                "time_ratio_vs_torch_eager": torch_seconds[1] / torch_seconds[0]}]
    for name, flags, extra in VARIANTS:
        result = run_case({**case, **extra}, xla_flags=flags)
        row = {"variant": name, "xla_flags": flags, **extra}
        if "epoch_times" in result:
            seconds = statistics.median(result["epoch_times"])
            row.update(seconds_per_epoch=seconds, time_ratio_vs_torch_eager=seconds / torch_seconds[0])
        else:
            row["error"] = result.get("error")
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def run_trace(manual_dir: str | None) -> dict:
    """Part 1 in a fresh process, whose XLA_FLAGS turn on the per-operation trace events."""
    command = [sys.executable, __file__, "--trace-worker"] + (["--manual-dir", manual_dir] if manual_dir else [])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the traced epoch failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown_report(report: dict) -> str:
    """The README's profile tables, from `report`."""
    trace = report["trace"]
    lines = [f"Traced epoch: {trace['wall_seconds']:.2f} s wall, {trace['busy_thread_seconds']:.2f} busy "
             f"thread-seconds, at least {trace['average_busy_cores']:.2f} cores busy on average.", "",
             "| work | thread-seconds | share |", "| --- | --- | --- |"]
    total = sum(trace["thread_seconds_by_category"].values())
    for name, seconds in trace["thread_seconds_by_category"].items():
        lines.append(f"| {name} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
    lines += ["", "| variant | s/epoch | time vs PyTorch eager |", "| --- | --- | --- |"]
    for row in report["variants"]:
        seconds = row.get("seconds_per_epoch")
        cells = f"{seconds:.2f} | {row['time_ratio_vs_torch_eager']:.2f}" if seconds else f"error: {row['error']} | -"
        lines.append(f"| {row['variant']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", default=None)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per variant, after one warm-up epoch")
    parser.add_argument("--out", default="experiments/results/profile_cpu.json")
    parser.add_argument("--trace-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trace_worker:
        print(json.dumps(trace_epoch(args.manual_dir)))
        return
    trace = run_trace(args.manual_dir)
    variants = time_variants(args.manual_dir, args.epochs)
    report = {"machine": machine(), "model": "cs236", "batch": 100, "trace": trace, "variants": variants,
              "command": "python experiments/profile_cpu.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print("\n" + markdown_report(report))


if __name__ == "__main__":
    main()
