"""The train step and the compiled epoch: learning, determinism, layout of randomness, and the finite-check."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import export

from tests.conftest import MNIST
from vae_jax import builders, configs, objective, train


def _state(model, learning_rate=1e-2):
    return train.create_train_state(jax.random.key(0), model, optax.adam(learning_rate), (784,))


def _five_epochs(state, pixels, **options):
    """The state after five epochs of `batch_size=16` (`options` to `train_epoch_jit`), the first epoch's result and
    the last's; every step finite."""
    results = []
    for epoch in range(5):
        state, result = train.train_epoch_jit(state, pixels, jax.random.fold_in(jax.random.key(1), epoch),
                                              batch_size=16, **options)
        assert int(result.failed_step) == -1
        results.append(result)
    return state, results[0], results[-1]


def test_epochs_lower_the_loss_and_count_steps(small_model, binary_pixels):
    state, first, result = _five_epochs(_state(small_model), jnp.asarray(binary_pixels))
    assert result.terms.nelbo.shape == (4,)
    assert int(state.step) == 5 * 4
    assert float(result.terms.nelbo.mean()) < float(first.terms.nelbo.mean()) - 20
    np.testing.assert_allclose(result.terms.nelbo, result.terms.rec + result.terms.kl, rtol=1e-5)


def test_same_key_same_parameters(small_model, binary_pixels):
    runs = [train.train_epoch_jit(_state(small_model), jnp.asarray(binary_pixels), jax.random.key(2), batch_size=16)
            for _ in range(2)]
    for a, b in zip(jax.tree.leaves(runs[0][0].params), jax.tree.leaves(runs[1][0].params)):
        np.testing.assert_array_equal(a, b)
    other, _ = train.train_epoch_jit(_state(small_model), jnp.asarray(binary_pixels), jax.random.key(3),
                                     batch_size=16)
    assert not np.array_equal(jax.tree.leaves(other.params)[0], jax.tree.leaves(runs[0][0].params)[0])


def test_epoch_drops_the_incomplete_last_batch(small_model, binary_pixels):
    state, result = train.train_epoch_jit(_state(small_model), jnp.asarray(binary_pixels[:50]), jax.random.key(0),
                                          batch_size=16)
    assert result.terms.nelbo.shape == (3,) and int(state.step) == 3


def test_non_finite_step_is_not_applied_and_is_reported(small_model, binary_pixels):
    state = _state(small_model, learning_rate=1e-3)
    poisoned = jax.tree.map(lambda p: p, state.params)
    poisoned["decoder"]["params"]["Dense_0"]["bias"] = poisoned["decoder"]["params"]["Dense_0"]["bias"].at[0].set(
        jnp.nan)
    state = state.replace(params=poisoned)
    new_state, result = train.train_epoch_jit(state, jnp.asarray(binary_pixels), jax.random.key(0), batch_size=16)
    assert int(result.failed_step) == 0
    assert int(new_state.step) == int(state.step)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_flags_any_non_finite_element(bad):
    grads = {"w": jax.random.normal(jax.random.key(0), (300, 784)) * 1e30, "b": jnp.full((7,), -2.0)}
    assert bool(jax.jit(train.all_finite)(grads))
    assert not bool(jax.jit(train.all_finite)({**grads, "b": grads["b"].at[3].set(bad)}))
    assert not bool(jax.jit(train.all_finite)((jnp.float32(bad), grads)))
    # A sum that overflows float32 counts as a divergence too (documented).
    assert not bool(jax.jit(train.all_finite)({"w": jnp.full((300, 784), 1e34)}))


@pytest.mark.parametrize("update", ["guarded_update", "_update_by_select"])
def test_divergence_mid_epoch_keeps_the_last_good_update(small_model, binary_pixels, update, monkeypatch):
    # A huge learning rate blows the parameters up within a few steps; the state stops at the last finite one.
    # `_update_by_select` runs, on this CPU, the guard that the epoch uses when compiled for an accelerator.
    monkeypatch.setattr(train, "guarded_update", getattr(train, update))
    state = _state(small_model, learning_rate=1e4)
    new_state, result = train.train_epoch(state, jnp.asarray(np.tile(binary_pixels, (8, 1))), jax.random.key(0),
                                          batch_size=16)
    failed = int(result.failed_step)
    assert failed > 0
    assert int(new_state.step) == failed
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(new_state.params))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_guard_compiled_for_an_accelerator_selects_instead_of_branching(small_model, platform):
    # XLA:GPU reads a conditional's predicate on the host at every step; exported for an accelerator (no device
    # needed), the guard keeps only lax.platform_dependent's own constant-index cases and selects the state.
    state = _state(small_model)
    grads = jax.tree.map(jnp.zeros_like, state.params)

    def module(target: str) -> str:
        exported = export.export(jax.jit(train.guarded_update), platforms=[target])(state, grads, jnp.array(True))
        return exported.mlir_module()

    cpu, accelerator = module("cpu"), module(platform)
    assert accelerator.count("stablehlo.case") == cpu.count("stablehlo.case") - 1
    assert accelerator.count("stablehlo.select") > cpu.count("stablehlo.select")


def test_guarded_update_by_conditional_and_by_select_agree(small_model):
    state = _state(small_model)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), state.params)
    poisoned = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    updated = state.apply_gradients(grads)
    for step_grads, apply, expected in ((grads, True, updated), (poisoned, False, state)):
        for update in (train.guarded_update, train._update_by_conditional, train._update_by_select):
            got = jax.jit(update)(state, step_grads, jnp.array(apply))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
                # compiled against eager Adam: the same step (size 1e-2) up to float32 rounding; a skip is exact
                np.testing.assert_allclose(a, b, rtol=1e-6 if apply else 0, atol=1e-8 if apply else 0)


def test_kl_warmup_is_linear():
    from vae_jax import trainer

    config = configs.apply_overrides(configs.get_config("cs236"), ["kl_weight=2", "kl_warmup_epochs=4"])
    assert [trainer.kl_weight(config, epoch) for epoch in (1, 2, 4, 9)] == [0.5, 1.0, 2.0, 2.0]
    assert trainer.kl_weight(configs.get_config("cs236"), 1) == 1.0


def test_iwae_objective_trains(small_model, binary_pixels):
    _, first, result = _five_epochs(_state(small_model), jnp.asarray(binary_pixels),
                                    objective=objective.Iwae(num_samples=5))
    # Training lowers the loss, the negative K = 5 bound (as much as the ELBO run above lowers its NELBO)...
    assert float(result.loss.mean()) < float(first.loss.mean()) - 20
    # ... which lies below the negative single-sample ELBO of the same samples on average.
    assert 0 < float(result.loss.mean()) < float(result.terms.nelbo.mean())


def test_an_epoch_on_grey_images_binarizes_them_and_trains(small_model):
    grey = jnp.asarray(np.random.default_rng(5).integers(0, 256, (64, 784)), jnp.uint8)
    _, first, result = _five_epochs(_state(small_model), grey, dynamic_binarization=True)
    assert float(result.terms.nelbo.mean()) < float(first.terms.nelbo.mean()) - 20


def test_logvar_bound():
    from vae_jax import models

    encoder = models.Encoder(latent_dim=2, hidden=(4,), logvar_bound=3.0)
    params = encoder.init(jax.random.key(0), jnp.zeros(784))
    params = jax.tree.map(lambda p: p * 1000, params)
    _, logvar = encoder.apply(params, jnp.ones(784))
    assert float(jnp.max(jnp.abs(logvar))) <= 3.0 and float(jnp.max(jnp.abs(logvar))) > 2.9


def test_logvar_clip_is_the_hardtanh_of_the_reference_code():
    """A `(low, high)` bound is PyTorch's Hardtanh(low, high), the clip of Tomczak & Welling's code: values and
    gradients (1 inside, 0 outside), in float64."""
    import torch

    from vae_jax import models

    raw = np.array([-9.0, -6.5, -5.99, 0.3, 1.99, 2.5, 40.0])
    with jax.enable_x64(True):
        values, grads = jax.vmap(jax.value_and_grad(lambda v: models.bound_logvar(v, (-6.0, 2.0))))(jnp.asarray(raw))
    assert values.dtype == jnp.float64
    reference = torch.tensor(raw, requires_grad=True)
    clipped = torch.nn.Hardtanh(-6.0, 2.0)(reference)
    clipped.sum().backward()
    np.testing.assert_array_equal(values, clipped.detach().numpy())
    np.testing.assert_array_equal(grads, reference.grad.numpy())
    np.testing.assert_array_equal(grads, [0, 0, 1, 1, 1, 0, 0])


def test_bfloat16_compute_keeps_float32_parameters_and_loss(binary_pixels):
    config = configs.ModelConfig(latent_dim=3, encoder_hidden=(32,), decoder_hidden=(32,), compute_dtype="bfloat16")
    model = builders.build_model(config, MNIST)
    state = train.create_train_state(jax.random.key(0), model, optax.adam(1e-2), (784,))
    mean, _ = model.posterior(state.params, jnp.ones(784))
    assert mean.dtype == jnp.float32
    for epoch in range(3):
        state, result = train.train_epoch_jit(state, jnp.asarray(binary_pixels), jax.random.key(epoch),
                                              batch_size=16)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((state.params, state.opt_state))
               if jnp.issubdtype(leaf.dtype, jnp.floating))
    assert result.loss.dtype == jnp.float32 and int(result.failed_step) == -1
    # The same model in float32 reaches nearly the same loss.
    reference = train.create_train_state(jax.random.key(0), builders.build_model(
        configs.ModelConfig(latent_dim=3, encoder_hidden=(32,), decoder_hidden=(32,)), MNIST), optax.adam(1e-2), (784,))
    for epoch in range(3):
        reference, reference_result = train.train_epoch_jit(reference, jnp.asarray(binary_pixels),
                                                            jax.random.key(epoch), batch_size=16)
    np.testing.assert_allclose(float(result.loss.mean()), float(reference_result.loss.mean()), rtol=0.02)


def test_progress_reports_the_running_loss_from_inside_the_epoch(small_model, binary_pixels):
    calls = []

    def progress(steps_done, running_loss):
        calls.append((int(steps_done), float(running_loss)))

    _, result = train.train_epoch_jit(_state(small_model), jnp.asarray(binary_pixels), jax.random.key(0),
                                      batch_size=8, progress=progress, progress_every=3)
    jax.effects_barrier()
    losses = np.asarray(result.loss)
    assert [steps for steps, _ in calls] == [3, 6]
    np.testing.assert_allclose([loss for _, loss in calls], [losses[:3].mean(), losses[:6].mean()], rtol=1e-5)


def test_a_pure_step_on_a_batch_is_the_epoch_s_step(small_model, binary_pixels):
    """The compiled epoch scans `train_step`: an epoch of one batch equals one step taken by hand on the batch the
    epoch's shuffle picks, with the epoch's example key."""
    state = _state(small_model)
    pixels = jnp.asarray(binary_pixels[:16])
    epoch_key = jax.random.key(4)
    shuffle_key, examples_key = jax.random.split(epoch_key)
    order = jax.random.permutation(shuffle_key, 16)
    by_hand, result = jax.jit(train.train_step)(state, pixels[order], order, examples_key)
    epoch_state, epoch = train.train_epoch_jit(state, pixels, epoch_key, batch_size=16)
    assert bool(result.finite) and int(by_hand.step) == int(epoch_state.step) == 1
    np.testing.assert_allclose(float(epoch.loss[0]), float(result.loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(by_hand.params), jax.tree.leaves(epoch_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_non_finite_step_is_skipped_by_the_pure_step(small_model, binary_pixels):
    state = _state(small_model)
    poisoned = jax.tree.map(lambda p: p, state.params)
    poisoned["decoder"]["params"]["Dense_0"]["bias"] = poisoned["decoder"]["params"]["Dense_0"]["bias"].at[0].set(
        jnp.inf)
    state = state.replace(params=poisoned)
    new_state, result = train.train_step(state, jnp.asarray(binary_pixels[:8]), jnp.arange(8), jax.random.key(0))
    assert not bool(result.finite) and int(new_state.step) == 0


def test_a_batch_larger_than_the_split_is_refused(small_model, binary_pixels):
    from vae_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size=65 does not fit the 64 training examples"):
        train.train_epoch(_state(small_model), jnp.asarray(binary_pixels), jax.random.key(0), batch_size=65)


def test_adam_on_one_flattened_vector_takes_the_same_steps(small_model, binary_pixels):
    """`optim.flatten`: the optimizer's state is one vector per moment, and the epoch ends where the per-tensor
    optimizer's does, up to float32 rounding."""
    per_tensor = configs.OptimConfig(learning_rate=1e-2)
    flattened = configs.OptimConfig(learning_rate=1e-2, flatten=True)
    states = [train.create_train_state(jax.random.key(0), small_model, builders.build_optimizer(optim, 4), (784,))
              for optim in (per_tensor, flattened)]
    size = sum(leaf.size for leaf in jax.tree.leaves(states[0].params))
    assert {leaf.shape for leaf in jax.tree.leaves(states[1].opt_state)} == {(), (size,)}
    ends = [train.train_epoch_jit(state, jnp.asarray(binary_pixels), jax.random.key(3), batch_size=16)[0]
            for state in states]
    for a, b in zip(jax.tree.leaves(ends[0].params), jax.tree.leaves(ends[1].params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_params_ema_averages_the_parameters_after_each_step():
    """Two SGD steps of rate 1 by hand: p1 = p0 - g1, a1 = d p0 + (1 - d) p1; p2 = p1 - g2, a2 = d a1 + (1 - d) p2;
    the updates themselves are left alone."""
    decay, p0, g1, g2 = 0.75, np.array([1.0, -2.0]), np.array([0.5, 0.25]), np.array([-1.0, 2.0])
    tx = optax.chain(optax.sgd(1.0), train.params_ema(decay))
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.asarray(p0, jnp.float32)},
                             opt_state=tx.init({"w": jnp.asarray(p0, jnp.float32)}), model=None, tx=tx)
    np.testing.assert_array_equal(state.eval_params["w"], p0)
    state = state.apply_gradients({"w": jnp.asarray(g1, jnp.float32)})
    p1, a1 = p0 - g1, decay * p0 + (1 - decay) * (p0 - g1)
    np.testing.assert_allclose(state.params["w"], p1, rtol=1e-7)
    np.testing.assert_allclose(state.eval_params["w"], a1, rtol=1e-7)
    state = state.apply_gradients({"w": jnp.asarray(g2, jnp.float32)})
    np.testing.assert_allclose(state.params["w"], p1 - g2, rtol=1e-7)
    np.testing.assert_allclose(state.eval_params["w"], decay * a1 + (1 - decay) * (p1 - g2), rtol=1e-7)
    with pytest.raises(ValueError, match="params_ema needs the parameters"):
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))


@pytest.mark.parametrize("decay", [0.75, 0.9999])
def test_the_debiased_average_is_the_normalized_weighted_mean_of_the_parameters(decay):
    """`params_ema(decay, debias=True)` over four SGD steps of rate 1, against float64 by hand: e_t = d e_{t-1} +
    (1 - d) x_t from e_0 = 0 and m_t = e_t / (1 - d^t); m_1 is x_1 exactly, the count is t, the updates are left
    alone. (The uncorrected average with d = 0.9999 would still be the initial parameters to 4 digits.)"""
    p0 = np.array([1.0, -2.0, 0.5])
    grads = [np.array([0.5, 0.25, -1.5]), np.array([-1.0, 2.0, 0.125]), np.array([0.3, -0.7, 2.0]),
             np.array([1.25, 0.5, -0.25])]
    tx = optax.chain(optax.sgd(1.0), train.params_ema(decay, debias=True))
    params = {"w": jnp.asarray(p0, jnp.float32)}
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), model=None,
                             tx=tx)
    assert isinstance(state.opt_state[-1], train.DebiasedParamsEmaState) and int(state.opt_state[-1].count) == 0
    np.testing.assert_array_equal(state.eval_params["w"], p0.astype(np.float32))
    x, e = p0.astype(np.float32).astype(np.float64), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        state = state.apply_gradients({"w": jnp.asarray(g, jnp.float32)})
        x = x - g
        e = decay * e + (1 - decay) * x
        np.testing.assert_allclose(state.params["w"], x, rtol=1e-6)
        assert int(state.opt_state[-1].count) == t
        np.testing.assert_allclose(state.eval_params["w"], e / (1 - decay ** t), rtol=1e-6, atol=1e-6)
        if t == 1:
            np.testing.assert_array_equal(state.eval_params["w"], state.params["w"])
    assert not np.allclose(state.eval_params["w"], decay ** 4 * p0 + e, atol=1e-3)  # not the uncorrected average


def test_a_stored_run_without_ema_debias_keeps_the_layout_of_its_checkpoints():
    """A run stored before `optim.ema_debias` existed (with `ema_decay`) restores into the uncorrected average's state
    (no count); a new run's state has the count."""
    from vae_jax.checkpoint import layout

    params = {"w": jnp.zeros(3)}
    stored = configs.to_dict(configs.Config(optim=configs.OptimConfig(ema_decay=0.9999)))
    del stored["optim"]["ema_debias"]
    old, new = (builders.build_optimizer(config.optim, 4).init(params)
                for config in (configs.from_dict(stored), configs.Config(optim=configs.OptimConfig(ema_decay=0.9999))))
    assert isinstance(old[-1], train.ParamsEmaState) and isinstance(new[-1], train.DebiasedParamsEmaState)
    assert set(layout(new)) - set(layout(old)) == {"1/count"}


def test_eval_params_are_the_average_where_the_optimizer_keeps_one(small_model, binary_pixels):
    """With `optim.ema_decay` the epoch moves the (debiased) average behind the parameters; a skipped (non-finite)
    step moves neither, nor the average's count, whether the guard branches (CPU) or selects (elsewhere). Without
    it, `eval_params` are the parameters."""
    plain = _state(small_model)
    assert plain.eval_params is plain.params
    tx = builders.build_optimizer(configs.OptimConfig(learning_rate=1e-2, ema_decay=0.9), 4)
    state = train.create_train_state(jax.random.key(0), small_model, tx, (784,))
    trained, result = train.train_epoch_jit(state, jnp.asarray(binary_pixels), jax.random.key(3), batch_size=16)
    assert int(result.failed_step) == -1
    for start, average, params in zip(*(jax.tree.leaves(s) for s in (state.params, trained.eval_params,
                                                                       trained.params))):
        assert not np.array_equal(average, params) and not np.array_equal(average, start)
    poisoned = jnp.zeros((16, binary_pixels.shape[1]), jnp.uint8)
    bad = trained.replace(params=jax.tree.map(lambda p: p * jnp.inf, trained.params))
    skipped, result = train.train_step(bad, poisoned, jnp.arange(16), jax.random.key(0))
    assert not bool(result.finite)
    for a, b in zip(jax.tree.leaves(skipped.eval_params), jax.tree.leaves(trained.eval_params)):
        np.testing.assert_array_equal(a, b)
    assert [int(s.opt_state[-1].count) for s in (trained, skipped)] == [4, 4]
    grads = jax.tree.map(jnp.ones_like, trained.params)
    for guard in (train._update_by_conditional, train._update_by_select):
        assert [int(guard(trained, grads, jnp.asarray(apply)).opt_state[-1].count) for apply in (False, True)] == [4, 5]
