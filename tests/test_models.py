"""Networks and models: the convolutional encoder's locality, one example against a batch, learning, any image shape
and the likelihood's layout; gated layers; the hierarchical VAE's contract; configs that build them; the 8-bit models
(the mixture with every architecture, prior and depth); matrix-product precision."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import MNIST, preset_state
from vae_jax import builders, configs, contract, data, hierarchical, likelihoods, models, objective, train
from vae_jax.errors import ConfigError

CONV = configs.ModelConfig(latent_dim=4, encoder_hidden=(32,), decoder_hidden=(32,), architecture="conv",
                           conv_channels=(4, 8))


def test_conv_models_map_one_example_as_they_map_a_batch(binary_pixels):
    model = builders.build_model(CONV, MNIST)
    assert isinstance(model.encoder, models.ConvEncoder) and isinstance(model.decoder, models.ConvDecoder)
    params = model.init(jax.random.key(0), jnp.zeros(784))
    x = jnp.asarray(binary_pixels[:5], jnp.float32)
    mean, logvar = model.posterior(params, x)
    assert mean.shape == logvar.shape == (5, 4)
    one_mean, one_logvar = jax.vmap(lambda xi: model.posterior(params, xi))(x)
    np.testing.assert_allclose(one_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one_logvar, logvar, rtol=1e-5, atol=1e-6)
    z = jax.random.normal(jax.random.key(1), (5, 3, 4))  # [B, S, J]
    logits = model.decoder.apply(params["decoder"], z)
    assert logits.shape == (5, 3, 784)
    np.testing.assert_allclose(jax.vmap(lambda zi: model.decoder.apply(params["decoder"], zi))(z), logits,
                               rtol=1e-5, atol=1e-5)


def test_the_first_convolution_sees_the_image_as_an_image():
    """Locality: each output of the first stride-2 3x3 convolution depends on the 3x3 patch of pixels it covers,
    and on no other pixel of the 28 x 28 image (a model that treated the image as a flat vector would not)."""
    model = builders.build_model(CONV, MNIST)
    params = model.init(jax.random.key(0), jnp.zeros(784))

    def first_feature_map(x):
        _, state = model.encoder.apply(params["encoder"], x, capture_intermediates=True, mutable=["intermediates"])
        return state["intermediates"]["Conv_0"]["__call__"][0]  # [14, 14, 4]

    x = jnp.asarray(np.random.default_rng(0).random(784) < 0.3, jnp.float32)
    assert first_feature_map(x).shape == (14, 14, 4)
    row, column = 5, 9  # an output position; with SAME padding at stride 2 it covers rows 10..12, columns 18..20
    sensitivity = jax.jacobian(lambda x: first_feature_map(x)[row, column].sum())(x).reshape(28, 28)
    touched = np.argwhere(np.abs(np.asarray(sensitivity)) > 0)
    assert touched[:, 0].min() == 2 * row and touched[:, 0].max() == 2 * row + 2
    assert touched[:, 1].min() == 2 * column and touched[:, 1].max() == 2 * column + 2
    assert len(touched) == 9


def test_conv_vae_learns(binary_pixels):
    state = train.create_train_state(jax.random.key(0), builders.build_model(CONV, MNIST), optax.adam(3e-3), (784,))
    pixels = jnp.asarray(binary_pixels)
    state, first = train.train_epoch_jit(state, pixels, jax.random.key(1), batch_size=16)
    for epoch in range(2, 20):
        state, last = train.train_epoch_jit(state, pixels, jax.random.key(epoch), batch_size=16)
    assert int(last.failed_step) == -1
    # Pixels drawn independently with p = 0.3 cost at least 784 * H(0.3) = 478.9 nats; the untrained model ~545.
    assert float(np.mean(first.terms.nelbo)) > 530
    assert float(np.mean(last.terms.nelbo)) < 485


# The parameters of the cs236-sized conv model that experiments/results/architecture/conv was trained with.
BERNOULLI_CONV_SHAPES = {
    "decoder/params/ConvTranspose_0/bias": (32,), "decoder/params/ConvTranspose_0/kernel": (3, 3, 64, 32),
    "decoder/params/ConvTranspose_1/bias": (1,), "decoder/params/ConvTranspose_1/kernel": (3, 3, 32, 1),
    "decoder/params/Dense_0/bias": (3136,), "decoder/params/Dense_0/kernel": (300, 3136),
    "decoder/params/MLP_0/Dense_0/bias": (300,), "decoder/params/MLP_0/Dense_0/kernel": (10, 300),
    "decoder/params/MLP_0/Dense_1/bias": (300,), "decoder/params/MLP_0/Dense_1/kernel": (300, 300),
    "encoder/params/Conv_0/bias": (32,), "encoder/params/Conv_0/kernel": (3, 3, 1, 32),
    "encoder/params/Conv_1/bias": (64,), "encoder/params/Conv_1/kernel": (3, 3, 32, 64),
    "encoder/params/Dense_0/bias": (20,), "encoder/params/Dense_0/kernel": (300, 20),
    "encoder/params/MLP_0/Dense_0/bias": (300,), "encoder/params/MLP_0/Dense_0/kernel": (3136, 300),
    "encoder/params/MLP_0/Dense_1/bias": (300,), "encoder/params/MLP_0/Dense_1/kernel": (300, 300),
}


def test_the_bernoulli_conv_model_keeps_its_parameter_shapes():
    config = configs.apply_overrides(configs.get_config("cs236"), ["model.architecture=conv"])
    shapes = jax.eval_shape(builders.build_model(config.model, MNIST).init, jax.random.key(0), jnp.zeros(784))
    assert {jax.tree_util.keystr(path, simple=True, separator="/"): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]} == BERNOULLI_CONV_SHAPES


def test_conv_sides_halve_and_round_up():
    assert models.conv_sides(28, 20, 3) == [(28, 20), (14, 10), (7, 5), (4, 3)]
    assert models.conv_sides(32, 32, 2) == [(32, 32), (16, 16), (8, 8)]


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (28, 20, 1), (32, 32, 3)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic_mixture"])
def test_conv_networks_take_any_image_shape_and_size_the_output_for_the_likelihood(image_shape, likelihood):
    """Three stride-2 convolutions, which round odd sides up (28 -> 14 -> 7 -> 4); the decoder mirrors the encoder's
    maps and ends in the likelihood's values per pixel: C Bernoulli logits, or the mixture's block."""
    config = dataclasses.replace(CONV, conv_channels=(4, 4, 8), likelihood=likelihood, likelihood_components=3)
    eight_bit = likelihood != "bernoulli"
    fake = data.Dataset("fake", image_shape, "8bit" if eight_bit else "binary", (10, 10, 10))
    model = builders.build_model(config, fake)
    height, width, channels = image_shape
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256 if eight_bit else 2, (5, height * width * channels)),
                    jnp.float32)
    params = model.init(jax.random.key(0), x[0])
    mean, logvar = model.posterior(params, x)
    assert mean.shape == logvar.shape == (5, 4)
    out = model.decoder.apply(params["decoder"], mean)
    per_pixel = 3 * (1 + channels * (3 if channels == 3 else 2)) if eight_bit else channels
    assert out.shape == (5, height * width * per_pixel) and model.decoder.output_dim == out.shape[-1]
    assert params["decoder"]["params"]["ConvTranspose_2"]["bias"].shape == (per_pixel,)
    smallest = -(-height // 8) * -(-width // 8) * 8  # the encoder's last map, flattened, where the decoder starts
    assert params["encoder"]["params"]["MLP_0"]["Dense_0"]["kernel"].shape[0] == smallest
    assert params["decoder"]["params"]["Dense_0"]["kernel"].shape[-1] == smallest
    log_prob = model.likelihood.log_prob(x, out)
    assert log_prob.shape == (5,) and np.all(np.isfinite(log_prob))
    assert model.reconstruct(params, x).shape == x.shape


def test_the_conv_decoder_lays_the_mixture_out_as_the_likelihood_reads_it():
    """The decoder's last transposed convolution is replaced (`nn.intercept_methods`) by a map of sharp logistics at
    levels distinct for every pixel and channel, one row and one column more than the 5 x 3 image (the crop must drop
    them): the image of the kept levels, in x's layout, is then near certain (each sub-pixel ~0.97) and its mean; a
    decoder whose output were transposed, channel-major or cropped at the top left would fail both."""
    image_shape, k = (5, 3, 3), 2
    likelihood = likelihoods.DiscretizedLogisticMixture(image_shape, k)
    decoder = models.ConvDecoder(image_shape, (4,), (8,), outputs_per_pixel=likelihood.params_per_pixel())
    rows, columns, channels = np.meshgrid(np.arange(6), np.arange(4), np.arange(3), indexing="ij")
    levels = (13 * rows + 41 * columns + 97 * channels + 7) % 256  # [6, 4, 3]
    means = np.repeat(levels[..., None] / 127.5 - 1.0, k, axis=-1)  # [6, 4, C, K]
    per_channel = np.stack([means, np.full_like(means, -7.0), np.zeros_like(means)], axis=-2)  # mean, scale, coupling
    block = np.concatenate([np.zeros((6, 4, k)), per_channel.reshape(6, 4, -1)], axis=-1)  # [6, 4, K (1 + 3 C)]
    assert block.shape[-1] == likelihood.params_per_pixel() and likelihood.num_params() == 15 * block.shape[-1]

    def replace_the_last_map(next_fun, args, kwargs, context):
        if context.module.name == "ConvTranspose_0":
            return jnp.broadcast_to(jnp.asarray(block, jnp.float32), (*args[0].shape[:-3], *block.shape))
        return next_fun(*args, **kwargs)

    z = jnp.zeros((2, 3))
    params = decoder.init(jax.random.key(0), z)
    with nn.intercept_methods(replace_the_last_map):
        out = decoder.apply(params, z)
    image = jnp.asarray(levels[:5, :3].reshape(-1), jnp.float32)  # row-major over H, W, C
    np.testing.assert_array_less(-0.03 * 45, likelihood.log_prob(image, out))
    np.testing.assert_allclose(likelihood.mean(out), jnp.broadcast_to(image / 255, (2, 45)), atol=1e-6)


def test_gated_layers_gate_each_value_by_a_sigmoid():
    mlp = models.MLP((3,), activation="gated")
    h = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5)), jnp.float32)
    params = mlp.init(jax.random.key(0), h)["params"]
    value, gate = params["Dense_0"], params["Dense_1"]
    expected = (h @ value["kernel"] + value["bias"]) * jax.nn.sigmoid(h @ gate["kernel"] + gate["bias"])
    np.testing.assert_allclose(mlp.apply({"params": params}, h), expected, rtol=1e-6)


@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_the_hierarchical_vae_keeps_the_contract(prior, binary_pixels):
    config = configs.apply_overrides(configs.get_config("hvae"), [
        "model.latent_dim=3", "model.encoder_hidden=16,16", "model.decoder_hidden=16,16", f"model.prior={prior}",
        "model.prior_components=5"])
    model = builders.build_model(config.model, MNIST)
    assert isinstance(model, contract.FlaxModel) and isinstance(model.module, hierarchical.HierarchicalVAE)
    params = model.init(jax.random.key(0), jnp.zeros(784))
    x = jnp.asarray(binary_pixels[0], jnp.float32)
    samples = model.joint_samples(params, x, jax.random.key(1), 4)
    assert samples.log_likelihood.shape == samples.log_prior.shape == samples.log_posterior.shape == (4,)
    assert samples.kl is None and samples.posterior_mean.shape == (3,)
    # A factorized posterior centred on a sampled (z1, z2), with zero noise: that sample's log p(x|z) and log p(z).
    eps1, eps2 = jax.random.normal(jax.random.key(2), (2, 1, 3))
    one = model.module.apply(params, x, eps1, eps2, method="joint_samples_from_noise")
    mean2, logvar2 = model.module.apply(params, x, method=lambda m, x: m.q_z2(x))
    z2 = mean2 + jnp.exp(0.5 * logvar2) * eps2[0]
    mean1, logvar1 = model.module.apply(params, x, z2, method="q_z1")
    z1 = mean1 + jnp.exp(0.5 * logvar1) * eps1[0]
    zero = {"z1": jnp.zeros((1, 3)), "z2": jnp.zeros((1, 3))}
    given = model.joint_samples_given_posterior(params, x, {"z1": z1, "z2": z2}, {"z1": logvar1, "z2": logvar2}, zero)
    np.testing.assert_allclose(given.log_likelihood, one.log_likelihood, rtol=1e-5)
    np.testing.assert_allclose(given.log_prior, one.log_prior, rtol=1e-5)
    mean, logvar = model.posterior(params, x)
    assert set(mean) == set(logvar) == {"z1", "z2"} and mean["z2"].shape == (3,)
    assert model.generate(params, jax.random.key(3), 6).shape == (6, 784)
    assert model.reconstruct(params, jnp.asarray(binary_pixels[:2], jnp.float32)).shape == (2, 784)
    assert model.encode(params, jnp.asarray(binary_pixels[:2], jnp.float32)).shape == (2, 3)
    bound = objective.iwae_bound(model, params, x, jax.random.key(4), 20, chunk_size=6)
    assert float(bound) > -float(objective.elbo_terms(model, params, x, jax.random.key(4), 20).nelbo) - 1e-3


def test_configs_that_cannot_be_built_fail_validation():
    with pytest.raises(ConfigError, match="conv_channels must be positive widths"):
        configs.apply_overrides(configs.get_config("cs236"), ["model.architecture=conv", "model.conv_channels=8,0"])
    with pytest.raises(ConfigError, match="unknown architecture"):
        configs.apply_overrides(configs.get_config("cs236"), ["model.architecture=resnet"])
    with pytest.raises(ConfigError, match="need model.architecture=mlp"):
        configs.apply_overrides(configs.get_config("hvae"), ["model.architecture=conv"])
    with pytest.raises(ConfigError, match="stochastic_layers must be 1 or 2"):
        configs.apply_overrides(configs.get_config("hvae"), ["model.stochastic_layers=3"])
    with pytest.raises(ConfigError, match="at least one hidden layer in model.encoder_hidden"):
        configs.apply_overrides(configs.get_config("hvae"), ["model.encoder_hidden="])


def _precisions(jaxpr: jax.extend.core.Jaxpr) -> list:
    """The `precision` of every matrix product and convolution in `jaxpr`, nested calls and branches included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for nested in value if isinstance(value, tuple) else (value,):
                if isinstance(nested, jax.extend.core.ClosedJaxpr):
                    found += _precisions(nested.jaxpr)
    return found


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("name, level", [("float32", jax.lax.Precision.HIGHEST),
                                         ("tensorfloat32", jax.lax.Precision.HIGH),
                                         ("bfloat16", jax.lax.Precision.DEFAULT)])
def test_matmul_precision_reaches_every_product_and_convolution(architecture, name, level):
    config = configs.ModelConfig(latent_dim=4, encoder_hidden=(32,), decoder_hidden=(32,), architecture=architecture,
                                 conv_channels=(4, 8), matmul_precision=name)
    model = builders.build_model(config, MNIST)
    params = model.init(jax.random.key(0), jnp.zeros(784))
    found = (_precisions(jax.make_jaxpr(model.posterior)(params, jnp.zeros((2, 784))).jaxpr)
             + _precisions(jax.make_jaxpr(model.decode)(params, jnp.zeros((2, 4))).jaxpr))
    # 2 dense layers a side; conv: and 2 convolutions, 2 transposed, each both a product (the CPU's) and lax's
    layers = 4 if architecture == "mlp" else 4 + 4 * 2
    assert len(found) == layers
    assert all(precision == (level, level) for precision in found), found


def test_bfloat16_compute_leaves_the_precision_to_jax():
    model = builders.build_model(configs.ModelConfig(latent_dim=4, compute_dtype="bfloat16"), MNIST)
    params = builders.build_model(configs.ModelConfig(latent_dim=4), MNIST).init(jax.random.key(0), jnp.zeros(784))
    found = _precisions(jax.make_jaxpr(model.posterior)(params, jnp.zeros((2, 784))).jaxpr)
    assert len(found) == 3 and all(precision is None for precision in found), found


def test_he_normal_kernels_scale_every_kernel_and_nothing_else():
    """`model.kernel_init=he_normal`: every dense kernel is Flax's `he_normal` draw of the same key (variance
    2 / fan_in); biases and the VampPrior's pseudo-inputs keep their initialization."""
    lecun = configs.get_config("hvae_vampprior")
    he = configs.apply_overrides(lecun, ["model.kernel_init=he_normal"])
    lecun_params, he_params = preset_state(lecun).params, preset_state(he).params
    kernels = 0
    for (path, a), (_, b) in zip(*(jax.tree_util.tree_flatten_with_path(p)[0] for p in (lecun_params, he_params))):
        if path[-1].key == "kernel":
            kernels += 1
            np.testing.assert_allclose(b, a * np.sqrt(2.0), rtol=1e-6)
        else:
            np.testing.assert_array_equal(b, a)
    assert kernels == 10 * 2 + 4  # ten gated layers of two Dense each (2 + 2 + 3 + 3), and four Gaussian or pixel heads
    first = he_params["params"]["q_z2"]["MLP_0"]["Dense_0"]["kernel"]
    np.testing.assert_allclose(np.var(first), 2 / 784, rtol=0.02)


def test_the_8bit_model_scales_the_encoder_input_and_sizes_the_decoder_for_the_mixture():
    from vae_jax import data, likelihoods

    small = configs.ModelConfig(latent_dim=3, encoder_hidden=(16,), decoder_hidden=(16,))
    mixture = dataclasses.replace(small, likelihood="logistic_mixture", likelihood_components=4)
    eight_bit = builders.build_model(mixture, data.describe("mnist", "8bit"))
    binary = builders.build_model(small, MNIST)
    assert binary.encoder.__class__ is models.Encoder and binary.likelihood == likelihoods.Bernoulli()
    assert eight_bit.likelihood == likelihoods.DiscretizedLogisticMixture((28, 28, 1), 4)
    assert eight_bit.num_pixels == 784 and eight_bit.decoder.output_dim == 784 * 4 * 3
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, 784), jnp.float32)
    key = jax.random.key(0)
    params, binary_params = eight_bit.init(key, x), binary.init(key, x / 255)
    # The same parameter names as the binary model's (the wrapper is no Flax module), and the encoder sees x / 255.
    assert (jax.tree_util.tree_structure(params["encoder"])
            == jax.tree_util.tree_structure(binary_params["encoder"]))
    np.testing.assert_allclose(eight_bit.posterior(params, x)[0],
                               eight_bit.encoder.encoder.apply(params["encoder"], x / 255)[0], rtol=1e-6)
    assert not np.allclose(eight_bit.posterior(params, x)[0], eight_bit.encoder.encoder.apply(params["encoder"], x)[0])
    samples = eight_bit.joint_samples(params, x, key, 2)
    assert samples.log_likelihood.shape == (2,) and np.all(np.isfinite(samples.log_likelihood))
    assert eight_bit.generate(params, key, 3).shape == (3, 784)


SMALL_8BIT = ["dataset=mnist", "data_form=8bit", "model.likelihood=logistic_mixture", "model.likelihood_components=3",
              "model.latent_dim=3", "model.encoder_hidden=16", "model.decoder_hidden=16", "model.conv_channels=4,8",
              "model.prior_components=3"]


@pytest.mark.parametrize("overrides", [["model.architecture=conv"], ["model.prior=vamp"],
                                       ["model.architecture=conv", "model.prior=vamp"],
                                       ["model.stochastic_layers=2", "model.prior=vamp"]])
def test_the_mixture_models_take_a_finite_step_on_8_bit_data(overrides):
    """Every parameter moves (Adam moves each one that has a gradient): the pseudo-inputs' logits included."""
    config = configs.apply_overrides(configs.get_config("cs236"), SMALL_8BIT + overrides)
    dataset = data.describe(config.dataset, config.data_form)
    state = train.create_train_state(jax.random.key(0), builders.build_model(config.model, dataset),
                                     optax.adam(1e-3), (dataset.num_pixels,))
    pixels = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, dataset.num_pixels)), jnp.uint8)
    new, result = jax.jit(train.train_step)(state, pixels, jnp.arange(8), jax.random.key(1))
    assert bool(result.finite) and np.isfinite(float(result.loss))
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state.params, new.params)
    assert all(jax.tree.leaves(moved)), moved


@pytest.mark.parametrize("layers", [1, 2])
def test_8_bit_pseudo_inputs_reach_the_encoder_as_data_does(layers):
    """On 8-bit data the pseudo-inputs are on the data's scale (255 sigmoid(logits)), so the encoder's layers, which
    see x / 255, see them in (0, 1) as they see the data."""
    config = configs.apply_overrides(configs.get_config("cs236"),
                                     [*SMALL_8BIT, "model.prior=vamp", f"model.stochastic_layers={layers}"])
    model = builders.build_model(config.model, data.describe(config.dataset, config.data_form))
    params = model.init(jax.random.key(0), jnp.zeros(784))
    if layers == 1:
        unit_inputs = jax.nn.sigmoid(params["prior"]["params"]["pseudo_input_logits"])
        means, _ = model.prior.apply(params["prior"], lambda u: model.posterior(params, u), method="components")
        expected, _ = model.encoder.encoder.apply(params["encoder"], unit_inputs)
    else:
        unit_inputs = jax.nn.sigmoid(params["params"]["prior"]["pseudo_input_logits"])
        means, _ = model.module.apply(params, method=lambda m: m.prior.components(m.top_posterior))
        expected, _ = model.module.apply(params, unit_inputs, method=lambda m, u: m.q_z2(u))
    np.testing.assert_allclose(means, expected, rtol=1e-5, atol=1e-6)
