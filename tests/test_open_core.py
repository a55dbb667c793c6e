"""The open core: a model that vae_jax does not define (a VAE whose posterior takes one planar-flow step, written
here) trains, is killed, resumes, evaluates and is compared through the same path as the presets; and the layering
of the library's modules."""

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO
from vae_jax import cli, configs, contract, distributions, readback, resolve, trainer
from vae_jax.checkpoint import Checkpointer
from vae_jax.errors import ConfigError
from vae_jax.workdir import METRICS_FILE

LATENT = 2


class PlanarFlowVAE(nn.Module):
    """q(z|x): a Gaussian from an MLP, then one planar flow step z = z0 + u tanh(w . z0 + b) (Rezende & Mohamed,
    2015) with learned u, w, b, so log q(z|x) = log N(z0) - log |1 + (1 - tanh^2) w . u|; p(z) = N(0, I);
    p(x|z) Bernoulli from an MLP. A model of the contract in its `__call__`."""

    hidden: int = 16

    def setup(self):
        self.encoder = nn.Sequential([nn.Dense(self.hidden), nn.elu, nn.Dense(2 * LATENT)])
        self.decoder = nn.Sequential([nn.Dense(self.hidden), nn.elu, nn.Dense(784)])
        self.u = self.param("u", nn.initializers.normal(0.1), (LATENT,))
        self.w = self.param("w", nn.initializers.normal(0.1), (LATENT,))
        self.b = self.param("b", nn.initializers.zeros, ())

    def __call__(self, x, key, num_samples):
        mean, logvar = jnp.split(self.encoder(x), 2, axis=-1)
        eps = jax.random.normal(key, (num_samples, LATENT))
        z0 = distributions.reparameterize(mean, logvar, eps)
        wu = jnp.dot(self.w, self.u)
        u_hat = self.u + (jax.nn.softplus(wu) - 1.0 - wu) * self.w / jnp.sum(jnp.square(self.w))  # u_hat . w >= -1
        activation = jnp.tanh(z0 @ self.w + self.b)  # [S]
        z = z0 + activation[:, None] * u_hat
        log_det = jnp.log(jnp.abs(1.0 + (1.0 - jnp.square(activation)) * jnp.dot(self.w, u_hat)))
        log_q = distributions.gaussian_log_prob_of_noise(eps, logvar) - log_det
        log_px = distributions.bernoulli_log_prob(x, self.decoder(z))
        return contract.JointSamples(log_px, distributions.standard_normal_log_prob(z), log_q, posterior_mean=mean)


CONFIG = configs.apply_overrides(configs.get_config("cs236"), ["epochs=2", "eval_batch_size=5000"])
TRAIN_IN_A_SUBPROCESS = """
import sys
from tests.test_open_core import CONFIG, PlanarFlowVAE
from vae_jax import configs, trainer
config = configs.apply_overrides(CONFIG, ["epochs=50"])
trainer.fit(config, sys.argv[1], model=PlanarFlowVAE(), data_dir=sys.argv[2], progress=False)
"""


def test_the_model_describes_itself_for_the_card_and_the_hash():
    description = contract.describe(contract.as_model(PlanarFlowVAE()))
    assert description == {"class": "tests.test_open_core.PlanarFlowVAE", "hidden": 16}
    assert contract.describe(contract.as_model(PlanarFlowVAE(hidden=8))) != description


@pytest.fixture(scope="module")
def flow_runs(tmp_path_factory, shared_data, data_dir):
    """The flow model trained for two epochs without interruption, and once killed mid-run and resumed."""
    args = {"data_dir": data_dir, "manual_dir": shared_data / "binarized_mnist", "progress": False,
            "log": lambda message: None}
    whole = tmp_path_factory.mktemp("flow_whole")
    trainer.fit(CONFIG, whole, model=PlanarFlowVAE(), **args)
    killed = tmp_path_factory.mktemp("flow_killed")
    log = killed.parent / "flow_killed.log"
    with open(log, "w") as stderr, subprocess.Popen(
            [sys.executable, "-c", TRAIN_IN_A_SUBPROCESS, str(killed), str(data_dir)], cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=stderr) as process:
        deadline = time.monotonic() + 600
        while not (killed / "checkpoints" / "1").is_dir() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)  # in epoch 2, or writing its checkpoint
    assert (killed / "checkpoints" / "1").is_dir(), log.read_text()[-2000:]
    notes = []
    trainer.fit(CONFIG, killed, model=PlanarFlowVAE(), **{**args, "log": notes.append})
    return whole, killed, args, notes


def _params(workdir):
    return resolve.open_run(workdir, PlanarFlowVAE(), Checkpointer(workdir).epochs()[-1])[1].state.params


def test_a_killed_run_of_the_flow_resumes_to_the_same_parameters(flow_runs):
    whole, killed, _, notes = flow_runs
    assert any(note.startswith("resuming") for note in notes)
    for a, b in zip(jax.tree.leaves(_params(whole)), jax.tree.leaves(_params(killed))):
        np.testing.assert_array_equal(a, b)
    lines = [json.loads(line) for line in (killed / METRICS_FILE).read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert lines[-1]["val_active_units"] is not None and lines[-1]["val_kl_per_dim"] == []
    # About 199 and 191: learning, and below the best model without a latent (about 206) after two epochs.
    assert lines[-1]["val_nelbo"] < min(lines[0]["val_nelbo"], 200)


def test_the_flow_is_evaluated_carded_and_compared_like_a_preset(flow_runs, capsys):
    whole, _, args, _ = flow_runs
    result = readback.evaluate_checkpoint(whole, "test", model=PlanarFlowVAE(), iwae_samples=20,
                                        data_dir=args["data_dir"])
    assert result["config"]["model"] == {"class": "tests.test_open_core.PlanarFlowVAE", "hidden": 16}
    assert result["config"]["optim"]["learning_rate"] == 1e-3 and result["estimator"] == "iwae"
    assert 0 < result["nelbo"] - result["nll"] < 15 and result["nll"] < 200  # about 190
    capsys.readouterr()
    assert cli.main(["compare", str(whole)]) == 0
    table = capsys.readouterr().out
    assert f"| {whole.name} | PlanarFlowVAE | {result['config_hash']} | {result['nelbo']:.2f} ± " in table
    # Without the model object, the command line says how to get at it, in one line.
    assert cli.main(["eval", "--workdir", str(whole)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run of a model that vae_jax does not define" in err


def test_resuming_with_another_model_is_refused(flow_runs):
    whole, _, args, _ = flow_runs
    with pytest.raises(ConfigError, match=r"model.hidden differ"):
        trainer.fit(configs.apply_overrides(CONFIG, ["epochs=3"]), whole, model=PlanarFlowVAE(hidden=8), **args)


def test_a_new_run_of_the_flow_starts_from_another_runs_best_checkpoint(flow_runs, tmp_path):
    whole, _, args, _ = flow_runs
    # On the IWAE bound, with a learning rate too small to move a float32 parameter: it ends where it began.
    config = configs.apply_overrides(CONFIG, [f"init_from={whole}", "epochs=1", "objective=iwae", "num_samples=2",
                                              "optim.learning_rate=1e-30"])
    notes = []
    record = trainer.fit(config, tmp_path / "child", model=PlanarFlowVAE(), **{**args, "log": notes.append})
    best = Checkpointer(whole).best_epoch()
    assert notes == [f"starting from the parameters of {whole}, epoch {best} (its best validation loss)"]
    parent = resolve.open_run(whole, PlanarFlowVAE(), best)[1].state.params
    for started, expected in zip(jax.tree.leaves(_params(tmp_path / "child")), jax.tree.leaves(parent)):
        np.testing.assert_array_equal(started, expected)
    lines = [json.loads(line) for line in (whole / METRICS_FILE).read_text().splitlines()]
    assert record["val_nelbo"] == lines[best - 1]["val_nelbo"] and record["val_nll_bound"] < record["val_nelbo"]
    with pytest.raises(ConfigError, match=re.escape(f"init_from={whole} holds a run of another model (")):
        trainer.fit(config, tmp_path / "other", model=PlanarFlowVAE(hidden=8), **args)


def _imports(module: str) -> set[str]:
    """The vae_jax modules that `vae_jax/<module>.py` imports at its top level or anywhere inside."""
    tree = ast.parse((REPO / "vae_jax" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vae_jax"):
            names = [node.module.split(".", 1)[1]] if "." in node.module else [a.name for a in node.names]
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("vae_jax."))
    return found


def test_the_layering_reads_one_way():
    assert _imports("configs") == {"errors"}
    assert _imports("protocol") == {"configs", "data", "errors", "__version__"}
    assert _imports("workdir") == {"configs", "errors"}
    assert not {"trainer", "readback", "cli"} & _imports("resolve")
    assert "data" not in _imports("objective")
    for module in ("models", "hierarchical", "priors", "objective", "train", "evaluate", "contract"):
        assert "configs" not in _imports(module), module
    figure_code = [path.name for path in (REPO / "vae_jax").glob("*.py")
                   if re.search(r"^\s*(from|import) (PIL|matplotlib)", path.read_text(), re.M)]
    assert figure_code == ["figures.py"]


def test_one_value_per_run_and_sizes_from_the_data():
    sources = {path.stem: path.read_text() for path in (REPO / "vae_jax").glob("*.py")}
    # Only the resolution builds a preset's model for a run; only it and the advice after a divergence ask about it.
    assert sorted(name for name, text in sources.items() if "build_model(" in text) == ["builders", "resolve"]
    assert sorted(name for name, text in sources.items() if re.search(r"is_preset", text)) == ["resolve", "workdir"]
    assert [line for line in sources["resolve"].splitlines() if "run.is_preset" in line] == [
        "    if run.is_preset and run.config.model.stochastic_layers == 1:", "    if run.is_preset:"]
    # The size of an example is stated once, in the data layer's dataset descriptions (`catalogue.ENTRIES`): no other
    # module has 784 or 28 in its code, and none names a NUM_PIXELS.
    sizes = {name for name, text in sources.items() for node in ast.walk(ast.parse(text))
             if isinstance(node, ast.Constant) and type(node.value) is int and node.value in (784, 28)}
    assert sizes == {"catalogue"}
    assert [name for name, text in sources.items() if "NUM_PIXELS" in text] == []


def test_the_house_sizes():
    too_long = []
    for path in sorted((REPO / "vae_jax").glob("*.py")):
        text = path.read_text()
        if text.count("\n") > 400:
            too_long.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{path.name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def test_compare_loads_neither_jax_nor_training_nor_evaluation(tmp_path):
    (tmp_path / "eval.jsonl").write_text(json.dumps({"nelbo": 100.0, "split": "test", "config": {}}) + "\n")
    code = (f"import sys; from vae_jax import cli; cli.main(['compare', {str(tmp_path)!r}]); "
            "print(sorted(m for m in ('jax', 'vae_jax.trainer', 'vae_jax.readback', 'vae_jax.evaluate', "
            "'vae_jax.train', 'orbax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "[]" and "| 100.00 |" in done.stdout


def test_importing_vae_jax_stays_light():
    code = ("import sys, vae_jax; print(sorted(m for m in ('orbax', 'PIL', 'tqdm', 'tensorflow', 'jax', 'optax') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
