"""Presets, overrides, validation and serialization of configs."""

import dataclasses
import json

import pytest

from vae_jax import configs, resolve
from vae_jax.errors import ConfigError, VaeError


def test_cs236_preset_is_the_stanford_model():
    config = configs.get_config("cs236")
    assert config.model == configs.ModelConfig(10, (300, 300), (300, 300), "elu")
    assert (config.optim.name, config.optim.learning_rate, config.optim.schedule) == ("adam", 1e-3, "constant")
    assert (config.batch_size, config.dataset) == (100, "binarized_mnist")


def test_overrides_parse_each_field_type():
    config = configs.apply_overrides(configs.get_config("cs236"), [
        "model.latent_dim=20", "model.encoder_hidden=512,256", "optim.learning_rate=3e-4", "dataset=mnist",
        "model.logvar_clip=-6,2.5",
    ])
    assert config.model.latent_dim == 20
    assert config.model.encoder_hidden == (512, 256)
    assert config.model.logvar_clip == (-6.0, 2.5)
    assert config.optim.learning_rate == 3e-4
    assert config.dataset == "mnist"
    hash(config)  # usable as a static jit argument


@pytest.mark.parametrize("override,message", [
    ("model.latent_dim=-3", "latent_dim must be positive"),
    ("model.latent_dim=abc", "cannot read 'abc'"),
    ("model.depth=3", "unknown config field 'model.depth'"),
    ("model=3", "is a section"),
    ("dataset=", "dataset is empty; name one"),
    ("batch_size", "not of the form key=value"),
    ("model.encoder_hidden=512,0", "widths must be positive"),
    ("optim.name=lbfgs", "unknown optimizer"),
    ("model.matmul_precision=float8", "unknown matmul precision 'float8'"),
    ("model.logvar_clip=2,-6", r"model.logvar_clip must be two numbers low,high with low < high \(e.g. -6,2\), got"),
    ("model.logvar_clip=-6", "model.logvar_clip must be two numbers"),
    ("model.logvar_clip=-6,x", "cannot read '-6,x'"),
    ("model.kernel_init=glorot", "unknown kernel_init 'glorot'; choose one of"),
    ("optim.ema_decay=1", r"optim.ema_decay must be in \[0, 1\), got 1.0"),
])
def test_bad_overrides_raise_config_error(override, message):
    with pytest.raises(ConfigError, match=message):
        configs.apply_overrides(configs.get_config("cs236"), [override])


def test_weight_decay_is_read_by_adamw_and_adam_normgrad_only():
    for name in ("adamw", "adam_normgrad"):
        config = configs.apply_overrides(configs.get_config("cs236"), [f"optim.name={name}", "optim.weight_decay=0.1"])
        assert config.optim.weight_decay == 0.1
    with pytest.raises(ConfigError, match="optim.name=sgd would ignore optim.weight_decay=0.1; use optim.name=adamw"):
        configs.apply_overrides(configs.get_config("cs236"), ["optim.name=sgd", "optim.weight_decay=0.1"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown config preset 'big'"):
        configs.get_config("big")


@pytest.mark.parametrize("name", sorted(configs.PRESETS))
def test_dict_round_trip_and_hash(name):
    config = configs.get_config(name)
    assert configs.from_dict(configs.to_dict(config)) == config
    assert configs.config_hash(config) == configs.config_hash(configs.from_dict(configs.to_dict(config)))
    assert configs.config_hash(config) != configs.config_hash(dataclasses.replace(config, seed=1))


def test_a_field_added_with_a_default_changes_no_hash():
    """The hash covers the entries that differ from the defaults: a config written before `patience` existed (its
    default, 0, trains as before) hashes as the same config written now, and so does a tuple stored as a list."""
    config = configs.get_config("hvae_vampprior")
    older = configs.to_dict(config)
    del older["patience"]
    assert configs.dict_hash(older) == configs.config_hash(config)
    assert configs.dict_hash(json.loads(json.dumps(older))) == configs.config_hash(config)
    assert configs.config_hash(configs.Config()) == configs.dict_hash({})
    assert configs.config_hash(dataclasses.replace(config, patience=50)) != configs.config_hash(config)


def test_logvar_clip_and_logvar_bound_are_exclusive():
    with pytest.raises(ConfigError, match="both bound the log-variance; set model.logvar_bound=0"):
        configs.apply_overrides(configs.get_config("hvae_vampprior"), ["model.logvar_clip=-6,2"])
    config = configs.apply_overrides(configs.get_config("hvae_vampprior"),
                                     ["model.logvar_bound=0", "model.logvar_clip=-6,2"])
    assert config.model.logvar_clip == (-6.0, 2.0)


def test_a_stored_average_without_ema_debias_keeps_the_uncorrected_average_and_its_hash():
    """A run stored before `optim.ema_debias` existed: with `ema_decay` > 0 it averaged uncorrected and reads back
    so, its hash the one it was stored with ("438965a68f" is hvae_vampprior_authors_ema's, in docs/results.md); with
    `ema_decay` = 0 it gets the default, and its hash is unchanged too."""
    stored = configs.to_dict(configs.apply_overrides(configs.get_config("hvae_vampprior"), [
        "optim.name=adam_normgrad", "model.kernel_init=he_normal", "model.logvar_bound=0", "model.logvar_clip=-6,2",
        "optim.learning_rate=5e-4", "optim.schedule=constant", "kl_warmup_epochs=0", "optim.ema_decay=0.9999",
        "epochs=60", "init_from=runs/hvae_vampprior_authors"]))
    del stored["optim"]["ema_debias"]
    old = configs.from_dict(stored)
    assert old.optim.ema_debias is False and old.optim.ema_decay == 0.9999
    assert configs.config_hash(old) == configs.dict_hash(stored) == "438965a68f"
    assert configs.from_dict(configs.to_dict(old)) == old
    new = dataclasses.replace(old, optim=dataclasses.replace(old.optim, ema_debias=True))
    assert configs.from_dict(configs.to_dict(new)) == new and configs.config_hash(new) != configs.config_hash(old)
    for name in sorted(configs.PRESETS):
        config = configs.get_config(name)
        older = configs.to_dict(config)
        del older["optim"]["ema_debias"]
        assert configs.from_dict(older) == config and config.optim.ema_debias is True
        assert configs.config_hash(configs.from_dict(older)) == configs.dict_hash(older) == configs.config_hash(config)


# The presets' config hashes on the commit before `data_form` and `model.likelihood` existed (faaebd3): fields added
# with defaults that keep the old behaviour must change none of them.
PRESET_HASHES = {"cs236": "44136fa355", "default": "1d5bc9d4c0", "vampprior": "cbe46fef0c", "hvae": "5c1eb007e2",
                 "hvae_vampprior": "0cf64f0b9b"}


def test_the_new_fields_change_no_preset_hash():
    assert {name: configs.config_hash(configs.get_config(name)) for name in configs.PRESETS} == PRESET_HASHES


def test_8bit_data_and_the_logistic_mixture():
    cs236 = configs.get_config("cs236")
    assert (cs236.data_form, cs236.model.likelihood, cs236.model.likelihood_components) == ("", "bernoulli", 10)
    config = configs.apply_overrides(cs236, ["dataset=fashion_mnist", "data_form=8bit",
                                             "model.likelihood=logistic_mixture", "model.likelihood_components=5"])
    assert (config.data_form, config.model.likelihood, config.model.likelihood_components) == (
        "8bit", "logistic_mixture", 5)
    assert configs.from_dict(json.loads(json.dumps(configs.to_dict(config)))) == config
    assert configs.config_hash(config) != configs.config_hash(dataclasses.replace(config, dataset="mnist"))
    for model in (["model.architecture=conv"], ["model.prior=vamp"], ["model.stochastic_layers=2", "model.prior=vamp"]):
        assert configs.apply_overrides(config, model).model.likelihood == "logistic_mixture"  # none is refused


@pytest.mark.parametrize("overrides, message", [
    (["dataset=mnist", "data_form=16bit"], "unknown data_form '16bit'"),
    (["model.likelihood=gaussian"], "unknown likelihood 'gaussian'"),
    (["model.likelihood_components=0"], "model.likelihood_components must be positive"),
])
def test_8bit_refusals_are_one_line_naming_the_fix(overrides, message):
    with pytest.raises(ConfigError) as error:
        configs.apply_overrides(configs.get_config("cs236"), overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    (["data_form=8bit", "model.likelihood=logistic_mixture"],
     "binarized_mnist has no data form '8bit'; it takes ['binary'] (data_form=...)"),
    (["dataset=frey_faces", "data_form=dynamic"], "frey_faces has no data form 'dynamic'; it takes ['8bit']"),
    (["dataset=mnist", "data_form=8bit"], "mnist reaches the model as 8-bit grey levels (data_form=8bit), which "
                                          "model.likelihood=bernoulli cannot score; set model.likelihood="
                                          "logistic_mixture"),
    (["dataset=frey_faces"], "frey_faces reaches the model as 8-bit grey levels"),
    (["dataset=mnist", "model.likelihood=logistic_mixture"], "and mnist is dynamic; set data_form=8bit (on grey "
                                                             "levels) or model.likelihood=bernoulli"),
    (["model.likelihood=logistic_mixture"], "and binarized_mnist is binary; set data_form=8bit"),
])
def test_data_and_likelihood_that_do_not_match_are_refused_at_the_door(overrides, message, tmp_path):
    config = configs.apply_overrides(configs.get_config("cs236"), overrides)  # each field valid on its own
    with pytest.raises(VaeError) as error:
        resolve.resolve_run(config, tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)
