"""Training speed of vae_jax against the PyTorch reference, on the same model, data and batch size, in one run.

    python experiments/benchmark.py --manual-dir ../shared/data/binarized_mnist

Each case runs in a fresh subprocess (clean peak memory, no cross-talk between frameworks), `--rounds` times with
all cases in turn in each round (so that a shared machine's drift falls on every case alike), and reports seconds
per epoch (median of all rounds' `--epochs` epochs, each round after one warm-up epoch), examples per second,
compile time and peak memory; its time against eager PyTorch is the median over the rounds of the ratio within a
round, with the lowest and highest. Cases: vae_jax (one compiled `lax.scan` per epoch), the PyTorch reference of
`tests/torch_reference.py` written idiomatically (eager, data as an in-memory tensor, no DataLoader),
`torch.compile` of its loss, vae_jax in bfloat16 compute, large batches against the measured matrix-multiply peak,
and the time of the K = 5000 importance-weighted evaluation of the 10,000 test images. Writes `--out` (JSON) with
the machine's description and prints a table with the ratios against the eager PyTorch reference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the frameworks load in the workers, after their thread settings
    import numpy as np

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURES = {  # name: (latent_dim, encoder hidden, decoder hidden); cs236 and the `default` preset's model
    "cs236": (10, (300, 300), (300, 300)),
    "large": (32, (512, 512), (512, 512)),
}


def training_flops_per_example(latent_dim: int, encoder_hidden: tuple, decoder_hidden: tuple) -> int:
    """Multiply-adds of the dense layers, forward (x1) and backward (x2), at 2 flops each."""
    encoder = [784, *encoder_hidden, 2 * latent_dim]
    decoder = [latent_dim, *decoder_hidden, 784]
    macs = sum(a * b for sizes in (encoder, decoder) for a, b in zip(sizes[:-1], sizes[1:]))
    return 3 * 2 * macs


def _peak_memory() -> dict:
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _timed_epochs(run_epoch: Callable[[int], Any], epochs: int) -> list[float]:
    times = []
    for epoch in range(epochs + 1):  # the first one warms up
        start = time.perf_counter()
        run_epoch(epoch)
        times.append(time.perf_counter() - start)
    return times[1:]


def compiled_jax_epoch(case: dict, pixels: np.ndarray) -> tuple[Callable, Any, Any, float]:
    """The vae_jax epoch of `case` (`model`, `batch`, optional `dtype` and `data_parallel`; Adam 1e-3), compiled:
    `(epoch_fn, state, data, compile_seconds)`, where `epoch_fn(state, data, key)` trains one epoch."""
    import jax
    import optax

    from vae_jax import builders, parallel, train
    from vae_jax import data as vae_data
    from vae_jax.configs import ModelConfig

    latent_dim, encoder_hidden, decoder_hidden = ARCHITECTURES[case["model"]]
    model = builders.build_model(ModelConfig(latent_dim, encoder_hidden, decoder_hidden,
                                             compute_dtype=case.get("dtype", "float32")),
                                   vae_data.describe("binarized_mnist"))
    mesh = parallel.data_mesh() if case.get("data_parallel") else None
    tx = optax.flatten(optax.adam(1e-3)) if case.get("flatten") else optax.adam(1e-3)
    state = parallel.replicate(train.create_train_state(jax.random.key(0), model, tx, (784,)), mesh)
    data = parallel.replicate(pixels, mesh)
    start = time.perf_counter()
    epoch_fn = train.train_epoch_jit.lower(state, data, jax.random.key(1), batch_size=case["batch"],
                                           mesh=mesh).compile()
    return epoch_fn, state, data, time.perf_counter() - start


def minimal_jax_epoch(case: dict, pixels: np.ndarray) -> tuple[Callable, Any, Any, float]:
    """A minimal JAX epoch of the same model, for comparison: Flax Dense layers, one `lax.scan` over the epoch's
    batches, `optax.adam`, true float32 products; no per-example keys (one noise draw per step), no finiteness
    guard, no metrics but the loss. Returns what `compiled_jax_epoch` returns."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    latent_dim, encoder_hidden, decoder_hidden = ARCHITECTURES[case["model"]]

    def mlp(widths: tuple, out: int) -> nn.Module:
        layers = [layer for w in widths for layer in (nn.Dense(w, precision="highest"), nn.elu)]
        return nn.Sequential([*layers, nn.Dense(out, precision="highest")])

    encoder, decoder = mlp(encoder_hidden, 2 * latent_dim), mlp(decoder_hidden, 784)
    keys = jax.random.split(jax.random.key(0), 2)
    params = {"encoder": encoder.init(keys[0], jnp.zeros((1, 784))),
              "decoder": decoder.init(keys[1], jnp.zeros((1, latent_dim)))}
    tx = optax.adam(1e-3)

    def loss(params: Any, x: jax.Array, eps: jax.Array) -> jax.Array:
        mean, logvar = jnp.split(encoder.apply(params["encoder"], x), 2, axis=-1)
        logits = decoder.apply(params["decoder"], mean + jnp.exp(0.5 * logvar) * eps)
        rec = jnp.sum(jax.nn.softplus(logits) - x * logits, axis=-1)
        kl = 0.5 * jnp.sum(mean**2 + jnp.exp(logvar) - logvar - 1, axis=-1)
        return jnp.mean(rec + kl)

    def epoch(state: Any, data: jax.Array, key: jax.Array) -> tuple[Any, jax.Array]:
        steps = data.shape[0] // case["batch"]
        order = jax.random.permutation(key, data.shape[0])[: steps * case["batch"]].reshape(steps, -1)

        def step(carry: Any, indices: jax.Array) -> tuple[Any, jax.Array]:
            params, opt_state, step_key = carry
            step_key, noise_key = jax.random.split(step_key)
            x = data[indices].astype(jnp.float32)
            value, grads = jax.value_and_grad(loss)(params, x, jax.random.normal(noise_key, (len(x), latent_dim)))
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, step_key), value

        (params, opt_state, _), losses = jax.lax.scan(step, (*state, key), order)
        return (params, opt_state), losses

    data = jax.device_put(pixels)
    state = (params, tx.init(params))
    start = time.perf_counter()
    epoch_fn = jax.jit(epoch).lower(state, data, jax.random.key(1)).compile()
    return epoch_fn, state, data, time.perf_counter() - start


def step_kernels(hlo_text: str) -> int:
    """Instructions that launch work in the body of the epoch's loop (the `lax.scan` over steps) of a compiled
    module: on a GPU each is a kernel or a library call; constants, parameters, tuples and bitcasts are not counted."""
    computations = hlo_computations(hlo_text)
    bodies = [re.search(r"body=%?([\w.\-]+)", text).group(1) for body in computations.values()
              for text in body.values() if " while(" in text]
    inert = (" parameter(", " get-tuple-element(", " tuple(", " constant(", " bitcast(")
    return max((sum(not any(op in f" {text}" for op in inert) for text in computations[name].values())
                for name in bodies), default=0)


def exported_step_ops(case: dict, platform_name: str = "cuda") -> dict[str, int]:
    """The StableHLO operations of the vae_jax epoch of `case` exported for `platform_name` (no device needed): what
    the step asks of the compiler before fusion, by kind."""
    import jax
    import numpy as np
    import optax
    from jax import export

    from vae_jax import builders, train
    from vae_jax import data as vae_data
    from vae_jax.configs import ModelConfig

    model = builders.build_model(ModelConfig(*ARCHITECTURES[case["model"]]), vae_data.describe("binarized_mnist"))
    tx = optax.flatten(optax.adam(1e-3)) if case.get("flatten") else optax.adam(1e-3)
    state = train.create_train_state(jax.random.key(0), model, tx, (784,))
    pixels = np.zeros((10 * case["batch"], 784), np.uint8)
    exported = export.export(jax.jit(lambda s, p, k: train.train_epoch(s, p, k, batch_size=case["batch"])),
                             platforms=[platform_name])(state, pixels, jax.random.key(1))
    counts = Counter(re.findall(r"= (stablehlo\.[a-z_]+)", exported.mlir_module()))
    return {"total": sum(counts.values()), "dot_general": counts["stablehlo.dot_general"],
            "reduce": counts["stablehlo.reduce"], "select": counts["stablehlo.select"]}


def jax_case(case: dict, pixels: np.ndarray) -> dict:
    import jax

    if case.get("minimal"):
        epoch_fn, state, data, compile_seconds = minimal_jax_epoch(case, pixels)

        def run_epoch(epoch: int) -> None:
            holder["state"], losses = epoch_fn(holder["state"], data, jax.random.fold_in(jax.random.key(1), epoch))
            jax.block_until_ready(losses)

        holder = {"state": state}
        times = _timed_epochs(run_epoch, case["epochs"])
        return {"epoch_times": times, "compile_seconds": compile_seconds, **_peak_memory(),
                "device": str(jax.devices()[0]), "step_kernels": step_kernels(epoch_fn.as_text())}
    epoch_fn, state, data, compile_seconds = compiled_jax_epoch(case, pixels)
    holder = {"state": state}

    def run_epoch(epoch: int) -> None:
        holder["state"], result = epoch_fn(holder["state"], data, jax.random.fold_in(jax.random.key(1), epoch))
        jax.block_until_ready(result.loss)

    times = _timed_epochs(run_epoch, case["epochs"])
    memory = _peak_memory()
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        memory["peak_device_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    return {"epoch_times": times, "compile_seconds": compile_seconds, **memory, "device": str(jax.devices()[0]),
            "matmul_kernels": matmul_kernels(epoch_fn.as_text()), "step_kernels": step_kernels(epoch_fn.as_text())}


def hlo_computations(hlo_text: str) -> dict[str, dict[str, str]]:
    """`{computation name: {instruction name: its text after " = "}}` of an HLO module's text, in order."""
    computations: dict[str, dict[str, str]] = {}
    body: dict[str, str] = {}
    for line in hlo_text.splitlines():
        header = re.match(r"(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        instruction = re.match(r"\s+(?:ROOT )?%?([\w.\-]+) = (.*)$", line)
        if header:
            body = computations.setdefault(header.group(1), {})
        elif instruction:
            body[instruction.group(1)] = instruction.group(2)
    return computations


def matmul_kernels(hlo_text: str) -> dict[str, int]:
    """How many matrix products of a compiled HLO module each kernel runs: `xla` for XLA's own `dot`
    instructions, else the library of the custom fusion (`ynn`, `xnn`, `onednn`) whose computation holds a dot."""
    computations = {name: list(body.values()) for name, body in hlo_computations(hlo_text).items()}
    counts: Counter = Counter()
    library_bodies = set()
    for body in computations.values():
        for line in body:
            library, called = re.search(r'"kind":"__(\w+?)_fusion"', line), re.search(r"calls=%?([\w.\-]+)", line)
            if library and called and any(" dot(" in inner for inner in computations.get(called.group(1), [])):
                counts[library.group(1)] += 1
                library_bodies.add(called.group(1))
    for name, body in computations.items():
        if name not in library_bodies:
            counts["xla"] += sum(" dot(" in line for line in body)
    return dict(sorted(counts.items()))


def torch_case(case: dict, pixels: np.ndarray) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from tests.torch_reference import TorchVAE

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    latent_dim, encoder_hidden, decoder_hidden = ARCHITECTURES[case["model"]]
    model = TorchVAE(latent_dim, list(encoder_hidden), list(decoder_hidden)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=case.get("fused", False))
    data = torch.tensor(pixels, dtype=torch.float32, device=device)

    def loss_fn(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return model.terms(x, eps)[0].mean()

    loss_step = torch.compile(loss_fn) if case["framework"] == "torch_compile" else loss_fn
    batch, steps = case["batch"], len(pixels) // case["batch"]

    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_step(x, torch.randn(x.shape[0], 1, latent_dim, device=device)).backward()
        optimizer.step()

    start = time.perf_counter()
    step(data[:batch])  # compiles under torch.compile; a warm-up step otherwise
    if device == "cuda":
        torch.cuda.synchronize()
    first_step = time.perf_counter() - start

    def run_epoch(epoch: int) -> None:
        order = torch.randperm(len(data), device=device)
        for i in range(steps):
            step(data[order[i * batch:(i + 1) * batch]])
        if device == "cuda":
            torch.cuda.synchronize()

    times = _timed_epochs(run_epoch, case["epochs"])
    memory = _peak_memory()
    if device == "cuda":
        memory["peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return {"epoch_times": times, "compile_seconds": max(0.0, first_step - statistics.median(times) / steps),
            **memory, "device": device, "torch": torch.__version__}


def iwae_case(case: dict, pixels: np.ndarray) -> dict:
    import jax
    import optax

    from vae_jax import builders, evaluate, train
    from vae_jax import data as vae_data
    from vae_jax.configs import ModelConfig

    model = builders.build_model(ModelConfig(*ARCHITECTURES[case["model"]]), vae_data.describe("binarized_mnist"))
    params = train.create_train_state(jax.random.key(0), model, optax.adam(1e-3), (784,)).params
    data = jax.device_put(pixels)
    kwargs = {"num_samples": case["k"], "batch_size": case["batch"], "chunk_size": case["chunk"]}
    start = time.perf_counter()
    compiled = evaluate.evaluate_iwae.lower(model, params, data, jax.random.key(0), **kwargs).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, data, jax.random.key(0)))
    return {"seconds": time.perf_counter() - start, "compile_seconds": compile_seconds, **_peak_memory(),
            "device": str(jax.devices()[0])}


def matmul_peak(size: int = 2048, repeats: int = 20) -> dict:
    """True-float32 GFLOP/s of a square matrix product, best of `repeats`, in JAX and in PyTorch, each on the device
    its training runs on (JAX's default device; CUDA for PyTorch where there is one) and at the precision it trains
    with (`highest` in JAX; PyTorch's default, no TF32)."""
    import jax
    import torch

    a = jax.random.normal(jax.random.key(0), (size, size))
    product = jax.jit(lambda x: jax.numpy.matmul(x, x, precision="highest"))
    product(a).block_until_ready()
    best_jax = min(_time(lambda: product(a).block_until_ready()) for _ in range(repeats))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t = torch.randn(size, size, device=device)

    def torch_product() -> None:
        t @ t
        if device == "cuda":
            torch.cuda.synchronize()

    torch_product()
    best_torch = min(_time(torch_product) for _ in range(repeats))
    flops = 2 * size**3
    return {"jax_gflops": flops / best_jax / 1e9, "torch_gflops": flops / best_torch / 1e9}


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def worker(case: dict) -> dict:
    if "cpus" in case:  # pin to these cores before a framework sizes its thread pools
        os.sched_setaffinity(0, case["cpus"])
    if os.environ.get("VAE_JAX_COMPILATION_CACHE"):  # benchmark.py --compilation-cache: the cases share one
        from vae_jax import compilation_cache

        compilation_cache.enable()
    from vae_jax import data as vae_data

    if case["framework"] == "peak":
        return matmul_peak()
    split = "test" if case["framework"] == "iwae" else "train"
    pixels = vae_data.load_split("binarized_mnist", split, manual_dir=case.get("manual_dir"))
    runner = {"jax": jax_case, "torch": torch_case, "torch_compile": torch_case, "iwae": iwae_case}
    return runner[case["framework"]](case, pixels)


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []

    def field(key: str, default: str) -> str:  # the first core's value
        return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith(key)), default)

    cpu = field("model name", platform.processor()) if cpuinfo else ""
    flags = field("flags", "").split()
    description = {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
                   "python": platform.python_version(),
                   "cpu_flags": sorted(f for f in flags if re.match(r"(avx|amx|fma)", f))}
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        description["gpu"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    return description


def run_worker(command: list[str], xla_flags: str = "") -> dict:
    """Runs a Python worker script in a fresh process, with `xla_flags` added to the environment's XLA_FLAGS, and
    returns the JSON object of its last output line, or `{"error": its last line of stderr}`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["XLA_FLAGS"] = " ".join(filter(None, (os.environ.get("XLA_FLAGS", ""), xla_flags)))
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_case(case: dict, xla_flags: str = "") -> dict:
    """Runs one case of `worker` in a fresh process (see `run_worker`)."""
    return {**case, **run_worker([str(Path(__file__).resolve()), "--worker", json.dumps(case)], xla_flags)}


def save_report(report: dict, out: str, render: Callable[[dict], str]) -> None:
    """Writes `report`, with the machine and this command line added, to `out` as JSON; prints `render` of it."""
    report = {"machine": machine(), **report, "command": "python " + " ".join(sys.argv)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    print("\n" + render(report))


def markdown(lines: list[str], width: int = 116) -> str:
    """`lines` as Markdown: table rows as they are, prose wrapped at `width` columns like the README's."""
    def wrap(line: str) -> list[str]:
        return [line] if line.startswith("|") or not line else textwrap.wrap(line, width, break_on_hyphens=False)

    return "\n".join(wrapped for line in lines for wrapped in wrap(line))


def case_seconds(result: dict) -> float:
    """Median seconds per epoch of one run of a case; NaN if it failed."""
    return statistics.median(result["epoch_times"]) if "epoch_times" in result else float("nan")


def merge_rounds(runs: list[dict]) -> dict:
    """One case's runs in several rounds as one result: all epoch times (and each round's median), the median
    compile time and the largest peak memory; the first failure if any run failed."""
    failed = next((run for run in runs if "epoch_times" not in run), None)
    if failed:
        return failed
    merged = {**runs[0], "epoch_times": [t for run in runs for t in run["epoch_times"]],
              "round_seconds": [case_seconds(run) for run in runs],
              "compile_seconds": statistics.median(run["compile_seconds"] for run in runs)}
    for memory in ("peak_rss_mb", "peak_device_mb"):
        if memory in runs[0]:
            merged[memory] = max(run[memory] for run in runs)
    return merged


def add_time_ratios(results: list[dict], rounds: list[list[dict]]) -> None:
    """Adds to each of `results` its time against eager PyTorch at the same model and batch, from `rounds` (each a
    run of every case, in the order of `results`): the median over rounds of the ratio within a round, and the
    lowest and highest (a case with a failed run gets none)."""
    for index, result in enumerate(results):
        reference = next((i for i, r in enumerate(results) if r["framework"] == "torch"
                          and r["model"] == result["model"] and r["batch"] == result["batch"]), None)
        if reference is None:
            continue
        ratios = [case_seconds(run[index]) / case_seconds(run[reference]) for run in rounds]
        if not any(math.isnan(ratio) for ratio in ratios):
            result["time_ratio_vs_torch_eager"] = statistics.median(ratios)
            result["time_ratio_range"] = [min(ratios), max(ratios)]


def summarize(result: dict, peak_gflops: float) -> dict:
    if "epoch_times" not in result:
        return result
    seconds = case_seconds(result)
    examples = (50_000 // result["batch"]) * result["batch"]
    flops = training_flops_per_example(*ARCHITECTURES[result["model"]]) * examples / seconds
    return {**result, "seconds_per_epoch": seconds, "examples_per_second": examples / seconds,
            "gflops": flops / 1e9, "fraction_of_matmul_peak": flops / 1e9 / peak_gflops}


def _ratio_text(result: dict) -> str:
    """`0.62 (0.60-0.65)`: the median ratio and, where the rounds differ, their range; `-` without a ratio."""
    if "time_ratio_vs_torch_eager" not in result:
        return "-"
    low, high = result.get("time_ratio_range", [result["time_ratio_vs_torch_eager"]] * 2)
    text = f"{result['time_ratio_vs_torch_eager']:.2f}"
    return text if f"{low:.2f}" == f"{high:.2f}" else f"{text} ({low:.2f}-{high:.2f})"


IMPLEMENTATIONS = {"jax": "vae_jax", "torch": "PyTorch eager", "torch_compile": "torch.compile"}


def implementation(result: dict) -> str:
    """The table's name of a case: its framework, and what it changes."""
    name = "minimal JAX step" if result.get("minimal") else IMPLEMENTATIONS[result["framework"]]
    details = [result["dtype"]] if "dtype" in result else []
    if result.get("flatten"):
        details.append("Adam on one flattened vector")
    if result.get("fused"):
        details.append("fused Adam")
    if result.get("xla_flags"):
        details.append(f"XLA_FLAGS={result['xla_flags']}")
    return name + (f" ({', '.join(details)})" if details else "")


def markdown_report(report: dict) -> str:
    """The performance table and the machine, peak and evaluation figures under it, from `report`."""
    lines = ["| model | implementation | batch | s/epoch | examples/s | compile s | peak MB | % of matmul peak "
             "| time vs PyTorch eager |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["training"]:
        name = implementation(r)
        if "seconds_per_epoch" not in r:
            lines.append(f"| {r['model']} | {name} | {r['batch']} | error: {r.get('error')} | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {name} | {r['batch']} | {r['seconds_per_epoch']:.2f} | {r['examples_per_second']:,.0f} "
            f"| {r['compile_seconds']:.1f} | {r.get('peak_device_mb', r['peak_rss_mb']):.0f} "
            f"| {100 * r['fraction_of_matmul_peak']:.0f} | {_ratio_text(r)} |")
    machine, peak, iwae = report["machine"], report["matmul_peak"], report["iwae_eval"]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}"
                  + (f", {machine['gpu']}" if machine.get("gpu") else "") + ". "
              f"Measured float32 matrix-multiply peak (2048 x 2048): {peak['jax_gflops']:.0f} GFLOP/s in JAX, "
              f"{peak['torch_gflops']:.0f} GFLOP/s in PyTorch."]
    if iwae and "seconds" in iwae:
        lines[-1] += (f" K = {iwae['k']} importance-weighted evaluation of the 10,000 test images "
                      f"({iwae['model']} model): {iwae['seconds']:.1f} s.")
    kernels = [(implementation(r), r["step_kernels"]) for r in report["training"]
               if "step_kernels" in r and r["model"] == "cs236" and r["batch"] == 100]
    if kernels:
        lines += ["", "Launches per step of the compiled cs236 epoch (instructions in the loop's body): "
                  + "; ".join(f"{name} {count}" for name, count in kernels) + "."]
    if report.get("exported_step_ops"):
        ops = report["exported_step_ops"]
        lines += ["", "The cs236 epoch exported for CUDA (StableHLO, before fusion): "
                  + "; ".join(f"{name}: {counts['total']} operations ({counts['reduce']} reductions, "
                              f"{counts['select']} selects)" for name, counts in ops.items()) + "."]
    return markdown(lines)


def cases(kind: str, common: dict) -> list[dict]:
    """The cases of a run: `cpu` (the committed CPU table); `cs236`, its first three rows alone (the cs236 epoch
    against eager PyTorch and torch.compile, for a slow CPU); or `gpu`, which adds what a GPU's step is measured
    against (a minimal JAX step, Adam on one flattened vector, PyTorch's fused Adam, XLA's autotuning off) and
    drops the slow torch.compile of the large model."""
    if kind == "cs236":
        return [{"framework": f, "model": "cs236", "batch": 100, **common} for f in ("jax", "torch", "torch_compile")]
    listed = [{"framework": f, "model": m, "batch": 100, **common}
              for m in ARCHITECTURES for f in ("jax", "torch", "torch_compile")
              if not (kind == "gpu" and m == "large" and f == "torch_compile")]
    listed += [{"framework": "jax", "model": "cs236", "batch": 100, "dtype": "bfloat16", **common}]
    listed += [{"framework": f, "model": "cs236", "batch": b, **common} for b in (1024, 4096) for f in ("jax", "torch")]
    if kind == "gpu":
        autotune_off = "--xla_gpu_autotune_level=0"
        listed += [{"framework": "jax", "model": "cs236", "batch": 100, "minimal": True, **common},
                   {"framework": "jax", "model": "cs236", "batch": 100, "minimal": True, "xla_flags": autotune_off,
                    **common},
                   {"framework": "jax", "model": "cs236", "batch": 100, "xla_flags": autotune_off, **common},
                   {"framework": "jax", "model": "cs236", "batch": 100, "flatten": True, **common},
                   {"framework": "torch", "model": "cs236", "batch": 100, "fused": True, **common}]
    return listed


def main() -> None:
    """Every case in a fresh process, then the JSON report and its table (or, with --worker, one case)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--manual-dir", default=None)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per case, after one warm-up epoch")
    parser.add_argument("--rounds", type=int, default=3, help="times each case runs, all cases in turn each time")
    parser.add_argument("--iwae-k", type=int, default=5000, help="0 skips the importance-weighted evaluation")
    parser.add_argument("--cases", choices=("cpu", "cs236", "gpu"), default="cpu", help="which cases (see `cases`)")
    parser.add_argument("--compilation-cache", default=None,
                        help="a folder for one compilation cache of all cases (on a GPU, XLA's autotuning results of "
                             "one case's matrix products then serve the next); default: none")
    parser.add_argument("--out", default="experiments/results/benchmark_cpu.json")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    if args.compilation_cache:
        os.environ["VAE_JAX_COMPILATION_CACHE"] = args.compilation_cache
    listed = cases(args.cases, {"epochs": args.epochs, "manual_dir": args.manual_dir})
    peak = run_case({"framework": "peak"})
    peak_gflops = max(peak.get("jax_gflops", 0), peak.get("torch_gflops", 0))
    rounds = []
    for _ in range(args.rounds):
        rounds.append([run_case(case, case.get("xla_flags", "")) for case in listed])
        print(json.dumps([case_seconds(r) for r in rounds[-1]]), flush=True)
    results = [summarize(merge_rounds(list(runs)), peak_gflops) for runs in zip(*rounds)]
    add_time_ratios(results, rounds)
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k not in ("epoch_times", "manual_dir")}), flush=True)
    iwae = None
    if args.iwae_k:
        iwae = run_case({"framework": "iwae", "model": "cs236", "k": args.iwae_k, "batch": 100, "chunk": 500,
                         "manual_dir": args.manual_dir})
        print(json.dumps(iwae), flush=True)
    exported = {implementation(case): exported_step_ops(case)
                for case in ({"framework": "jax", "model": "cs236", "batch": 100},
                             {"framework": "jax", "model": "cs236", "batch": 100, "flatten": True})}
    save_report({"matmul_peak": peak, "training": results, "iwae_eval": iwae, "exported_step_ops": exported},
                args.out, markdown_report)


if __name__ == "__main__":
    main()
