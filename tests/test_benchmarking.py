"""The benchmark's measuring tools, report, pairing of rows into target ratios, case plan and
worker protocol (the benchmark itself is run by `difffccf benchmark`, never timed here)."""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difffccf_jax import files
from difffccf_jax.benchmark import cases, measure, suite
from difffccf_jax.model import graph
from difffccf_jax.benchmark.measure import Row, Target, Timing
from difffccf_jax.commands import benchmark as benchmark_command
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import generator
from difffccf_jax.data.generator import TASKS
from difffccf_jax.errors import UserError


class FakeClock:
    """Stands in for the `time` module of measure.py: wall and CPU time pass only when a test
    spends them, so timings are exact whatever the machine's load."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def perf_counter(self):
        return self.wall

    def process_time(self):
        return self.cpu

    def spend(self, wall, cpu=0.0):
        self.wall += wall
        self.cpu += cpu


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(measure, "time", fake)
    return fake


@pytest.mark.timing
def test_first_call_includes_compilation_and_steady_state_does_not():
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    x = jnp.ones((64, 64))
    calls = []

    def call():
        calls.append(1)
        jax.block_until_ready(f(x))

    timing = measure.time_calls(call, repeats=5)
    assert len(calls) == 6 and timing.repeats == 5
    assert timing.first_s > timing.steady_s  # the first call traced and compiled f

    g = jax.jit(lambda x: jnp.cos(x) * 3.0)
    timing, compiled = measure.time_jax(g, (x,), repeats=3)
    assert timing.compile_s > timing.steady_s
    np.testing.assert_allclose(compiled(x), np.cos(np.ones((64, 64))) * 3.0, rtol=1e-6)


def test_steady_time_is_the_median_of_the_repeats_and_cpu_time_is_its_own(clock):
    spent = iter([(0.2, 0.1), (0.01, 0.01), (0.05, 0.0), (0.03, 0.02)])  # (wall, CPU)
    timing = measure.time_calls(lambda: clock.spend(*next(spent)), repeats=3)
    # first call apart; medians of the three repeats; the fastest repeat
    assert tuple(timing) == pytest.approx((0.0, 0.2, 0.03, 0.01, 3, 0.01))


def test_repeats_fit_the_budget_within_bounds():
    assert measure.repeats_within(1.0, 10.0, 5) == 5
    assert measure.repeats_within(1.0, 3.0, 5) == 3
    assert measure.repeats_within(10.0, 1.0, 5) == 2
    assert measure.repeats_within(0.1, 60.0, 5) == 10  # fast: at least a second of calls
    assert measure.repeats_within(0.1, 0.5, 5) == 5  # ... within the budget
    assert measure.repeats_within(1e-5, 60.0, 5) == measure.MAX_FAST_REPEATS


def test_a_budget_cuts_the_repeats_after_a_slow_first_call(clock):
    calls = []

    def call():
        calls.append(1)
        clock.spend(0.05)

    timing = measure.time_calls(call, repeats=10, budget_s=0.12)
    assert timing.repeats == 2 and len(calls) == 3


def test_alternating_timing_calls_in_turn_and_keeps_each_calls_own_medians(clock):
    """Two calls: first calls apart, then rounds a, b, a, b, ...; each Timing holds the
    medians of its own repeats, its compile time and its fastest repeat."""
    order = []
    costs = {"a": iter([(1.0, 0.5), (0.2, 0.1), (0.4, 0.3), (0.3, 0.2)]),
             "b": iter([(2.0, 1.0), (0.5, 0.5), (0.7, 0.6), (0.6, 0.4)])}

    def call(name):
        order.append(name)
        clock.spend(*next(costs[name]))

    timings = measure.time_alternating({"a": lambda: call("a"), "b": lambda: call("b")},
                                       repeats=3, compile_s={"b": 9.0})
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert tuple(timings["a"]) == pytest.approx((0.0, 1.0, 0.3, 0.2, 3, 0.2))
    assert tuple(timings["b"]) == pytest.approx((9.0, 2.0, 0.6, 0.5, 3, 0.5))


def test_alternating_rounds_fit_the_budget(clock):
    order = []

    def call(name):
        order.append(name)
        clock.spend(0.05)

    timings = measure.time_alternating({"a": lambda: call("a"), "b": lambda: call("b")},
                                       repeats=10, budget_s=0.35)
    # a round as slow as the first calls takes 0.1 s: 3 rounds fit in 0.35 s
    assert timings["a"].repeats == timings["b"].repeats == 3 and len(order) == 2 + 6
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        measure.time_alternating({"a": lambda: None}, repeats=0)


def test_xla_flop_count_of_a_matmul_is_2mnk_and_buffers_hold_its_operands():
    m, k, n = 64, 32, 48
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert measure.xla_flops(compiled) == 2 * m * n * k
    operands = 4 * (m * k + k * n + m * n)
    assert operands <= measure.xla_buffer_bytes(compiled) < operands + 2 ** 20


def test_measurement_row_derives_rate_and_share_of_matmul():
    row = Row("U-Net forward", "paper (compat)", 1, "JAX", Timing(2.0, 0.6, 0.5, 0.9, 4),
              flops=2e9, rss_mib=100.4, buffers_mib=12.25, load=1.5, note="n")
    cells = measure.measurement_row(row, matmul_gflops=8.0)
    assert len(cells) == len(measure.MEASUREMENT_COLUMNS) == 16
    named = dict(zip(measure.MEASUREMENT_COLUMNS, cells))
    assert named["GFLOP/s"] == "4.0" and named["% of matmul"] == "50"
    assert named["steady s"] == "0.5" and named["compile s"] == "2"
    assert named["peak RSS MiB"] == "100" and named["XLA buffers MiB"] == "12.2"
    failed = measure.measurement_row(row._replace(timing=None), 8.0)
    assert dict(zip(measure.MEASUREMENT_COLUMNS, failed))["steady s"] == "failed"


def test_markdown_table_has_header_rule_and_rows():
    text = measure.markdown_table(("a", "b"), [("1", "2"), ("3", "4")])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]


def test_target_rows_say_whether_the_bound_is_met():
    assert measure.target_row(Target("t", 0.6, 0.7, True))[1:4] == ("0.60", "<= 0.7", "yes")
    assert measure.target_row(Target("t", 0.8, 0.7, True))[3] == "no"
    assert measure.target_row(Target("t", 16.0, 15.0, False))[2:4] == (">= 15", "yes")
    assert measure.target_row(Target("t", None, 15.0, False))[3] == "not measured"
    assert measure.target_row(Target("t", 3.0, None))[2:4] == ("—", "—")


def _row(case, config, batch, framework, steady, **fields):
    return Row(case, config, batch, framework, Timing(1.0, steady, steady, steady, 3), **fields)


def test_targets_pair_jax_with_the_port_graph_forms_and_samplers():
    forward, train = "U-Net forward", "train step (stand-in L1, AdamW)"
    operators = "graph operators (A z, T_0..T_2(L) z), "
    rows = [
        _row(forward, "paper (compat)", 1, "JAX", 3.0),
        _row(forward, "paper (compat)", 1, "PyTorch port", 5.0),
        _row(forward, "tiny", 4, "JAX", 1.0),
        _row(forward, "tiny", 4, "PyTorch port", 4.0),
        _row(train, "paper (compat)", 1, "JAX", 8.0),
        _row(train, "paper (compat)", 1, "PyTorch port", 10.0),
        _row(operators + "stencil", "paper 32x32", 1, "JAX", 0.01, buffers_mib=2.0),
        _row(operators + "dense", "paper 32x32", 1, "JAX", 0.2, buffers_mib=10.0),
        _row("sampler, 100 steps (respaced)", "tiny, T=2000", 1, "JAX", 2.0),
        _row("sampler, 2000 steps (full)", "tiny, T=2000", 1, "JAX", 36.0),
    ]
    found = {t.name: t for t in suite.all_targets(rows)}
    paper = found["U-Net forward: JAX / PyTorch port, paper (compat), batch 1"]
    assert paper.measured == pytest.approx(0.6) and paper.required == 0.7 and paper.at_most
    tiny = found["U-Net forward: JAX / PyTorch port, tiny, batch 4"]
    assert tiny.measured == pytest.approx(0.25) and tiny.required is None
    step = found[f"{train}: JAX / PyTorch port, paper (compat), batch 1"]
    assert step.measured == pytest.approx(0.8)
    speed = found["graph operators: dense / stencil time, paper 32x32"]
    assert speed.measured == pytest.approx(20.0) and speed.required == 10.0 and not speed.at_most
    memory = found["graph operators: stencil / dense memory, paper 32x32"]
    assert memory.measured == pytest.approx(0.2)
    sampler = found["sampling throughput: 100 steps (respaced) / 2000 steps (full), "
                    "tiny, T=2000, batch 1"]
    assert sampler.measured == pytest.approx(18.0) and sampler.required == 15.0
    assert len(found) == 6


def test_port_rows_take_the_flop_count_of_their_jax_counterpart():
    rows = [_row("U-Net forward", "tiny", 1, "JAX", 1.0, flops=5e9),
            _row("U-Net forward", "tiny", 1, "PyTorch port", 2.0),
            _row("U-Net forward", "tiny", 4, "PyTorch port", 2.0)]
    filled = suite.with_counterpart_flops(rows)
    assert [r.flops for r in filled] == [5e9, 5e9, None]
    assert suite.matmul_rate(
        [_row("float32 matmul", "8^2", 1, "JAX", 0.5, flops=4e9),
         _row("float32 matmul", "8^2", 1, "PyTorch port", 1.0, flops=4e9)]) == pytest.approx(8.0)


def test_report_and_its_data_are_written_atomically_and_read_back(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "BENCHMARKS.md"
    rows = [_row("U-Net forward", "tiny", 1, "JAX", 1.0, flops=2e9)]
    runs = [measure.Run("difffccf benchmark --quick", "2026-01-02 03:04", 1.0, 2.0)]
    text = measure.report("Title", runs, rows, [], "- CPU: x", 4.0, ["a note"])
    measure.write_report(str(path), text, measure.results_json(runs, rows, None))
    assert path.read_text() == text
    assert sorted(os.listdir(path.parent)) == ["BENCHMARKS.json", "BENCHMARKS.md"]
    assert measure.read_results(str(tmp_path / "sub" / "BENCHMARKS.json")) == (
        runs, rows, None)
    for heading in ("# Title", "## Runs", "## Machine", "## Targets", "## Measurements",
                    "## Notes"):
        assert heading in text
    assert "1. 2026-01-02 03:04 UTC" in text and "       difffccf benchmark --quick" in text
    assert "| 2.00 | 2.0 | 50 | — | 1 |" in text

    def write_half_then_fail(temporary, content):
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(content[:10])
        raise OSError("disk full")

    monkeypatch.setattr(files, "_write_text", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        measure.write_report(str(path), "new text " * 100, "{}")
    assert path.read_text() == text
    assert sorted(os.listdir(path.parent)) == ["BENCHMARKS.json", "BENCHMARKS.md"]


def test_merging_runs_replaces_re_measured_cases_in_place():
    old = [_row("U-Net forward", "paper (compat)", 1, "JAX", 3.0),
           _row("U-Net forward", "paper (compat)", 1, "PyTorch port", 5.0),
           _row("U-Net forward", "tiny", 1, "JAX", 0.1)]
    new = [_row("U-Net forward", "paper (compat)", 1, "PyTorch port", 2.0)._replace(run=2),
           _row("U-Net forward", "paper (compat)", 4, "JAX", 9.0)._replace(run=2)]
    merged = measure.merge_rows(old, new)
    assert [(r.config, r.batch, r.framework, r.run, r.timing.steady_s) for r in merged] == [
        ("paper (compat)", 1, "JAX", 1, 3.0), ("paper (compat)", 1, "PyTorch port", 2, 2.0),
        ("tiny", 1, "JAX", 1, 0.1), ("paper (compat)", 4, "JAX", 2, 9.0)]


def test_dense_graph_of_the_benchmark_equals_the_stencil_operators():
    z = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
    for kind in ("scaled", "unnormalized"):
        dense = cases.dense_graph(*cases.dense_graph_matrices(3, 5, kind))
        stencil = graph.stencil_graph(kind)
        np.testing.assert_allclose(dense.adjacency(z), stencil.adjacency(z), atol=1e-5)
        np.testing.assert_allclose(dense.laplacian(z), stencil.laplacian(z), atol=1e-5)


def _args(**overrides):
    values = dict(preset=None, configs=None, batch_sizes=None, cases="forward,sampling",
                  graph_sizes=None, matmul_size=None, max_repeats=None, budget_s=None,
                  sampling_steps=100, whole_sampling_max_size=None, case_timeout_s=None,
                  dtypes="float32,bfloat16", fast_compile=False, out="B.md", update=False)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_plan_compares_paper_in_compat_mode_and_estimates_its_sampler():
    options, command = benchmark_command.options_from_args(_args(batch_sizes="1,4"))
    assert command.startswith("difffccf benchmark --configs paper,tiny --batch-sizes 1,4")
    cases = suite.plan(options)
    forward = [(c.label, c.batch, c.framework, c.compat) for c in cases if c.kind == "forward"]
    assert forward == [("paper (compat)", 1, "jax", True), ("paper (compat)", 1, "torch", True),
                       ("paper (compat)", 4, "jax", True), ("paper (compat)", 4, "torch", True),
                       ("tiny", 1, "jax", False), ("tiny", 1, "torch", False),
                       ("tiny", 4, "jax", False), ("tiny", 4, "torch", False)]
    sampling = [(c.label, c.batch, c.steps, c.estimate, c.diffusion_steps)
                for c in cases if c.kind == "sampling"]
    assert sampling == [("paper", 1, 100, True, 2000),
                        ("tiny, T=2000", 1, 100, False, 2000), ("tiny, T=2000", 1, 2000, False, 2000),
                        ("tiny, T=2000", 4, 100, False, 2000), ("tiny, T=2000", 4, 2000, False, 2000)]


def test_quick_options_and_bad_options():
    options, _ = benchmark_command.options_from_args(_args(preset="quick", cases="graph"))
    assert options.batch_sizes == (1,) and options.graph_sizes == (32,)
    assert [os.path.basename(p) for p in options.configs] == ["tiny.py"]
    with pytest.raises(UserError, match="--cases"):
        benchmark_command.options_from_args(_args(cases="forward,speed"))
    with pytest.raises(UserError, match="--batch-sizes"):
        benchmark_command.options_from_args(_args(batch_sizes="1,x"))
    with pytest.raises(UserError, match="--configs"):
        benchmark_command.options_from_args(_args(configs="nonexistent"))


@pytest.mark.timing
@pytest.mark.multiprocess
def test_worker_process_measures_a_matmul_and_reports_a_failure():
    size = 512
    case = cases.Case("matmul", size=size, label="512^2", max_repeats=2, budget_s=1.0)
    rows, accelerator = cases.run_in_subprocess(case, timeout_s=120)
    (row,) = rows
    assert row.flops == 2 * size ** 3 and row.timing.repeats >= 2
    assert row.rss_mib >= 3 * size * size * 4 / measure.MIB  # holds both operands and the result
    assert accelerator is None or isinstance(accelerator, str)
    broken = case._replace(kind="forward", config="/nonexistent/config.py")
    (row,), _ = cases.run_in_subprocess(broken, timeout_s=120)
    assert row.timing is None and row.note.startswith("failed:")


def test_update_needs_earlier_results_next_to_the_report(tmp_path):
    with pytest.raises(UserError, match="no earlier results"):
        suite.previous_results(str(tmp_path / "BENCHMARKS.md"))
    (tmp_path / "BENCHMARKS.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a results file"):
        suite.previous_results(str(tmp_path / "BENCHMARKS.md"))


def test_cases_parts_are_checked_and_the_message_names_the_choices():
    assert benchmark_command.parse_parts("generator,,metrics") == ("generator", "metrics")
    with pytest.raises(UserError, match=r"--cases: unknown part\(s\) speed, gpu in "
                                        r"'forward,speed,gpu'; choose among matmul, .*, "
                                        r"generator, metrics, fuse_throughput, data_memory$"):
        benchmark_command.parse_parts("forward,speed,gpu")
    with pytest.raises(UserError, match="--cases: no part in ','"):
        benchmark_command.parse_parts(",")


def test_fuse_throughput_plans_every_folder_size_per_device_count_and_targets_its_ratios():
    options, command = benchmark_command.options_from_args(
        _args(cases="fuse_throughput", configs="tiny"))
    assert "--cases fuse_throughput " in command
    planned = suite.plan(options)
    assert [(case.devices, case.variant, case.pairs) for case in planned] == [
        (1, "memory", 1000), (1, "folder", 100), (1, "folder", 1000),
        (4, "memory", 1000), (4, "folder", 100), (4, "folder", 1000),
        (1, "folder", 10000), (4, "folder", 10000), (1, "memory", 1000), (1, "folder", 1000)]
    assert [(case.kind, case.size, case.steps, case.batch) for case in planned] == [
        ("fuse_throughput", 64, 1, 8)] * 8 + [("fuse_throughput", 64, 4, 8)] * 2

    def row(case, pairs, seconds, rss):
        return Row(cases.case_name(case._replace(pairs=pairs)), "tiny", pairs, "JAX",
                   Timing(1.0, seconds, seconds, seconds, 1), rss_mib=rss)

    memory, *folders = [case for case in planned if case.devices == 4]
    assert [case.pairs for case in folders] == [100, 1000, 10000]
    rows = [row(memory, 1000, 10.0, 500.0), row(folders[0], 100, 1.0, 480.0),
            row(folders[1], 1000, 12.5, 500.0), row(folders[2], 10000, 100.0, 560.0)]
    targets = {target.name: target for target in suite.fuse_targets(rows)}
    setting = "tiny, 64 px, 1 sampling steps, 4 dev"
    assert targets[f"fuse: folder / in-memory sampler pairs/s, 1000 pairs, {setting}"
                   ].measured == pytest.approx(0.8)
    assert targets[f"fuse: folder / in-memory sampler pairs/s, 10000 pairs, {setting}"
                   ].measured == pytest.approx(1.0)
    peak = targets[f"fuse: peak memory, 10000 / 1000 pairs, {setting}"]
    assert peak.measured == pytest.approx(1.12) and (peak.required, peak.at_most) == (1.1, True)
    assert len(targets) == 4
    # the extra rows at 4 steps: their ratio, without a target
    extra = suite.fuse_targets([row(planned[-2], 1000, 20.0, 500.0),
                                row(planned[-1], 1000, 25.0, 500.0)])
    assert [(target.name, target.measured, target.required) for target in extra] == [
        ("fuse: folder / in-memory sampler pairs/s, 1000 pairs, tiny, 64 px, 4 sampling steps, "
         "1 dev", pytest.approx(0.8), None)]


def test_plan_writes_every_generator_task_both_ways_and_scores_metrics_per_config():
    options, command = benchmark_command.options_from_args(_args(cases="generator,metrics"))
    assert "--cases generator,metrics " in command
    planned = suite.plan(options)
    assert {c.framework for c in planned} == {"numpy"}
    generator = [(c.label, c.task, c.variant) for c in planned if c.kind == "generator"]
    assert len(generator) == 2 * len(TASKS) * 2
    assert generator[:2] == [("paper 256x256", "pet", "aligned"),
                             ("paper 256x256", "pet", "misaligned")]
    assert generator[-1] == ("tiny 32x32", TASKS[-1], "misaligned")
    assert [(c.label, c.task) for c in planned if c.kind == "metrics"] == [
        ("paper 256x256", "pet"), ("tiny 32x32", "pet")]


@pytest.mark.timing
def test_generator_and_metrics_cases_time_one_pair_per_call(tiny_config_path):
    common = dict(framework="numpy", config=tiny_config_path, label="tiny 32x32",
                  max_repeats=2, budget_s=0.3)
    for case, name, note in [
            (cases.Case("generator", task="ct", variant="misaligned", **common),
             f"generator, ct pair ({generator.DEFAULT_ANATOMY}), B misaligned",
             "per CPU second; PNG files and the "
             "displacement field"),
            (cases.Case("metrics", task="pet", **common),
             "fusion metrics (all_metrics), pet pair", "s per 100 pairs")]:
        result = cases.run_here(case)
        (row,) = [measure.row_from_dict(r) for r in result["rows"]]
        assert (row.case, row.config, row.batch, row.framework) == (name, "tiny 32x32", 1,
                                                                     "NumPy")
        assert result["accelerator"] is None and row.timing.repeats >= 2
        assert row.timing.compile_s == 0 and row.flops is None and note in row.note
        # a failure replaces the row it would have measured when runs are merged
        assert measure.row_key(cases.failed_row(case, "failed: x")) == measure.row_key(row)


def test_generator_and_metrics_targets_use_the_slowest_task_and_100_pairs():
    rows = [_row("generator, pet pair, B aligned", "paper 256x256", 1, "NumPy", 0.04),
            _row("generator, ct pair, B misaligned", "paper 256x256", 1, "NumPy", 0.05),
            _row("generator, ct pair, B aligned", "tiny 32x32", 1, "NumPy", 0.01),
            _row("generator, gfp pair, B aligned", "tiny 32x32", 1, "NumPy", 0.1)
            ._replace(timing=None),
            _row("fusion metrics (all_metrics), pet pair", "paper 256x256", 1, "NumPy", 0.7)]
    found = {t.name: t for t in suite.all_targets(rows)}
    paper = found["generator: pairs per CPU second, slowest task, paper 256x256"]
    assert paper.measured == pytest.approx(20.0) and paper.required == 20.0
    assert not paper.at_most
    tiny = found["generator: pairs per CPU second, slowest task, tiny 32x32"]
    assert tiny.measured == pytest.approx(100.0) and tiny.required is None
    scoring = found["fusion metrics: s per 100 pairs, paper 256x256"]
    assert scoring.measured == pytest.approx(70.0) and scoring.required == 60.0
    assert scoring.at_most and measure.target_row(scoring)[3] == "no"
    assert len(found) == 3


def small_config_file(tmp_path, tiny_config_path):
    """The tiny config shrunk to 16 px with two levels of one residual block, as a config file
    (what --configs accepts), so that a case compiles quickly."""
    from difffccf_jax.config_cli import save_json_config

    path = str(tmp_path / "tiny.json")
    save_json_config(load_config(tiny_config_path, (
        ("model.channel_mult", "(1, 2)"), ("model.num_res_blocks", "1"),
        ("model.deformation_features", "(8, 16)"), ("data.image_size", "16"),
        ("loss.registration_size", "16"))), path)
    return path


@pytest.mark.slow
def test_sampling_case_measures_the_respaced_sampler(tmp_path, tiny_config_path):
    case = cases.Case("sampling", config=small_config_file(tmp_path, tiny_config_path),
                      label="tiny", steps=2, max_repeats=2, budget_s=1.0)
    (row,) = cases.sampling_jax(case)
    assert (row.case, row.config, row.framework) == ("sampler, 2 steps (respaced)", "tiny",
                                                     "JAX")
    assert row.timing.repeats >= 2 and row.buffers_mib > 0 and "pairs/s" in row.note
    assert measure.row_key(cases.failed_row(case, "timed out")) == measure.row_key(row)


def test_a_failed_case_has_the_key_of_the_row_it_would_have_measured(tmp_path,
                                                                     tiny_config_path):
    """The graph cases' names and grid labels, and the full-schedule sampler's name, come from
    the one naming function, so a failed run's row is replaced when the case runs again."""
    config = small_config_file(tmp_path, tiny_config_path)
    common = dict(config=config, label="tiny", max_repeats=1, budget_s=0.1, size=4, batch=1)
    for part in ("operators", "layer"):
        case = cases.Case("graph", part=part, variant="stencil", **common)
        (row,) = cases.graph_jax(case)
        assert row.config == "tiny 4x4"
        assert measure.row_key(cases.failed_row(case, "failed: x")) == measure.row_key(row)
    full = cases.Case("sampling", steps=load_config(config).diffusion.steps, **common)
    assert cases.case_name(full) == f"sampler, {full.steps} steps (full)"


def test_peak_rates_are_looked_up_by_device_kind_and_dtype():
    assert measure.peak_flops("NVIDIA H200 (gpu)", "bfloat16") == pytest.approx(989.4e12)
    assert measure.peak_flops("NVIDIA H100 80GB HBM3 (gpu)", "float32") == pytest.approx(
        494.7e12)
    assert measure.peak_flops("NVIDIA H100 PCIe (gpu)", "bfloat16") == pytest.approx(756e12)
    assert measure.peak_flops("NVIDIA H200 (gpu)", "float16") is None
    assert measure.peak_flops("Some Future GPU (gpu)", "bfloat16") is None
    assert measure.peak_flops("", "float32") is None


def test_throughput_table_derives_pairs_per_second_utilisation_and_memory():
    step = "train step (train.py, all losses)"
    rows = [_row(step, "paper, bfloat16", 4, "JAX", 0.5, flops=2e14, device="NVIDIA H200 (gpu)",
                 dtype="bfloat16", device_mib=1234.4, rss_mib=50.0, run=2),
            _row(step, "tiny, float32", 4, "JAX", 0.25, flops=1e9, dtype="float32",
                 rss_mib=300.2),
            _row("sampler, 100 steps (respaced)", "paper", 2, "JAX", 4.0, rss_mib=10.0),
            _row("U-Net forward", "paper", 1, "JAX", 1.0, flops=1e9),
            _row(step, "paper, float32", 4, "JAX", 1.0)._replace(timing=None)]
    lines = measure.throughput_table(rows).splitlines()
    assert lines[0] == "| " + " | ".join(measure.THROUGHPUT_COLUMNS) + " |"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    named = [dict(zip(measure.THROUGHPUT_COLUMNS, row)) for row in cells]
    assert [n["case"] for n in named] == [step, step, "sampler, 100 steps (respaced)"]
    gpu, cpu, sampler = named
    # 4 pairs in 0.5 s; 2e14 FLOP in 0.5 s = 400 TFLOP/s = 40.4 % of the H200's 989.4
    assert (gpu["pairs/s"], gpu["TFLOP/s"], gpu["peak TFLOP/s"], gpu["% of peak"]) == (
        "8", "400.000", "989.4", "40.4")
    assert gpu["peak memory MiB"] == "1234 (device)" and gpu["run"] == "2"
    assert (cpu["device"], cpu["pairs/s"], cpu["TFLOP/s"], cpu["% of peak"]) == (
        "CPU", "16", "0.004", "—")
    assert cpu["peak memory MiB"] == "300 (RSS)"
    assert (sampler["pairs/s"], sampler["TFLOP/s"], sampler["dtype"]) == ("0.5", "—", "—")


def test_step_split_target_is_the_real_step_over_the_network_step():
    whole, network = cases.STEP_SPLIT[:2]
    rows = [_row(whole, "paper", 1, "JAX", 3.0)._replace(timing=Timing(9.0, 4.0, 3.0, 6.0, 2)),
            _row(network, "paper", 1, "JAX", 2.0),
            _row(whole, "tiny", 1, "JAX", 0.3), _row(network, "tiny", 1, "JAX", 0.3),
            _row(whole, "tiny", 4, "JAX", 1.0)]
    found = {t.name: t for t in suite.all_targets(rows)}
    paper = found["real step / network forward + backward, paper, batch 1"]
    assert paper.measured == pytest.approx(1.5) and paper.required == 1.15 and paper.at_most
    cpu = found["real step / network forward + backward, paper, batch 1, CPU time"]
    assert cpu.measured == pytest.approx(3.0) and cpu.required is None
    assert found["real step / network forward + backward, tiny, batch 1"].required is None
    missing = found["real step / network forward + backward, tiny, batch 4"]
    assert missing.measured is None and missing.required == 1.15 and len(found) == 6


def test_accelerator_preset_plans_both_dtypes_and_the_respaced_sampler_alone():
    options, command = benchmark_command.options_from_args(_args(preset="accelerator",
                                                                 cases=None))
    assert command.startswith("difffccf benchmark --configs paper --batch-sizes 4 "
                              "--cases throughput ")
    assert "--dtypes float32,bfloat16 " in command and options.case_timeout_s == 150
    planned = [(c.kind, c.label, c.batch, c.dtype, c.steps, c.estimate, c.diffusion_steps)
               for c in suite.plan(options)]
    assert planned == [("train_full", "paper, float32", 4, "float32", 0, False, 0),
                       ("train_full", "paper, bfloat16", 4, "bfloat16", 0, False, 0),
                       ("sampling", "paper", 4, "", 100, False, 2000)]
    tiny, _ = benchmark_command.options_from_args(_args(preset="accelerator", cases=None,
                                                        configs="tiny", dtypes="bfloat16"))
    assert [c.label for c in suite.plan(tiny)] == ["tiny, bfloat16", "tiny"]
    with pytest.raises(UserError, match="--dtypes"):
        benchmark_command.options_from_args(_args(dtypes="float32,int8"))
    # a respaced sampler without its full twin gives no throughput-ratio target
    rows = [_row("sampler, 100 steps (respaced)", "paper", 4, "JAX", 2.0, device="G")]
    assert suite.all_targets(rows) == []


def test_rows_of_different_devices_never_replace_each_other_and_runs_name_machines():
    cpu = _row("sampler, 100 steps (respaced)", "paper", 1, "JAX", 400.0)
    gpu = cpu._replace(device="NVIDIA H200 (gpu)", run=2)
    assert measure.merge_rows([cpu], [gpu]) == [cpu, gpu]
    run = measure.Run("difffccf benchmark --preset accelerator", "2026-01-02 03:04", 0.1, 0.2,
                      "x86, 16 cores, GPU NVIDIA H200 (gpu)")
    assert measure.runs_list([run]).startswith(
        "1. 2026-01-02 03:04 UTC on x86, 16 cores, GPU NVIDIA H200 (gpu), load average")
    assert measure.machine_summary(None).endswith(", no GPU")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_accelerator_preset_cpu_form_writes_the_throughput_table(tmp_path, tiny_config_path):
    # The CPU form on the small config compiled at XLA optimisation level 0 (--fast-compile),
    # so that its three cases compile quickly.
    config = small_config_file(tmp_path, tiny_config_path)
    out = str(tmp_path / "BENCHMARKS.md")
    options, command = benchmark_command.options_from_args(_args(
        preset="accelerator", cases=None, configs=config, batch_sizes="2", sampling_steps=3,
        max_repeats=2, budget_s=1.0, case_timeout_s=3600.0, fast_compile=True, out=out))
    assert "--fast-compile" in command
    text = suite.run(options, command, out, progress=open(os.devnull, "w"))
    _, rows, accelerator = measure.read_results(measure.data_path(out))
    assert accelerator is None and all(r.timing for r in rows)
    table = text.split("## Throughput and utilisation\n\n")[1].split("\n\n")[0].splitlines()
    named = [dict(zip(measure.THROUGHPUT_COLUMNS,
                      [c.strip() for c in line.strip("|").split("|")])) for line in table[2:]]
    assert [(n["case"], n["config"], n["dtype"]) for n in named] == [
        ("train step (train.py, all losses)", "tiny, float32", "float32"),
        ("train step (train.py, all losses)", "tiny, bfloat16", "bfloat16"),
        ("sampler, 3 steps (respaced)", "tiny", "float32")]
    for row, cells in zip(rows, named):
        assert row.batch == 2 and row.device == "" and cells["device"] == "CPU"
        assert cells["pairs/s"] == f"{2 / row.timing.steady_s:.3g}"
        assert cells["% of peak"] == "—" and cells["peak memory MiB"].endswith("(RSS)")
        assert row.rss_mib > 0
    for row, cells in zip(rows[:2], named[:2]):
        assert row.flops > 0
        assert cells["TFLOP/s"] == f"{row.flops / row.timing.steady_s / 1e12:.3f}"
    # bfloat16 compute is the same network plus conversions (7 % more counted FLOPs at 32 px);
    # on CPU, float32 kernel gradients below batch 4 run in strips whose padding rows count too
    assert 0.85 * rows[0].flops < rows[1].flops < 1.15 * rows[0].flops


def test_data_memory_plans_one_case_and_targets_the_larger_share_over_one_process():
    options, command = benchmark_command.options_from_args(
        _args(cases="data_memory", configs="tiny"))
    assert "--cases data_memory " in command
    (case,) = suite.plan(options)
    assert (case.kind, case.pairs, case.size, case.batch, case.devices) == (
        "data_memory", 2000, 64, 8, 1)
    assert "data_memory" not in benchmark_command.DEFAULTS["cases"].split(",")

    def row(processes, variant, rss, process=0):
        return Row(cases.data_memory_name(case, processes, variant, process), "tiny", 8, "JAX",
                   Timing(0.0, 0.0, 1.0, 1.0, 1), rss_mib=rss)

    rows = [row(1, "memory", 200.0), row(1, "cache", 20.0), row(2, "cache", 30.0, 0),
            row(2, "cache", 40.0, 1)]
    assert cases.case_name(case) == rows[0].case
    targets = suite.data_memory_targets(rows)
    setting = "2000 pairs of 64 px, batch 8, tiny"
    assert [(t.name, t.measured, t.required, t.at_most) for t in targets] == [
        (f"data memory per process, 2 processes / 1 process, {setting}", 0.2, 0.6, True),
        (f"data memory per process, 2 processes / 1 process from the cache, {setting}", 2.0,
         None, True)]
    assert suite.data_memory_targets(rows[:3]) == []  # one process of two missing


@pytest.mark.slow
@pytest.mark.multiprocess
def test_data_memory_case_measures_one_and_two_reading_processes(tiny_config_path):
    pairs = 64
    case = cases.Case("data_memory", config=tiny_config_path, label="tiny", pairs=pairs, size=64,
                      batch=8, devices=1)
    rows = cases.data_memory_jax(case)
    assert [row.case for row in rows] == [
        cases.data_memory_name(case, 1, "memory"), cases.data_memory_name(case, 1, "cache"),
        cases.data_memory_name(case, 2, "cache", 0), cases.data_memory_name(case, 2, "cache", 1)]
    assert all(row.timing is not None for row in rows), [row.note for row in rows]
    pids = [row.note.split(";")[0] for row in rows]
    assert len(set(pids)) == 4 and f"pid {os.getpid()}" not in pids  # a fresh process each
    assert ["ArraySource" in row.note for row in rows] == [True, False, False, False]
    assert ["8 rows each read here" in row.note for row in rows] == [True, True, False, False]
    assert all("4 rows each read here" in row.note for row in rows[2:])  # its half of a batch
    pairs_mib = pairs * 64 * 64 * (1 + 3) * 4 / measure.MIB
    assert rows[0].rss_mib >= pairs_mib  # the whole set, float32, in memory
