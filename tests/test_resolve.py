"""The run resolved once (`vae_jax.resolve`): the model contract checked at the door, on real examples, for each way
a user broke it; the model that reads a run back checked against the one it was trained with; and the diagnosis of a
step that went non-finite, which names the term and advises only what applies to the model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import wrong_models
from vae_jax import cli, configs, contract, evaluate, objective, resolve, trainer
from vae_jax.checkpoint import Checkpointer
from vae_jax.errors import ConfigError
from vae_jax.workdir import EVAL_FILE, METRICS_FILE

MODELS = "tests.wrong_models"


@pytest.fixture(scope="module")
def data_options(shared_data, data_dir):
    return ["--data-dir", str(data_dir), "--manual-dir", str(shared_data / "binarized_mnist")]


def _train(workdir, model, data_options, epochs=1):
    return ["train", "--workdir", str(workdir), "--config", "cs236", "--model", f"{MODELS}:{model}", "--epochs",
            str(epochs), "--no-progress", *data_options]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("model, message", [
    ("PerPixelLikelihood", "the model's log_likelihood has shape (2, 784) for 2 samples, expected (2,): one number "
                           "per sample, summed over the example's dimensions"),
    ("PlainTuple", "the model's joint samples are a tuple, expected vae_jax.JointSamples(log_likelihood, "
                   "log_prior, log_posterior, ...)"),
    ("NonFinitePosterior", "the model's log_posterior (log q(z|x)) is not finite for example 0 of the first batch"),
])
def test_a_model_that_breaks_the_contract_is_refused_at_the_door(model, message, data_options, tmp_path, capsys):
    assert cli.main(_train(tmp_path, model, data_options)) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / METRICS_FILE).exists() and not (tmp_path / EVAL_FILE).exists()
    assert Checkpointer(tmp_path).epochs() == []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_options):
    """A model of the user's (`wrong_models.TinyVAE`) trained for one epoch from the command line."""
    workdir = tmp_path_factory.mktemp("tiny")
    assert cli.main(_train(workdir, "TinyVAE", data_options)) == 0
    return workdir


def test_reading_a_run_back_with_another_model_of_the_same_shapes_is_refused(tiny_run, data_options, capsys):
    capsys.readouterr()
    for command in (["eval"], ["gaps", "--num-examples", "2"], ["sample", "--out", str(tiny_run / "grid.png")]):
        argv = [*command, "--workdir", str(tiny_run), "--model", f"{MODELS}:LookalikeVAE", *data_options[:2]]
        assert cli.main(argv) == 2, command
        error = _one_line_error(capsys)
        assert "holds a run of another model than the one given (model.class='tests.wrong_models.LookalikeVAE' " \
               "(stored: 'tests.wrong_models.TinyVAE'))" in error
    assert not (tiny_run / EVAL_FILE).exists() and not (tiny_run / "grid.png").exists()
    # Without a model, the command says how to pass it; with the right one, the run is read and resumed.
    assert cli.main(["eval", "--workdir", str(tiny_run), *data_options[:2]]) == 2
    assert "pass that model: --model MODULE:NAME" in _one_line_error(capsys)
    assert cli.main(["eval", "--workdir", str(tiny_run), "--model", f"{MODELS}:TinyVAE", *data_options[:2]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["model"] == {"class": "tests.wrong_models.TinyVAE", "hidden": 16}
    assert [json.loads(line)["nelbo"] for line in (tiny_run / EVAL_FILE).read_text().splitlines()] == [result["nelbo"]]
    resume = ["train", "--workdir", str(tiny_run), "--model", f"{MODELS}:TinyVAE", "--epochs", "2", "--no-progress",
              *data_options]
    assert cli.main(resume) == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == 2


def test_a_model_argument_that_names_nothing_is_one_line(tmp_path, capsys):
    for spec, message in (("no_colon", "is not MODULE:NAME or FILE.py:NAME"),
                          (f"{MODELS}:Missing", "cannot load it (AttributeError"),
                          ("no_such_module_here:Model", "cannot load it (ModuleNotFoundError")):
        assert cli.main(["eval", "--workdir", str(tmp_path), "--model", spec]) == 2
        assert message in _one_line_error(capsys)


def test_every_public_evaluation_accepts_a_bare_module(binary_pixels):
    module = wrong_models.TinyVAE()
    model = contract.as_model(module)
    params = model.init(jax.random.key(0), jnp.zeros(784))
    key = jax.random.key(1)
    for function, options in ((evaluate.evaluate_elbo, {"batch_size": 32}),
                              (evaluate.evaluate_iwae, {"num_samples": 3, "batch_size": 32})):
        bare, wrapped = (function(m, params, binary_pixels, key, **options) for m in (module, model))
        for a, b in zip(jax.tree.leaves(bare), jax.tree.leaves(wrapped)):
            np.testing.assert_array_equal(a, b)
    x = jnp.asarray(binary_pixels[0], jnp.float32)
    np.testing.assert_array_equal(objective.iwae_bound(module, params, x, key, 4),
                                  objective.iwae_bound(model, params, x, key, 4))


def test_a_non_finite_step_names_its_term_and_advises_what_applies(binary_pixels, tmp_path):
    pixels = binary_pixels.copy()
    pixels[:, 0] = [0, 1] * (len(pixels) // 2)  # NonFinitePosterior's log q is -inf where the first pixel is 0
    indices, key = np.arange(len(pixels)), jax.random.key(0)
    for model, expected in ((wrong_models.NonFinitePosterior(), ["log q(z|x)"]), (wrong_models.TinyVAE(), [])):
        model = contract.as_model(model)
        params = model.init(jax.random.key(0), jnp.zeros(784))
        for loss in (objective.Elbo(), objective.Iwae(3)):
            assert trainer.failing_terms(model, loss, params, pixels, indices, key, False) == expected
    cs236, hvae = configs.get_config("cs236"), configs.get_config("hvae")
    preset = resolve.divergence_advice(resolve.resolve_run(cs236, tmp_path), True)
    assert preset.endswith("or with the encoder's log-variance bounded by model.logvar_bound=10")
    assert resolve.divergence_advice(resolve.resolve_run(hvae, tmp_path), True).endswith("model.logvar_clip=-6,2")
    custom = resolve.divergence_advice(resolve.resolve_run(cs236, tmp_path, wrong_models.TinyVAE()), True)
    assert "model." not in custom and custom.endswith("bound the log-variances (or scales) of your model's "
                                                      "distributions")
    assert resolve.divergence_advice(resolve.resolve_run(cs236, tmp_path), False) == (
        "resume with a lower optim.learning_rate or with optim.grad_clip_norm=100")


def test_a_model_that_is_no_model_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="expected a Flax module or an object with init"):
        resolve.resolve_run(configs.get_config("cs236"), tmp_path, model=object())
