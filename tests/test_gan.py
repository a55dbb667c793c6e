"""experiments/gan.py and gan_models.py, the GAN baseline of issue #35: shapes, one step, keys per example, the
patch convolution against XLA's, and a resumed run against an uninterrupted one (tiny networks, a few seconds)."""

import json

import gan
import gan_models
import jax
import jax.numpy as jnp
import numpy as np
import pytest

CONFIG = {"dataset": "mnist", "seed": 3, "batch_size": 8, "latent_dim": 8, "g_channels": 8, "d_channels": 4,
          "learning_rate": 2e-4, "b1": 0.5, "checkpoint_every": 1, "fake_input": "mean"}


def tiny_state(fake_input: str = "mean") -> gan_models.GanState:
    return gan.template_state({**CONFIG, "fake_input": fake_input})


def grey_pixels(num: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (num, gan_models.IMAGE_SIZE), dtype=np.uint8)


def test_shapes():
    state = tiny_state()
    logits = state.generator.apply(state.g_params, jnp.zeros((3, 8)))
    assert logits.shape == (3, 784)
    assert state.discriminator.apply(state.d_params, jax.nn.sigmoid(logits)).shape == (3,)
    samples = gan_models.sample_binary(state.generator, state.g_params, jax.random.key(0), jnp.arange(5), 8)
    assert samples.shape == (5, 784) and set(np.unique(np.asarray(samples))) <= {0.0, 1.0}
    means = gan_models.sample_means(state.generator, state.g_params, jax.random.key(0), jnp.arange(5), 8)
    assert means.shape == (5, 784) and float(means.min()) > 0 and float(means.max()) < 1


def test_patch_conv_is_a_convolution():
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
    for kernel, stride in ((4, 2), (3, 1)):
        conv = gan_models.PatchConv(5, kernel, stride)
        params = conv.init(jax.random.key(1), x)
        weights = params["params"]["Dense_0"]["kernel"].reshape(kernel, kernel, 3, 5)
        expected = jax.lax.conv_general_dilated(x, weights, (stride, stride), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        expected = expected + params["params"]["Dense_0"]["bias"]
        np.testing.assert_allclose(conv.apply(params, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fake_input", ["mean", "sample"])
def test_one_step_changes_parameters_with_finite_losses(fake_input):
    state = tiny_state(fake_input)
    batch = gan_models.batch_inputs(jnp.asarray(grey_pixels(4)), jnp.arange(4), jax.random.key(1), 8,
                                    state.binary_fakes)
    assert batch.u_d.shape == ((4, 784) if fake_input == "sample" else (4, 0))
    new, metrics = jax.jit(gan_models.train_step)(state, batch)
    assert int(new.step) == 1
    assert all(np.isfinite(float(value)) for value in metrics.values())
    for old, updated in ((state.g_params, new.g_params), (state.d_params, new.d_params)):
        assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(updated)))


def test_binary_fakes_are_draws_with_the_means_gradient():
    means, u = jnp.array([[0.2, 0.7, 0.5]]), jnp.array([[0.1, 0.9, 0.4]])
    np.testing.assert_array_equal(gan_models.fake_input(means, u), [[1.0, 0.0, 1.0]])
    gradient = jax.grad(lambda m: jnp.sum(gan_models.fake_input(m, u) * jnp.array([1.0, 2.0, 3.0])))(means)
    np.testing.assert_array_equal(gradient, [[1.0, 2.0, 3.0]])


def test_binarization_and_codes_keyed_by_example_index_not_batch():
    pixels, key = jnp.asarray(grey_pixels(10)), jax.random.key(2)
    whole = gan_models.batch_inputs(pixels, jnp.arange(10), key, 8, binary_fakes=True)
    picked = jnp.array([7, 2, 5])
    part = gan_models.batch_inputs(pixels[picked], picked, key, 8, binary_fakes=True)
    for full, some in zip(whole, part):
        np.testing.assert_array_equal(np.asarray(full)[np.asarray(picked)], some)
    assert set(np.unique(np.asarray(whole[0]))) <= {0.0, 1.0}


def test_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path):
    pixels = grey_pixels(24)  # 3 steps of 8 per epoch
    whole = gan.fit(gan.load_config(tmp_path / "whole", CONFIG), tmp_path / "whole", 3, pixels)
    gan.fit(gan.load_config(tmp_path / "parts", CONFIG), tmp_path / "parts", 2, pixels)
    with (tmp_path / "parts" / "metrics.jsonl").open("a") as file:  # an epoch that a killed run logged, unsaved
        file.write(json.dumps({"epoch": 3, "d_loss": 0.0}) + "\n")
    resumed = gan.fit(gan.load_config(tmp_path / "parts", CONFIG), tmp_path / "parts", 3, pixels)
    for a, b in zip(jax.tree.leaves(gan._tree(whole)), jax.tree.leaves(gan._tree(resumed))):
        np.testing.assert_array_equal(a, b)
    lines = [json.loads(line) for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    whole_lines = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert [line["g_loss"] for line in lines] == [line["g_loss"] for line in whole_lines]
    assert sorted(gan.checkpoint_manager(tmp_path / "parts").all_steps()) == [1, 2, 3]
