"""experiments/profile_cpu.py: self times of nested trace spans, and the kind of work of compiled instructions."""

import sys

import jax
import jax.numpy as jnp

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import profile_cpu  # noqa: E402


def test_self_time_subtracts_nested_spans_only():
    events = [("outer", 0, 10), ("first", 2, 3), ("inner", 3, 1), ("second", 6, 2), ("next", 10, 4)]
    totals = profile_cpu.self_times(events)
    assert totals == {"outer": 5, "first": 2, "inner": 1, "second": 2, "next": 4}
    assert sum(totals.values()) == 14  # the busy span of the thread, counted once


def test_categories_of_a_compiled_step():
    def step(w, x):
        loss, grad = jax.value_and_grad(lambda w: jnp.sum(jax.nn.elu(x @ w)))(w)
        with jax.named_scope("optimizer_update"):
            w = w - 0.1 * jnp.sqrt(jnp.abs(grad))
        return w, loss

    w, x = jnp.ones((8, 4)), jnp.ones((3, 8))
    instructions = profile_cpu.instruction_texts(jax.jit(step).lower(w, x).compile().as_text())
    kinds = {name: profile_cpu.category(name, instructions) for name in instructions}
    assert "matrix products" in kinds.values()
    assert "optimizer update" in kinds.values()
    optimizer_lines = [instructions[n] for n, kind in kinds.items() if kind == "optimizer update"]
    assert all("optimizer_update" in line for line in optimizer_lines)
    assert profile_cpu.category("ThunkExecutor::Execute", instructions) == "runtime (scheduling, waits)"
