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
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmark import case_seconds, compiled_jax_epoch, hlo_computations, markdown, run_case, run_worker, save_report

RUNTIME = "runtime (scheduling, waits)"
CATEGORIES = (  # (category, pattern on an instruction's text), first match wins
    ("optimizer update", r"optimizer_update"),
    ("finiteness check", r"finite_check"),
    ("random numbers", r"threefry|random_|jit\(_(normal|uniform)"),
    ("matrix products", r" dot\(|dot_general"),
    ("backward elementwise", r"transpose\(jvp"),
    ("forward elementwise", r"jvp\("),
)
DEFAULT, ONE_CORE = "default", "default, pinned to one core"
TORCH, TORCH_ONE_CORE = "PyTorch eager (reference)", "PyTorch eager, pinned to one core"
VARIANTS = (  # (name, XLA_FLAGS, extra case fields)
    (DEFAULT, "", {}),
    ("all products by XLA (Eigen)", "--xla_cpu_experimental_ynn_fusion_type=reduce", {}),
    ("oneDNN products", "--xla_cpu_experimental_ynn_fusion_type=reduce "
                        "--xla_cpu_experimental_onednn_fusion_type=dot", {}),
    ("XNNPACK products", "--xla_cpu_experimental_ynn_fusion_type=reduce "
                         "--xla_cpu_experimental_xnn_fusion_type=dot", {}),
    ("YNNPACK products and elementwise", "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce", {}),
    ("XNNPACK graph fusion (greedy)", "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
     {}),
    ("data parallel over 2 host devices", "--xla_force_host_platform_device_count=2", {"data_parallel": True}),
    (ONE_CORE, "", {"cpus": [0]}),
)


def instruction_texts(hlo_text: str) -> dict[str, str]:
    """`{instruction name: its text}` of every instruction in an HLO module's text, and under `%computation name`
    the text of each computation's instructions, one a line."""
    texts: dict[str, str] = {}
    for computation, body in hlo_computations(hlo_text).items():
        texts.update(body)
        texts["%" + computation] = "\n".join(body.values())
    return texts


def category(event_name: str, instructions: dict[str, str]) -> str:
    """What a trace event's operation does; events that are no instruction are the runtime's own work."""
    line = instructions.get(event_name)
    if line is None:
        return RUNTIME
    if re.search(r" (while|conditional|call)\(", line):
        return "control flow"
    return _kind(line, instructions)


def _kind(text: str, instructions: dict[str, str]) -> str:
    """The category of HLO text, else that of the first computation it calls that has one (XLA's partial
    reductions, for one, keep no op_name of their own)."""
    kind = next((name for name, pattern in CATEGORIES if re.search(pattern, text)), "other")
    for called in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", text) if kind == "other" else ():
        kind = _kind(instructions.get("%" + called, ""), instructions)
        if kind != "other":
            break
    return kind


def self_times(events: list[tuple[str, float, float]]) -> Counter:
    """Self time in ns by event name, from one thread's `(name, start_ns, duration_ns)` events, whose spans nest
    (XLA's trace events on one thread do): each event's duration less that of the events directly inside it."""
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

    from vae_jax import data

    train_split = data.load_split("binarized_mnist", "train", manual_dir=manual_dir)
    epoch, state, pixels, _ = compiled_jax_epoch({"model": "cs236", "batch": 100}, train_split)
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
            if line.name.startswith("tf_XLA"):  # XLA:CPU's threads (its worker pool and the client's)
                by_name += self_times([(e.name, e.start_ns, e.duration_ns) for e in line.events])
    by_category: Counter = Counter()
    for name, nanoseconds in by_name.items():
        by_category[category(name, instructions)] += nanoseconds / 1e9
    busy = sum(seconds for name, seconds in by_category.items() if name != RUNTIME)
    top = [{"instruction": name, "category": category(name, instructions), "seconds": ns / 1e9}
           for name, ns in by_name.most_common(15)]
    return {"wall_seconds": wall, "busy_thread_seconds": busy, "average_busy_cores": busy / wall,
            "thread_seconds_by_category": dict(by_category.most_common()), "top_instructions": top}


def time_variants(manual_dir: str | None, epochs: int) -> list[dict]:
    """Part 2: the epoch under each variant, and the eager PyTorch reference, each in a fresh process."""
    case = {"framework": "jax", "model": "cs236", "batch": 100, "epochs": epochs, "manual_dir": manual_dir}
    runs = [(TORCH, run_case({**case, "framework": "torch"}), {}),
            (TORCH_ONE_CORE, run_case({**case, "framework": "torch", "cpus": [0]}), {"cpus": [0]})]
    runs += [(name, run_case({**case, **extra}, xla_flags=flags), {"xla_flags": flags, **extra})
             for name, flags, extra in VARIANTS]
    rows = []
    for name, result, settings in runs:
        row = {"variant": name, **settings, "matmul_kernels": result.get("matmul_kernels")}
        if "epoch_times" in result:
            row["seconds_per_epoch"] = case_seconds(result)
        else:
            row["error"] = result.get("error")
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_trace(manual_dir: str | None) -> dict:
    """Part 1 in a fresh process, whose XLA_FLAGS turn on the per-operation trace events."""
    command = [str(Path(__file__).resolve()), "--trace-worker"] + (["--manual-dir", manual_dir] if manual_dir else [])
    trace = run_worker(command, xla_flags="--xla_cpu_enable_xprof_traceme=true")
    if "error" in trace:
        raise SystemExit(f"the traced epoch failed: {trace['error']}")
    return trace


def markdown_report(report: dict) -> str:
    """The README's profile tables and the sentences that it quotes, from `report`."""
    trace = report["trace"]
    busy, by_category = trace["busy_thread_seconds"], trace["thread_seconds_by_category"]
    lines = [f"Traced epoch: {trace['wall_seconds']:.2f} s wall, {busy:.2f} busy thread-seconds, at least "
             f"{trace['average_busy_cores']:.2f} cores busy on average.", "",
             "| work | thread-seconds | share of the busy time |", "| --- | --- | --- |"]
    for name, seconds in by_category.items():
        share = "-" if name == RUNTIME else f"{100 * seconds / busy:.0f}%"
        lines.append(f"| {name} | {seconds:.2f} | {share} |")
    lines += ["", "| variant | s/epoch | time vs PyTorch eager | matrix products per step, by kernel |",
              "| --- | --- | --- | --- |"]
    seconds = {row["variant"]: row.get("seconds_per_epoch", float("nan")) for row in report["variants"]}
    for row in report["variants"]:
        kernels = ", ".join(f"{name} {count}" for name, count in (row.get("matmul_kernels") or {}).items()) or "-"
        timing = (f"{row['seconds_per_epoch']:.2f} | {row['seconds_per_epoch'] / seconds[TORCH]:.2f}"
                  if "seconds_per_epoch" in row else f"error: {row['error']} | -")
        lines.append(f"| {row['variant']} | {timing} | {kernels} |")
    lines += ["", f"On one core vae_jax takes {seconds[ONE_CORE] / seconds[TORCH_ONE_CORE]:.2f}x PyTorch's time; "
                  f"a second core speeds vae_jax up {seconds[ONE_CORE] / seconds[DEFAULT]:.2f}x and PyTorch "
                  f"{seconds[TORCH_ONE_CORE] / seconds[TORCH]:.2f}x."]
    return markdown(lines)


def main() -> None:
    """Part 1, part 2, the JSON report and its tables (or, with --trace-worker, part 1 alone)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", default=None)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per variant, after one warm-up epoch")
    parser.add_argument("--out", default="experiments/results/profile_cpu.json")
    parser.add_argument("--trace-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trace_worker:
        print(json.dumps(trace_epoch(args.manual_dir)))
        return
    trace = run_trace(args.manual_dir)
    variants = time_variants(args.manual_dir, args.epochs)
    save_report({"model": "cs236", "batch": 100, "trace": trace, "variants": variants}, args.out, markdown_report)


if __name__ == "__main__":
    main()
