"""Training on generated data with the tiny config: sharding, resume, restore, multi-process.

One uninterrupted multi-task run (module fixture, 2 epochs x 3 steps on 4 devices) is the
reference that the other runs are compared with; every run has the same step program, so the
persistent compilation cache compiles it once per device layout.
"""

import json
import os
import shutil
import signal
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from difffccf_jax import cli, parallel
from difffccf_jax.evaluation import trained_run
from difffccf_jax.model import checkpoints
from difffccf_jax.training import losses, stopping, train, weighting
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import generator, layouts
from processes import run_two_processes

pytestmark = pytest.mark.slow  # whole training runs; see pytest.ini

# The reference run: the tiny config's model cut to two levels of one residual block on 16 px
# pairs (what the run's plumbing needs, compiled in half the time), pet and spect drawn per
# epoch, a checkpoint per epoch.
OVERRIDES = (("seed", "1"), ("data.tasks", "('pet', 'spect')"),
             ("train.epochs", "2"), ("train.steps_per_epoch", "3"),
             ("train.checkpoint_every_epochs", "1"), ("train.log_every_steps", "1"),
             ("train.fast_compile", "True"), ("model.channel_mult", "(1, 2)"),
             ("model.num_res_blocks", "1"), ("model.deformation_features", "(8, 16)"),
             ("data.image_size", "16"), ("loss.registration_size", "16"))
TIMING_KEYS = ("steps_per_second", "images_per_second")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, tiny_config_path):
    root = str(tmp_path_factory.mktemp("data"))
    data = load_config(tiny_config_path).data
    for task in ("pet", "spect"):
        generator.write_task(root, layouts.layout_from_config(data, task), 8, 16, seed=0)
    return root


@pytest.fixture(scope="module")
def overrides(data_root):
    return OVERRIDES + (("data.root", data_root),)


@pytest.fixture(scope="module")
def config(tiny_config_path, overrides):
    return load_config(tiny_config_path, overrides)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config):
    """(final state, workdir) of the uninterrupted run."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    return train.fit(config, workdir), workdir


def read_metrics(workdir):
    with open(os.path.join(workdir, train.METRICS_FILE), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def step_records(records):
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in records if "loss" in r}


def host_tree(tree):
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def params_at(checkpoint_dir, config):
    """{step: params} of every step in a checkpoint directory."""
    manager = checkpoints.open_manager(checkpoint_dir, read_only=True)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = train.abstract_like(checkpoints.expected_params(config), sharding)
    return {step: checkpoints.restore(manager, step, {"params": target})[0]["params"]
            for step in manager.all_steps()}


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(host_tree(actual)), jax.tree.leaves(host_tree(expected))):
        np.testing.assert_array_equal(a, e)


def test_step_decay_task_draw_and_epoch_plan(paper_config_path):
    optim = load_config(paper_config_path).optim
    rates = [train.learning_rate_at(optim, epoch) for epoch in (0, 999, 1000, 2999, 3000)]
    np.testing.assert_allclose(rates, 2e-4 * 0.99 ** np.array([0, 0, 1, 2, 3]), rtol=1e-6)
    tasks = ("pet", "spect", "ct", "gfp", "adni")
    steps_per_pass = {t: i + 1 for i, t in enumerate(tasks)}
    plan = train.epoch_plan(0, 500, tasks, 0, steps_per_pass)
    # An epoch's task depends on (seed, epoch) only: a longer run (or a resumed one) repeats
    # the shorter run's draws, and another seed draws others.
    assert plan[:40] == train.epoch_plan(0, 40, tasks, 0, steps_per_pass)
    other = train.epoch_plan(1, 500, tasks, 0, steps_per_pass)
    assert sum(a != b for a, b in zip(plan, other)) > 300  # independent draws: ~400 differ
    counts = {t: sum(task == t for task, _ in plan) for t in tasks}
    assert all(70 <= c <= 130 for c in counts.values()), counts  # uniform: 100 each
    assert all(steps == tasks.index(task) + 1 for task, steps in plan)
    assert {s for _, s in train.epoch_plan(0, 9, tasks, 7, {})} == {7}


def test_pending_metrics_fetch_in_step_order_and_empty():
    pending = train.PendingMetrics()
    for step in (1, 2, 3):
        pending.add(step, {"loss": jnp.float32(step * 0.5)})
    records, rate = pending.fetch()
    assert records == [(1, {"loss": 0.5}), (2, {"loss": 1.0}), (3, {"loss": 1.5})]
    assert rate > 0 and len(pending) == 0 and pending.fetch()[0] == []


def test_progress_counts_the_time_budget_not_the_planned_steps():
    budget = train.TrainingProgress(total_steps=1_000_000, done_steps=0, max_minutes=5.5,
                                    enabled=True)
    assert (budget.bar.total, budget.bar.unit) == (330, "s")
    budget.advance(10, 10, "pet", 1.0)
    assert budget.bar.n <= 1  # seconds since the start, not 10 steps
    steps = train.TrainingProgress(total_steps=600, done_steps=100, max_minutes=0,
                                   enabled=True)
    steps.advance(10, 110, "pet", 1.0)
    assert (steps.bar.total, steps.bar.n, steps.bar.unit) == (600, 110, "step")


def test_ema_update_is_the_exponential_moving_average():
    ema, params = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 6.0])}
    updated = train.ema_update(ema, params, 0.75)
    np.testing.assert_allclose(updated["w"], [1.5, 3.0])


@pytest.fixture(scope="module")
def one_device_run(config):
    """100 steps of the reference config on one device from the same start, on the pet
    batches the reference run sees first: (metrics per step, host params after step 3)."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    replicated = parallel.replicated(mesh)
    run = train.setup_run(config, mesh)
    state = train.new_state(run, config, mesh)
    rules = jax.device_put(run.rules["pet"], replicated)
    learning_rate = jax.device_put(jnp.float32(config.optim.learning_rate), replicated)
    batches = run.batches["pet"]
    step_fn = train.make_train_step(mesh, replicated, **run.step_options)
    batch = next(batches)
    explore_steps = train.explore_steps_of(run, replicated)
    compiled = train.compile_step(step_fn, (state, batch, rules, learning_rate, explore_steps),
                                  True)
    metrics, params_at_3 = [], None
    for step in range(1, 101):
        state, values = compiled(state, batch, rules, learning_rate, explore_steps)
        metrics.append(jax.device_get(values))
        batch = next(batches)
        if step == 3:
            params_at_3 = host_tree(state.params)
    return metrics, params_at_3


def test_one_device_takes_the_same_steps_as_four_devices(reference, config, one_device_run):
    """The reference run (4 devices, batch split 1 per device) against one device."""
    _, workdir = reference
    batch = next(train.setup_run(config, parallel.make_mesh()).batches["pet"])
    assert batch["b"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert [s.data.shape[0] for s in batch["a"].addressable_shards] == [1, 1, 1, 1]
    four_devices = step_records(read_metrics(workdir))
    metrics, params_at_3 = one_device_run
    for step in (1, 2, 3):  # epoch 0 of the reference run trains on pet
        for name, value in metrics[step - 1].items():
            # The gradient norm sums over every parameter through the losses' kinks (clips,
            # absolute values): a different reduction order moves it by up to ~2e-4 relative.
            rtol = 1e-3 if name == "grad_norm" else 2e-5
            np.testing.assert_allclose(value, four_devices[step][name], rtol=rtol, err_msg=name)
    saved = params_at(os.path.join(workdir, train.CHECKPOINT_DIR), config)[3]
    for a, b in zip(jax.tree.leaves(host_tree(saved)), jax.tree.leaves(params_at_3)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_loss_decreases_over_100_steps(one_device_run):
    totals = np.array([values["loss"] for values in one_device_run[0]])
    assert np.all(np.isfinite(totals))
    assert totals[-20:].mean() < 0.8 * totals[:20].mean()


def test_reference_run_logs_and_checkpoints(reference, config):
    state, workdir = reference
    records = read_metrics(workdir)
    assert records[0]["compile_seconds"] > 0 and "loss" not in records[0]
    steps = step_records(records)
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    plan = train.epoch_plan(1, 2, ("pet", "spect"), 3, {})
    assert [steps[s]["task"] for s in sorted(steps)] == [t for t, n in plan for _ in range(n)]
    assert {steps[s]["task"] for s in steps} == {"pet", "spect"}
    for record in steps.values():
        weights = [record[f"weight/{name}"] for name in config.loss.weights]
        np.testing.assert_allclose(sum(weights), sum(config.loss.weights.values()), rtol=1e-5)
        assert record["learning_rate"] == pytest.approx(1e-3)
    assert all(r["steps_per_second"] > 0 for r in records if "loss" in r)
    events = os.listdir(os.path.join(workdir, train.TENSORBOARD_DIR))
    with open(os.path.join(workdir, train.TENSORBOARD_DIR, events[0]), "rb") as file:
        assert b"weight/noise" in file.read()
    manager = checkpoints.open_manager(os.path.join(workdir, train.CHECKPOINT_DIR))
    assert list(manager.all_steps()) == [3, 6]
    assert int(state.step) == 6


def test_policy_moves_the_weights_during_training(reference, config):
    state, workdir = reference
    steps = step_records(read_metrics(workdir))
    names = list(config.loss.weights)
    first = np.array([steps[1][f"weight/{n}"] for n in names])
    last = np.array([steps[6][f"weight/{n}"] for n in names])
    assert np.max(np.abs(first - last)) > 1e-3
    settings = weighting.settings_from_config(config.weighting, config.loss.weights, 6)
    initial = weighting.init_policy(settings).mean
    assert np.max(np.abs(np.asarray(host_tree(state.policy).mean) - initial)) > 1e-3
    assert int(host_tree(state.policy).count) == 6


def test_runs_of_any_length_share_one_step_program(reference, config):
    """The run's length reaches the step only through its explore_steps argument: runs of 6 and
    of 60 steps lower to one program (one compilation, one cache entry), and the spread the
    reference run logged anneals over its own exploration length."""
    mesh = parallel.make_mesh(jax.devices())
    replicated = parallel.replicated(mesh)
    programs, explore = [], []
    for epochs in (2, 20):
        run_config = config.copy_and_resolve_references()
        run_config.train.epochs = epochs
        run = train.setup_run(run_config, mesh)
        state = jax.eval_shape(run.create, jax.random.PRNGKey(0))
        example = (state, run.batches["pet"].element_spec(), run.rules["pet"],
                   jnp.float32(0.0), train.explore_steps_of(run, replicated))
        step = train.make_train_step(mesh, replicated, **run.step_options)
        programs.append(step.lower(*example).as_text())
        explore.append(run.step_options["policy_settings"].explore_steps)
    assert explore[0] != explore[1] and programs[0] == programs[1]

    settings = weighting.settings_from_config(config.weighting, config.loss.weights, 6)
    assert settings.explore_steps == explore[0]
    steps = step_records(read_metrics(reference[1]))
    for logged in sorted(steps):  # the step logged as n ran at state.step n - 1
        progress = min((logged - 1) / settings.explore_steps, 1.0)
        expected = np.exp((1 - progress) * np.log(settings.std_explore)
                          + progress * np.log(settings.std_stable))
        assert steps[logged]["policy/std"] == pytest.approx(expected, rel=1e-5)


def test_fixed_weights_and_parameter_ema_through_a_whole_run(overrides, tiny_config_path,
                                                             tmp_path):
    """Policy off: every step is weighted by the reference weights and the policy never moves.
    EMA on (decay 1/2): the saved EMA after 3 steps is the closed form of the saved parameter
    trajectory, and inference reads it."""
    config = load_config(tiny_config_path, overrides + (
        ("data.tasks", "('pet',)"), ("train.epochs", "3"), ("train.steps_per_epoch", "1"),
        ("weighting.enabled", "False"), ("optim.ema_decay", "0.5")))
    workdir = str(tmp_path / "run")
    state = train.fit(config, workdir)
    steps = step_records(read_metrics(workdir))
    assert sorted(steps) == [1, 2, 3]
    for record in steps.values():
        for name, weight in config.loss.weights.items():
            assert record[f"weight/{name}"] == pytest.approx(weight, rel=1e-6)
    settings = weighting.settings_from_config(config.weighting, config.loss.weights, 3)
    np.testing.assert_array_equal(host_tree(state.policy).mean,
                                  weighting.init_policy(settings).mean)

    mesh = parallel.make_mesh()
    initial = host_tree(train.new_state(train.setup_run(config, mesh), config, mesh).params)
    trajectory = params_at(os.path.join(workdir, train.CHECKPOINT_DIR), config)
    assert sorted(trajectory) == [1, 2, 3]
    expected = initial
    for step in (1, 2, 3):
        expected = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, expected,
                                host_tree(trajectory[step]))
    _, saved_ema = checkpoints.read_params(os.path.join(workdir, train.CHECKPOINT_DIR))
    for got, want in zip(jax.tree.leaves(host_tree(saved_ema)), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert_trees_equal(saved_ema, state.ema_params)


def back_to_epoch_one(workdir, destination):
    """A copy of the reference run's work directory as it was after epoch 1 of 2 (step 3)."""
    shutil.copytree(workdir, destination)
    shutil.rmtree(os.path.join(destination, train.CHECKPOINT_DIR, "6"))
    os.remove(os.path.join(destination, train.METRICS_FILE))
    return destination


def test_resume_continues_exactly_like_the_uninterrupted_run(reference, config, tmp_path):
    state, workdir = reference
    resumed_dir = back_to_epoch_one(workdir, str(tmp_path / "resumed"))
    resumed = train.fit(config, resumed_dir)
    assert_trees_equal(resumed, state)
    expected = step_records(read_metrics(workdir))
    got = step_records(read_metrics(resumed_dir))
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        assert got[step] == expected[step]


def signal_after_step(monkeypatch, step, signum=signal.SIGTERM):
    """Makes the training loop send `signum` to this process once `step` is dispatched."""
    add = train.StepReporter.add

    def add_then_signal(self, host_step, *args):
        add(self, host_step, *args)
        if host_step == step:
            os.kill(os.getpid(), signum)
    monkeypatch.setattr(train.StepReporter, "add", add_then_signal)


def progress_at(checkpoint_dir, step):
    manager = checkpoints.open_manager(checkpoint_dir, read_only=True)
    return manager.restore(step, args=checkpoints.ocp.args.Composite(
        progress=checkpoints.ocp.args.JsonRestore()))["progress"]


def test_sigterm_saves_mid_epoch_and_the_resumed_run_ends_bit_equal(
        reference, config, tmp_path, monkeypatch):
    """SIGTERM during step 5 (epoch 1's second step) with a checkpoint due every check: steps 4
    (timed) and 5 (the stop) are saved, `Preempted` names the step, the handlers are put back;
    resuming ends with the uninterrupted run's state, bit for bit."""
    state, workdir = reference
    timed = config.copy_and_resolve_references()
    timed.train.checkpoint_every_minutes = 1e-9
    run_dir = back_to_epoch_one(workdir, str(tmp_path / "run"))
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        signal_after_step(patch, 5)
        with pytest.raises(stopping.Preempted) as stopped:
            train.fit(timed, run_dir)
    assert (stopped.value.signum, stopped.value.step) == (signal.SIGTERM, 5)
    assert "SIGTERM after step 5" in str(stopped.value)
    assert signal.getsignal(signal.SIGTERM) is handler
    checkpoint_dir = os.path.join(run_dir, train.CHECKPOINT_DIR)
    assert list(checkpoints.open_manager(checkpoint_dir, read_only=True).all_steps()) == [3, 4, 5]
    assert {k: v for k, v in progress_at(checkpoint_dir, 5).items() if k != "data"} == dict(
        epoch=1, epoch_step=2, step=5)
    assert sorted(step_records(read_metrics(run_dir))) == [4, 5]
    assert_trees_equal(train.fit(timed, run_dir), state)
    assert sorted(step_records(read_metrics(run_dir))) == [4, 5, 6]


def test_time_budget_stops_at_the_first_check_with_a_checkpoint(reference, config, tmp_path):
    _, workdir = reference
    budget = config.copy_and_resolve_references()
    budget.train.max_minutes = 1e-9
    run_dir = back_to_epoch_one(workdir, str(tmp_path / "run"))
    assert int(train.fit(budget, run_dir).step) == 4
    manager = checkpoints.open_manager(os.path.join(run_dir, train.CHECKPOINT_DIR))
    assert list(manager.all_steps()) == [3, 4]


def test_restore_onto_two_and_one_devices(reference, config):
    state, workdir = reference
    manager = checkpoints.open_manager(os.path.join(workdir, train.CHECKPOINT_DIR))
    for count in (2, 1):
        mesh = parallel.make_mesh(jax.devices()[:count])
        abstract = jax.eval_shape(train.setup_run(config, mesh).create,
                                  jax.random.PRNGKey(config.seed))
        restored, progress = train.restore_state(manager, 6, abstract, mesh)
        assert progress["epoch"] == 2 and progress["step"] == 6
        assert_trees_equal(restored, state)
        for leaf in jax.tree.leaves(restored):
            assert leaf.sharding.device_set == set(jax.devices()[:count])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(reference, config, tmp_path):
    _, workdir = reference
    exploding = config.copy_and_resolve_references()
    exploding.optim.decay_rate = 1e30  # epoch 1 trains with a learning rate of 1e27
    exploding.optim.decay_every_epochs = 1
    run_dir = back_to_epoch_one(workdir, str(tmp_path / "run"))
    with pytest.raises(train.NonFiniteLoss) as error:
        train.fit(exploding, run_dir)
    message = str(error.value)
    step = int(message.split(" at step ")[1].split()[0])
    term = message.split("loss term '")[1].split("'")[0]
    assert step > 4 and term in losses.TERMS + ("total",)
    assert "the last good checkpoint is step 3" in message
    logged = step_records(read_metrics(run_dir))
    assert sorted(logged) == list(range(4, step))
    assert all(np.isfinite(logged[s]["loss"]) for s in logged)
    kept = params_at(os.path.join(run_dir, train.CHECKPOINT_DIR), config)
    assert list(kept) == [3]
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(host_tree(kept[3])))


def test_training_starts_from_a_params_checkpoint(reference, config, tmp_path):
    state, _ = reference
    path = str(tmp_path / "params")
    checkpoints.write_params_checkpoint(path, config, host_tree(state.params))
    starting = config.copy_and_resolve_references()
    starting.train.init_params = path
    mesh = parallel.make_mesh()
    fresh = train.new_state(train.setup_run(starting, mesh), starting, mesh)
    assert_trees_equal(fresh.params, state.params)
    assert int(fresh.step) == 0
    opt_state = host_tree(fresh.opt_state)  # moments and counts zero, the configured rate
    assert float(optax.tree_utils.tree_get(opt_state, "learning_rate")) == pytest.approx(
        config.optim.learning_rate)
    assert all(float(np.abs(leaf).max()) == 0.0
               for leaf in jax.tree.leaves(train.set_learning_rate(opt_state, 0.0)))


def test_cli_train_reports_a_missing_data_folder(tiny_config_path, tmp_path, capsys):
    status = cli.main(["train", "--config", tiny_config_path, "--workdir", str(tmp_path),
                       f"--config.data.root={tmp_path / 'no-data'}"])
    assert status == 2
    assert "no-data" in capsys.readouterr().err


WORKER = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    from difffccf_jax.training import train
    from difffccf_jax.config_cli import load_config
    config = load_config(sys.argv[1], [tuple(item) for item in json.loads(sys.argv[2])])
    state = train.fit(config, sys.argv[3])
    leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)]
    np.savez(sys.argv[4], *leaves)
""")


# Resumes (finds the run trained) and scores it as a sweep run does; process 0 writes the scores.
SCORING_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    from difffccf_jax.evaluation import trained_run
    from difffccf_jax.training import train
    from difffccf_jax.config_cli import load_config
    config = load_config(sys.argv[1], [tuple(item) for item in json.loads(sys.argv[2])])
    train.fit(config, sys.argv[3])
    scores = trained_run.score(config, sys.argv[3])
    assert (scores is None) == (jax.process_index() != 0), scores
    if scores is not None:
        with open(sys.argv[4], "w") as file:
            json.dump(scores, file)
""")


# Sends SIGTERM to process TEST_SIGNAL_PROCESS once it has dispatched step TEST_SIGNAL_STEP,
# then trains through the command line.
SIGNALLED_WORKER = textwrap.dedent("""
    import os, signal, sys
    from difffccf_jax import cli
    from difffccf_jax.training import train
    step, process = int(os.environ["TEST_SIGNAL_STEP"]), int(os.environ["TEST_SIGNAL_PROCESS"])
    add = train.StepReporter.add
    def add_then_signal(self, host_step, *args):
        add(self, host_step, *args)
        if host_step == step and int(os.environ["JAX_PROCESS_ID"]) == process:
            os.kill(os.getpid(), signal.SIGTERM)
    train.StepReporter.add = add_then_signal
    sys.exit(cli.main(sys.argv[1:]))
""")


def train_two_processes(tiny_config_path, overrides, run_dir, params_path):
    """Two processes train (resume) `run_dir`; returns both processes' final parameters."""
    results = run_two_processes([
        (WORKER, tiny_config_path, json.dumps(overrides), run_dir, f"{params_path}{i}.npz")
        for i in range(2)])
    for status, output in results:
        assert status == 0, output[-3000:]
    params = [np.load(f"{params_path}{i}.npz") for i in range(2)]
    return [[p[f"arr_{i}"] for i in range(len(p.files))] for p in params]


@pytest.fixture(scope="module")
def two_process_run(reference, tiny_config_path, overrides, tmp_path_factory):
    """(both processes' final parameters, workdir) of two processes with 2 devices each that
    resume the reference run after epoch 1 and train epoch 2 together."""
    _, workdir = reference
    tmp = tmp_path_factory.mktemp("two_processes")
    run_dir = back_to_epoch_one(workdir, str(tmp / "run"))
    return train_two_processes(tiny_config_path, overrides, run_dir, str(tmp / "params")), run_dir


@pytest.mark.multiprocess
def test_two_processes_train_like_one_process_with_four_devices(reference, two_process_run):
    state, _ = reference
    params, run_dir = two_process_run
    expected = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)]
    for first, second, leaf in zip(*params, expected):
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(first, leaf, rtol=1e-5, atol=1e-6)
    assert sorted(step_records(read_metrics(run_dir))) == [4, 5, 6]
    # Without config.data.tfds_dir, the processes read the pairs from the cache process 0 built.
    assert sorted(os.listdir(os.path.join(run_dir, train.DATA_CACHE_DIR, "difffccf_pairs"))) == [
        "pet_16", "spect_16"]


@pytest.mark.multiprocess
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(
        reference, two_process_run, tiny_config_path, overrides, tmp_path):
    """SIGTERM reaches process 1 during step 4: both processes save step 4 and exit 0 through
    `difffccf train`; two processes resuming it end bit-equal to the uninterrupted two."""
    _, workdir = reference
    run_dir = back_to_epoch_one(workdir, str(tmp_path / "run"))
    command = ["train", "--config", tiny_config_path, "--workdir", run_dir] + [
        f"--config.{key}={value}" for key, value in overrides]
    results = run_two_processes([(SIGNALLED_WORKER, *command)] * 2,
                                dict(TEST_SIGNAL_STEP="4", TEST_SIGNAL_PROCESS="1"))
    for status, output in results:
        assert status == 0, output[-3000:]
        assert "training stopped on SIGTERM after step 4" in output, output[-3000:]
    manager = checkpoints.open_manager(os.path.join(run_dir, train.CHECKPOINT_DIR),
                                       read_only=True)
    assert list(manager.all_steps()) == [3, 4]
    params = train_two_processes(tiny_config_path, overrides, run_dir, str(tmp_path / "params"))
    for resumed, uninterrupted in zip(params[0], two_process_run[0][0]):
        np.testing.assert_array_equal(resumed, uninterrupted)
    assert sorted(step_records(read_metrics(run_dir))) == [4, 5, 6]


@pytest.mark.multiprocess
def test_two_processes_score_a_trained_run_once_on_process_zero(
        two_process_run, config, tiny_config_path, overrides, tmp_path):
    """After two-process training, process 0 fuses on its 2 local devices while process 1
    waits; the scores equal those of one process fusing on all 4 devices."""
    _, trained_dir = two_process_run
    run_dir = str(tmp_path / "run")
    shutil.copytree(trained_dir, run_dir)
    scores_path = str(tmp_path / "scores.json")
    results = run_two_processes([
        (SCORING_WORKER, tiny_config_path, json.dumps(overrides), run_dir, scores_path)] * 2)
    for status, output in results:
        assert status == 0, output[-3000:]
    with open(scores_path, encoding="utf-8") as file:
        scores = json.load(file)
    one_process_dir = str(tmp_path / "one_process")
    shutil.copytree(trained_dir, one_process_dir)
    expected = trained_run.fuse_and_score(config, one_process_dir)
    assert sorted(scores) == sorted(expected) and len(expected) > 3
    for name, value in expected.items():  # None: a metric undefined at 16 px
        assert scores[name] == (None if value is None else pytest.approx(value, rel=1e-4,
                                                                         abs=1e-5)), name
    assert sorted(os.listdir(os.path.join(run_dir, trained_run.FUSED_FOLDER))) == sorted(
        os.listdir(os.path.join(one_process_dir, trained_run.FUSED_FOLDER)))
