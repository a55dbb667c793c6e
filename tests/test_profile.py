"""experiments/benchmark.py and profile_cpu.py: rounds and ratios, kernel counts, self times of nested trace spans, and
the kind of work of compiled instructions."""

import benchmark
import jax
import jax.numpy as jnp
import profile_cpu

from vae_jax import train


def test_self_time_subtracts_nested_spans_only():
    events = [("outer", 0, 10), ("first", 2, 3), ("inner", 3, 1), ("second", 6, 2), ("next", 10, 4)]
    totals = profile_cpu.self_times(events)
    assert totals == {"outer": 5, "first": 2, "inner": 1, "second": 2, "next": 4}
    assert sum(totals.values()) == 14  # the busy span of the thread, counted once


def test_categories_of_a_compiled_step():
    def step(w, x, key):
        noise = jax.random.normal(key, x.shape)
        loss, grad = jax.value_and_grad(lambda w: jnp.sum(jax.nn.elu((x + noise) @ w)))(w)
        ok = train.all_finite(grad)
        with jax.named_scope("optimizer_update"):
            w = jnp.where(ok, w - 0.1 * jnp.sqrt(jnp.abs(grad)), w)
        return w, loss

    w, x = jnp.ones((8, 4)), jnp.ones((3, 8))
    instructions = profile_cpu.instruction_texts(jax.jit(step).lower(w, x, jax.random.key(0)).compile().as_text())
    kinds = {name: profile_cpu.category(name, instructions) for name in instructions}
    for kind in ("matrix products", "optimizer update", "finiteness check", "random numbers", "forward elementwise"):
        assert kind in kinds.values(), kind
    for kind, marker in (("optimizer update", "optimizer_update"), ("finiteness check", "finite_check")):
        assert all(marker in instructions[n] for n, k in kinds.items() if k == kind)
    assert profile_cpu.category("ThunkExecutor::Execute", instructions) == profile_cpu.RUNTIME


HLO = """HloModule m

%ynn_body (p0: f32[2,3], p1: f32[3,4]) -> f32[2,4] {
  %p0 = f32[2,3]{1,0} parameter(0)
  %p1 = f32[3,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[2,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%add_body (p0: f32[2,4]) -> f32[2,4] {
  ROOT %p0 = f32[2,4]{1,0} parameter(0)
}

ENTRY %main (a: f32[2,3], b: f32[3,4], c: f32[2,4]) -> f32[4,4] {
  %a = f32[2,3]{1,0} parameter(0)
  %ynn_fusion = f32[2,4]{1,0} fusion(%a, %b), kind=kCustom, calls=%ynn_body, backend_config={"fusion_config":KIND}
  %other = f32[2,4]{1,0} fusion(%ynn_fusion), kind=kLoop, calls=%add_body
  ROOT %dot.2 = f32[4,4]{1,0} dot(%other, %other), lhs_contracting_dims={0}, rhs_contracting_dims={0}
}
""".replace("KIND", '{"kind":"__ynn_fusion"}')


def test_matmul_kernels_counts_library_fusions_and_xla_dots():
    assert benchmark.matmul_kernels(HLO) == {"xla": 1, "ynn": 1}


PARTIAL_SUM = """HloModule m

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0), metadata={op_name="reduce_sum"}
  %y = f32[] parameter(1), metadata={op_name="reduce_sum"}
  ROOT %sum = f32[] add(%x, %y), metadata={op_name="jit(f)/finite_check/reduce_sum"}
}

%partial (p: f32[64,64], zero: f32[]) -> f32[2,2] {
  %p = f32[64,64]{1,0} parameter(0)
  %zero = f32[] parameter(1)
  ROOT %window = f32[2,2]{1,0} reduce-window(%p, %zero), window={size=32x32 stride=32x32}, to_apply=%add
}

ENTRY %main (g: f32[64,64]) -> f32[2,2] {
  %g = f32[64,64]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %ynn_fusion.3 = f32[2,2]{1,0} fusion(%g, %c), kind=kCustom, calls=%partial
}
"""


def test_an_instruction_without_a_name_of_its_own_takes_that_of_what_it_calls():
    instructions = profile_cpu.instruction_texts(PARTIAL_SUM)
    assert "op_name" not in instructions["ynn_fusion.3"]
    assert profile_cpu.category("ynn_fusion.3", instructions) == "finiteness check"
    assert profile_cpu.category("g", instructions) == "other"


def test_rounds_merge_and_ratios_are_taken_within_each_round():
    def run(framework, seconds):
        return {"framework": framework, "model": "cs236", "batch": 100, "epoch_times": [seconds, seconds + 0.2, 9.0],
                "compile_seconds": seconds, "peak_rss_mb": 10 * seconds}

    rounds = [[run("jax", 1.0), run("torch", 2.0)], [run("jax", 1.5), run("torch", 2.0)],
              [run("jax", 3.0), run("torch", 4.0)]]  # the third round on a slower machine
    results = [benchmark.merge_rounds([r[i] for r in rounds]) for i in range(2)]
    assert results[0]["epoch_times"] == [1.0, 1.2, 9.0, 1.5, 1.7, 9.0, 3.0, 3.2, 9.0]
    assert results[0]["round_seconds"] == [1.2, 1.7, 3.2] and results[0]["compile_seconds"] == 1.5
    assert results[0]["peak_rss_mb"] == 30.0
    benchmark.add_time_ratios(results, rounds)
    ratios = [1.2 / 2.2, 1.7 / 2.2, 3.2 / 4.2]
    assert results[0]["time_ratio_vs_torch_eager"] == ratios[2]  # the median of the three
    assert results[0]["time_ratio_range"] == [ratios[0], ratios[1]]
    assert benchmark._ratio_text(results[0]) == "0.76 (0.55-0.77)"
    assert benchmark._ratio_text(results[1]) == "1.00"
    rounds[1][1] = {"framework": "torch", "model": "cs236", "batch": 100, "error": "out of memory"}
    failed = [benchmark.merge_rounds([r[i] for r in rounds]) for i in range(2)]
    benchmark.add_time_ratios(failed, rounds)
    assert failed[1]["error"] == "out of memory" and "time_ratio_vs_torch_eager" not in failed[0]


def test_the_cs236_cases_are_the_first_rows_of_the_cpu_table():
    common = {"epochs": 1, "manual_dir": None}
    quick = benchmark.cases("cs236", common)
    assert quick == benchmark.cases("cpu", common)[:3]
    assert {(c["model"], c["batch"]) for c in quick} == {("cs236", 100)}
    assert [c["framework"] for c in quick] == ["jax", "torch", "torch_compile"]
