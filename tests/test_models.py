"""The convolutional encoder/decoder: shapes, one example against a batch, learning; configs that build them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import configs, models, train
from vae_jax.errors import ConfigError

CONV = configs.ModelConfig(latent_dim=4, encoder_hidden=(32,), decoder_hidden=(32,), architecture="conv",
                           conv_channels=(4, 8))


def test_conv_models_map_one_example_as_they_map_a_batch(binary_pixels):
    encoder, decoder = models.build_models(CONV)
    assert isinstance(encoder, models.ConvEncoder) and isinstance(decoder, models.ConvDecoder)
    params = train.init_params(jax.random.key(0), encoder, decoder)
    x = jnp.asarray(binary_pixels[:5], jnp.float32)
    mean, logvar = encoder.apply(params["encoder"], x)
    assert mean.shape == logvar.shape == (5, 4)
    one_mean, one_logvar = jax.vmap(lambda xi: encoder.apply(params["encoder"], xi))(x)
    np.testing.assert_allclose(one_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one_logvar, logvar, rtol=1e-5, atol=1e-6)
    z = jax.random.normal(jax.random.key(1), (5, 3, 4))  # [B, S, J]
    logits = decoder.apply(params["decoder"], z)
    assert logits.shape == (5, 3, 784)
    np.testing.assert_allclose(jax.vmap(lambda zi: decoder.apply(params["decoder"], zi))(z), logits,
                               rtol=1e-5, atol=1e-5)
    # The first convolution sees the image, not the flat vector: moving one pixel changes the encoding locally.
    kernel = params["encoder"]["params"]["Conv_0"]["kernel"]
    assert kernel.shape == (3, 3, 1, 4)


def test_conv_vae_learns(binary_pixels):
    encoder, decoder = models.build_models(CONV)
    state = train.create_train_state(jax.random.key(0), encoder, decoder, optax.adam(3e-3))
    pixels = jnp.asarray(binary_pixels)
    state, first = train.train_epoch_jit(state, pixels, jax.random.key(1), batch_size=16)
    for epoch in range(2, 20):
        state, last = train.train_epoch_jit(state, pixels, jax.random.key(epoch), batch_size=16)
    assert int(last.failed_step) == -1
    # Pixels drawn independently with p = 0.3 cost at least 784 * H(0.3) = 478.9 nats; the untrained model ~545.
    assert float(np.mean(first.nelbo)) > 530
    assert float(np.mean(last.nelbo)) < 485


def test_three_convolutions_fail_validation():
    with pytest.raises(ConfigError, match="conv_channels"):
        configs.apply_overrides(configs.get_config("cs236"), ["model.architecture=conv", "model.conv_channels=8,8,8"])
    with pytest.raises(ConfigError, match="unknown architecture"):
        configs.apply_overrides(configs.get_config("cs236"), ["model.architecture=resnet"])


def _precisions(jaxpr: jax.extend.core.Jaxpr) -> list:
    """The `precision` of every matrix product and convolution in `jaxpr`, nested calls included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            if isinstance(value, jax.extend.core.ClosedJaxpr):
                found += _precisions(value.jaxpr)
    return found


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("name, level", [("float32", jax.lax.Precision.HIGHEST),
                                         ("tensorfloat32", jax.lax.Precision.HIGH),
                                         ("bfloat16", jax.lax.Precision.DEFAULT)])
def test_matmul_precision_reaches_every_product_and_convolution(architecture, name, level):
    config = configs.ModelConfig(latent_dim=4, encoder_hidden=(32,), decoder_hidden=(32,), architecture=architecture,
                                 conv_channels=(4, 8), matmul_precision=name)
    encoder, decoder = models.build_models(config)
    params = train.init_params(jax.random.key(0), encoder, decoder)
    found = (_precisions(jax.make_jaxpr(encoder.apply)(params["encoder"], jnp.zeros((2, 784))).jaxpr)
             + _precisions(jax.make_jaxpr(decoder.apply)(params["decoder"], jnp.zeros((2, 4))).jaxpr))
    layers = 4 if architecture == "mlp" else 8  # 2 dense layers a side; conv: 2 convolutions, 2 transposed
    assert len(found) == layers
    assert all(precision == (level, level) for precision in found), found


def test_bfloat16_compute_leaves_the_precision_to_jax():
    encoder, _ = models.build_models(configs.ModelConfig(latent_dim=4, compute_dtype="bfloat16"))
    params = train.init_params(jax.random.key(0), *models.build_models(configs.ModelConfig(latent_dim=4)))
    found = _precisions(jax.make_jaxpr(encoder.apply)(params["encoder"], jnp.zeros((2, 784))).jaxpr)
    assert len(found) == 3 and all(precision is None for precision in found), found
