"""The README's Python example runs as written and prints what the README says it prints; its tables are the
committed scripts' output."""

import json
import os
import re
import subprocess
import sys

from tests.conftest import REPO


def _python_block(readme: str, heading: str) -> str:
    section = readme[readme.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_api_example(data_dir, shared_data):
    readme = (REPO / "README.md").read_text()
    code = _python_block(readme, "## Python API")
    env = {**os.environ, "TFDS_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = re.fullmatch(r"test NELBO after 2 epochs: (\d+\.\d) nats\n", done.stdout)
    assert printed, done.stdout
    claimed = re.search(r"which prints `test NELBO after 2 epochs: (\d+\.\d) nats`", readme).group(1)
    # Same seed, same machine: the same number; other CPUs may differ in the last float32 digits.
    assert abs(float(printed.group(1)) - float(claimed)) <= 0.2


def test_custom_model_script_runs(data_dir, shared_data, tmp_path):
    env = {**os.environ, "TFDS_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    out = tmp_path / "custom.json"
    done = subprocess.run(
        [sys.executable, "experiments/custom_model.py", "--manual-dir", str(shared_data / "binarized_mnist"),
         "--epochs", "1", "--iwae-samples", "5", "--workdir", str(tmp_path / "run"), "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["config"]["model"] == "residual_mlp" and record["num_examples"] == 10_000 and record["epoch"] == 1
    assert record["iwae_k"] == 5 and record["estimator"] == "iwae" and record["split_size"] == 10_000
    assert record["nll"] < record["nelbo"] < 140


def test_results_tables_are_what_compare_prints_over_the_committed_results(capsys):
    from vae_jax import cli

    assert cli.main(["compare", str(REPO / "experiments" / "results")]) == 0
    tables = capsys.readouterr().out
    readme = (REPO / "README.md").read_text()
    rows = [line for line in tables.splitlines() if line.startswith("| ")]
    assert len(rows) >= 4
    for line in tables.splitlines():
        assert line in readme, f"README lacks this line of `compare experiments/results`: {line}"


def test_performance_section_is_what_the_committed_benchmark_and_profile_print():
    import benchmark
    import profile_cpu

    readme = (REPO / "README.md").read_text().splitlines()
    for script, output in ((benchmark, "benchmark_cpu.json"), (profile_cpu, "profile_cpu.json")):
        report = json.loads((REPO / "experiments" / "results" / output).read_text())
        lines = [line for line in script.markdown_report(report).splitlines() if line]
        assert len(lines) > 10
        for line in lines:
            assert line in readme, f"README lacks this line of {output}'s report: {line}"
