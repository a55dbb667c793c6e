"""The README serves a newcomer's first hour and says only what committed outputs show: its Python example runs as
written and prints what it says; its results table, and the tables of docs/, are the committed scripts' output."""

import json
import os
import re
import subprocess
import sys

from tests.conftest import REPO

README = (REPO / "README.md").read_text()
RESULTS = REPO / "experiments" / "results"


def _python_block(text: str, heading: str) -> str:
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_fits_one_sitting_and_leads_with_install_commands_and_api():
    assert len(README.encode()) <= 12_000
    first_screen = "\n".join(README.splitlines()[:60])
    for needle in ("pip install -r requirements.txt", "python -m vae_jax train --workdir", "python -m pytest -q",
                   "```python", "vae_jax.fit("):
        assert needle in first_screen, needle
    for page in ("api", "protocol", "results", "studies", "performance", "scaling", "architecture"):
        assert f"docs/{page}.md" in README and (REPO / "docs" / f"{page}.md").is_file(), page


def test_python_api_example(data_dir, shared_data, tmp_path):
    code = _python_block(README, "## The Python API by example").replace('"runs/readme"', repr(str(tmp_path / "run")))
    env = {**os.environ, "TFDS_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = re.fullmatch(r"test NELBO after 2 epochs: (\d+\.\d) nats\n", done.stdout)
    assert printed, done.stdout
    claimed = re.search(r"which prints `test NELBO after 2 epochs: (\d+\.\d) nats`", README).group(1)
    # Same seed, same machine: the same number; other CPUs may differ in the last float32 digits.
    assert abs(float(printed.group(1)) - float(claimed)) <= 0.2


def test_custom_model_script_runs(data_dir, shared_data, tmp_path):
    env = {**os.environ, "TFDS_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "experiments/custom_model.py", "--manual-dir", str(shared_data / "binarized_mnist"),
         "--epochs", "1", "--iwae-samples", "5", "--workdir", str(tmp_path / "run"), "--results",
         str(tmp_path / "results")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    [record] = [json.loads(line) for line in (tmp_path / "results" / "eval.jsonl").read_text().splitlines()]
    assert record["config"]["model"]["class"] == "vae_jax.models.VAE"
    assert record["config"]["model"]["encoder"]["class"] == "custom_model.ResidualEncoder"
    assert record["num_examples"] == 10_000 and record["epoch"] == 1 and record["iwae_k"] == 5
    assert record["nll"] < record["nelbo"] < 140
    assert len((tmp_path / "results" / "metrics.jsonl").read_text().splitlines()) == 1


def test_the_results_table_is_the_committed_eval_lines():
    import study_report

    rows = [line for line in README.splitlines() if line.startswith("| ") and "`" in line and "±" in line]
    assert len(rows) >= 3
    for row in rows:
        run = re.search(r"\| `([\w/.-]+)`", row).group(1)  # run names may hold dots and dashes (lr1e-3)
        stated_k = re.search(r"K = (\d+)", row)  # a row whose K is not the table's 5000 says so
        line = study_report.nll_line_on_test_split(RESULTS / run, int(stated_k.group(1)) if stated_k else 5000,
                                                   "fivo" if "FIVO" in row else "iwae")
        if "nats/step" in row:  # sequences: the split's total per time step, three decimals
            quoted = f"{line['nll_per_frame']:.3f} ± {line['nll_per_frame_stderr']:.3f} nats/step"
        else:
            quoted = f"{line['nll']:.2f} ± {line['nll_stderr']:.2f}"
        assert row.rstrip(" |").endswith(quoted), row
        if "test NELBO" in row.split(" | ")[2]:  # a NELBO quoted beside the run's name is that line's too
            assert f"(test NELBO {line['nelbo']:.2f} ± {line['nelbo_stderr']:.2f})" in row, row


def test_results_tables_are_what_compare_prints_over_the_committed_results(capsys):
    from vae_jax import cli

    assert cli.main(["compare", str(RESULTS)]) == 0
    tables = capsys.readouterr().out
    page = (REPO / "docs" / "results.md").read_text()
    assert len([line for line in tables.splitlines() if line.startswith("| ")]) >= 4
    for line in tables.splitlines():
        assert line in page, f"docs/results.md lacks this line of `compare experiments/results`: {line}"


def test_the_sequence_study_is_its_committed_report():
    import sequence_report

    report = sequence_report.markdown(sequence_report.rows(RESULTS / "sequences"))
    assert report == (RESULTS / "sequences" / "results.md").read_text()
    page = (REPO / "docs" / "studies.md").read_text()
    for line in (line for line in report.splitlines() if line.startswith("| ")):  # the tables' rows
        assert line in page, f"docs/studies.md lacks this line of experiments/results/sequences/results.md: {line}"


def test_the_amortization_study_is_its_committed_report():
    import amortization

    summary = json.loads((RESULTS / "amortization" / "summary.json").read_text())
    found = amortization.findings(summary["summaries"], summary["traces"])
    report = amortization.table(summary["summaries"]) + "\n" + amortization.findings_table(found)
    assert report == (RESULTS / "amortization" / "results.md").read_text()
    page = (REPO / "docs" / "studies.md").read_text()
    for line in report.splitlines():
        assert line in page, f"docs/studies.md lacks this line of experiments/results/amortization/results.md: {line}"
    steps = [found[run]["prior_steps_to_encoder"] for run in ("cs236", "default")]
    assert f"needs {steps[0]} steps for cs236 and {steps[1]} for `default`" in page


def test_performance_tables_are_what_the_committed_scripts_print():
    import benchmark
    import conv_in_scan
    import profile_cpu
    import time_to_result

    page = (REPO / "docs" / "performance.md").read_text().splitlines()
    for script, output in ((benchmark, "benchmark_cpu.json"), (benchmark, "benchmark_cpu_epyc.json"),
                           (profile_cpu, "profile_cpu.json"),
                           (time_to_result, "time_to_result_cpu.json"), (conv_in_scan, "conv_in_scan_cpu.json")):
        report = json.loads((RESULTS / output).read_text())
        lines = [line for line in script.markdown_report(report).splitlines() if line]
        assert len(lines) > 8
        for line in lines:
            assert line in page, f"docs/performance.md lacks this line of {output}'s report: {line}"


def _agrees_as_shown(shown: str, value: float) -> bool:
    """Whether the figure `shown` (e.g. "0.0896") is `value` rounded to the digits shown."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown) - value) <= 0.5 * 10 ** -decimals + 1e-12


def test_gpu_figures_are_those_of_the_committed_benchmark():
    """docs/performance.md's GPU table and the README's GPU sentence against the GPU task's benchmark output."""
    report = json.loads((RESULTS / "gpu_h200_6d081d1" / "benchmark_gpu_h200_6d081d1.json").read_text())

    def training(framework, model="cs236", batch=100, dtype=None):
        [row] = [r for r in report["training"] if (r["framework"], r["model"], r["batch"], r.get("dtype")) ==
                 (framework, model, batch, dtype)]
        return row["seconds_per_epoch"], row["compile_seconds"]

    iwae = report["iwae_eval"]
    expected = {  # the table's rows: (s/epoch, compile s) for each batch the row names
        "vae_jax cs236": [training("jax")],
        "PyTorch eager cs236": [training("torch")],
        "torch.compile cs236": [training("torch_compile")],
        "vae_jax large (z=32, 512-512)": [training("jax", "large")],
        "PyTorch eager large": [training("torch", "large")],
        "vae_jax cs236 bfloat16": [training("jax", dtype="bfloat16")],
        "vae_jax cs236, batch 1024 / 4096": [training("jax", batch=1024), training("jax", batch=4096)],
        "PyTorch eager cs236, batch 1024 / 4096": [training("torch", batch=1024), training("torch", batch=4096)],
        "K = 5000 importance-weighted evaluation, 10,000 test images, cs236": [(iwae["seconds"],
                                                                               iwae["compile_seconds"])],
    }
    page = (REPO / "docs" / "performance.md").read_text()
    table = page[page.index("## On one GPU (H200)"):].split("\n\n")[2].splitlines()[2:]
    assert [line.split(" | ")[0].lstrip("| ") for line in table] == list(expected)
    for line in table:
        name, seconds, compile_seconds = (cell.strip() for cell in line.strip("|").split("|"))
        for column, shown in ((0, seconds), (1, compile_seconds)):
            if shown != "–":  # PyTorch eager compiles nothing
                figures = [figure.removesuffix(" s") for figure in shown.split(" / ")]
                assert len(figures) == len(expected[name])
                for figure, measured in zip(figures, expected[name]):
                    assert _agrees_as_shown(figure, measured[column]), (name, figure, measured[column])
    sentence = re.search(r"a cs236 epoch in ([\d.]+) s against ([\d.]+) s for eager PyTorch and ([\d.]+) s for "
                         r"`torch.compile` on the same GPU, and the\s+K = 5000 evaluation of the test split in "
                         r"([\d.]+) s", README)
    for shown, measured in zip(sentence.groups(), (training("jax")[0], training("torch")[0],
                                                   training("torch_compile")[0], iwae["seconds"])):
        assert _agrees_as_shown(shown, measured), (shown, measured)
