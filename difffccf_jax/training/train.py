"""Training (docs/method.md sections 5 and 8): the train state, one pure sharded step, the
epoch loop.

Data-parallel over a ('data',) mesh of all devices: parameters, optimiser and policy state are
replicated, every global batch is split along its first axis, and the state is donated to the
step. The step's randomness is `fold_in(state.rng, state.step)`, so a run resumed from a
checkpoint draws exactly what the uninterrupted run would have drawn.

    difffccf train --config configs/tiny.py --workdir runs/tiny --config.data.root=DATA
"""

import functools
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from difffccf_jax import compilation, parallel
from difffccf_jax.model import checkpoints, diffusion, regions, settings, unet
from difffccf_jax.training import losses, stopping, weighting
from difffccf_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
DATA_CACHE_DIR = "data_cache"  # the pairs' array_record cache of a multi-process run


class NonFiniteLoss(UserError):
    """Training stopped because a loss term became NaN or infinite."""


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes; a PyTree of arrays."""
    step: jax.Array  # [] int32, steps taken
    params: Any
    opt_state: optax.OptState
    ema_params: Any  # exponential moving average of params, or None when disabled
    policy: weighting.PolicyState
    rng: jax.Array  # [2] uint32, the run's base key


# ---- optimiser -----------------------------------------------------------------------------------

DEFORMATION_HEAD = "deformation_head"  # the parameters of the head's own learning rate


def deformation_head_mask(params):
    """True for every leaf of the deformation head, False elsewhere (the tree of `params`)."""
    return {name: jax.tree.map(lambda _: name == DEFORMATION_HEAD, tree)
            for name, tree in params.items()}


def make_optimizer(optim):
    """AdamW after optional global-norm clipping, the deformation head's updates times
    optim.registration_lr_factor (its own learning rate), and the learning rate as a
    hyperparameter of the optimiser's state that the step sets (`set_learning_rate`, from
    `learning_rate_at`). optim: config.optim."""
    parts = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
    parts += [optax.scale_by_adam(), optax.add_decayed_weights(optim.weight_decay),
              optax.masked(optax.scale(float(optim.registration_lr_factor)),
                           deformation_head_mask),
              optax.inject_hyperparams(optax.scale_by_learning_rate)(
                  learning_rate=float(optim.learning_rate))]
    return optax.chain(*parts)


def set_learning_rate(opt_state, learning_rate):
    """The optimiser state of `make_optimizer` with its learning rate set to `learning_rate`."""
    return optax.tree_utils.tree_set(opt_state, learning_rate=learning_rate)


def learning_rate_at(optim, epoch):
    """The paper's step decay: learning_rate * decay_rate ** floor(epoch / decay_every_epochs)."""
    schedule = optax.exponential_decay(optim.learning_rate, optim.decay_every_epochs,
                                       optim.decay_rate, staircase=True)
    return float(schedule(epoch))


def task_for_epoch(seed, epoch, tasks):
    """The task trained in `epoch`: drawn uniformly from `tasks`, a function of (seed, epoch)."""
    return tasks[int(np.random.default_rng([seed, epoch]).integers(len(tasks)))]


def rules_as_arrays(task_rules):
    """TaskRules with every number as a float32/int32/bool array, so all tasks share one
    compiled step."""
    return jax.tree.map(jnp.asarray, task_rules)


# ---- state ---------------------------------------------------------------------------------------

def create_train_state(model, tx, policy_settings, key, image_size, ema, params=None):
    """A fresh TrainState (params from `model`'s initialiser unless given).

    ema: keep an exponential moving average of the parameters."""
    init_key, rng = jax.random.split(key)
    if params is None:
        params = unet.init_params(model, init_key, image_size)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.array, params) if ema else None,
        policy=weighting.init_policy(policy_settings), rng=rng)


def state_to_items(state):
    """The checkpoint items of a TrainState (see checkpoints.py)."""
    items = {"params": state.params,
             "train": dict(step=state.step, opt_state=state.opt_state, policy=state.policy,
                           rng=state.rng)}
    if state.ema_params is not None:
        items["ema_params"] = state.ema_params
    return items


def state_from_items(items):
    """The TrainState of checkpoint items written by `state_to_items`."""
    train = items["train"]
    return TrainState(step=train["step"], params=items["params"], opt_state=train["opt_state"],
                      ema_params=items.get("ema_params"), policy=train["policy"],
                      rng=train["rng"])


def abstract_like(tree, sharding):
    """Tree of jax.ShapeDtypeStruct of `tree` with `sharding` (the restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        tree)


def restore_state(manager, step, state_template, mesh):
    """(TrainState, progress) of checkpoint `step`, replicated over `mesh` (any device count).
    A checkpoint whose optimiser state has another layout (written before the learning rate
    and the deformation head's scale were part of the optimiser) is refused with UserError."""
    targets = abstract_like(state_to_items(state_template), parallel.replicated(mesh))
    try:
        items, progress = checkpoints.restore(manager, step, targets)
    except UserError as error:
        if "opt_state" not in str(error):
            raise
        raise UserError(f"{error}. The optimiser state was saved in an older layout and cannot "
                        "resume this run; start a new run from its parameters "
                        "(--config.train.init_params=CHECKPOINT_DIR)") from error
    return state_from_items(items), progress


def ema_update(ema_params, params, decay):
    """decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema_params, params)


# ---- the step ------------------------------------------------------------------------------------

def train_step(state, batch, task_rules, learning_rate, explore_steps, *, model, schedule,
               loss_config, tx, policy_settings, ema_decay):
    """One optimisation step; returns (new state, dict of scalar metrics).

    batch: dict a [B, H, W, 1] and b [B, H, W, 3] (YCrCb) in [-1, 1]; task_rules: TaskRules of
    the batch's task (arrays); learning_rate: [] float32, the rate of this step (`tx` of
    `make_optimizer` scales it for the deformation head); explore_steps: [] float32, the
    weighting policy's exploration length (`explore_steps_of`), an argument rather than part
    of the program so that runs of any length share one compiled step. A step whose loss is
    not finite leaves the state unchanged (its metrics show which term failed).
    """
    policy_settings = policy_settings._replace(explore_steps=explore_steps)
    rng = jax.random.fold_in(state.rng, state.step)
    policy_key, loss_key, dropout_key = jax.random.split(rng, 3)
    dropout_key = unet.rbg_key(dropout_key)
    terms_order = policy_settings.terms
    log_weights = weighting.sample_log_weights(policy_settings, state.policy, policy_key,
                                               state.step)
    weights = jax.lax.stop_gradient(weighting.normalise(policy_settings, log_weights))

    def loss_fn(params):
        terms = losses.training_losses(model.apply, params, batch["a"], batch["b"], task_rules,
                                       loss_key, schedule, loss_config, dropout_key)
        total = sum(weights[i] * terms[name] for i, name in enumerate(terms_order))
        return total, terms

    (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, set_learning_rate(state.opt_state, learning_rate),
                                   state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
        ema_params = ema_update(ema_params, params, ema_decay)
    loss_vector = jnp.stack([terms[name] for name in terms_order])
    policy, policy_info = weighting.update_policy(policy_settings, state.policy, log_weights,
                                                  loss_vector, state.step)
    finite = jnp.isfinite(total) & jnp.all(jnp.isfinite(loss_vector))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           ema_params=ema_params, policy=policy, rng=state.rng)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics = {"loss": total, "learning_rate": learning_rate,
               "grad_norm": optax.tree.norm(grads), **policy_info}
    metrics.update({f"loss/{name}": terms[name] for name in terms_order})
    metrics.update({f"weight/{name}": weights[i] for i, name in enumerate(terms_order)})
    return new_state, metrics


def make_train_step(mesh, state_sharding, **static):
    """train_step jitted over `mesh`: state replicated and donated, batch split on 'data'.

    static: the keyword arguments of train_step (model, schedule, ...)."""
    replicated = parallel.replicated(mesh)
    batch_sharding = parallel.batch_sharded(mesh)
    return compilation.jit(functools.partial(train_step, **static),
                           in_shardings=(state_sharding, batch_sharding, replicated, replicated,
                                         replicated),
                           out_shardings=(state_sharding, replicated), donate_argnums=0)


# ---- logging -------------------------------------------------------------------------------------

class MetricsLog:
    """JSON lines (always) and TensorBoard event files (tensorboardX, no TensorFlow)."""

    def __init__(self, workdir, enabled=True):
        self.enabled = enabled
        self.file = self.writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.file = open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8")
            self.writer = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, step, values):
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}, sort_keys=True) + "\n")
        self.file.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self):
        if self.enabled:
            self.file.close()
            self.writer.close()


def first_non_finite(records):
    """(step, term) of the first record with a non-finite loss term (or total), or None."""
    for step, record in records:
        names = sorted(name for name in record if name.startswith("loss/")) + ["loss"]
        for name in names:
            if not np.isfinite(record[name]):
                return step, name.split("/")[-1] if "/" in name else "total"
    return None


# ---- the loop ------------------------------------------------------------------------------------

class Run(NamedTuple):
    """What a training run derives from its config before the first step."""
    batches: dict  # task -> data.pipeline.BatchIterator
    plan: list  # per epoch (task, steps)
    model: Any
    tx: optax.GradientTransformation
    step_options: dict  # the keyword arguments of train_step
    rules: dict  # task -> TaskRules as arrays
    create: Any  # key -> fresh TrainState (create_train_state with the run's settings)


def epoch_plan(seed, epochs, tasks, steps_per_epoch, steps_per_pass):
    """[(task, steps)] for every epoch: the drawn task and the epoch's length (config's
    steps_per_epoch, or with 0 one pass over the task's data, `steps_per_pass[task]`)."""
    plan = []
    for epoch in range(epochs):
        task = task_for_epoch(seed, epoch, tasks)
        plan.append((task, steps_per_epoch or steps_per_pass[task]))
    return plan


def setup_run(config, mesh, data_cache=""):
    """The data iterators, epoch plan, model, optimiser and step options of `config`.
    data_cache: where a multi-process run caches the pairs without config.data.tfds_dir
    (`pipeline.source_from_config`)."""
    from difffccf_jax.data import layouts, pipeline

    parallel.check_batch_size(config.data.batch_size, mesh)
    tasks = layouts.tasks_from_config(config.data)
    batches = {task: pipeline.BatchIterator(pipeline.source_from_config(config.data, task,
                                                                        data_cache),
                                            config.data.batch_size, mesh,
                                            seed=config.data.shuffle_seed,
                                            crop_size=config.data.crop_size)
               for task in dict.fromkeys(tasks)}
    plan = epoch_plan(config.seed, config.train.epochs, tasks, config.train.steps_per_epoch,
                      {task: it.steps_per_epoch for task, it in batches.items()})
    model = unet.model_from_config(config.model)
    tx = make_optimizer(config.optim)
    policy_settings = weighting.settings_from_config(
        config.weighting, config.loss.weights, sum(steps for _, steps in plan))
    step_options = dict(
        model=model, tx=tx, policy_settings=policy_settings,
        schedule=diffusion.make_schedule(config.diffusion.schedule, config.diffusion.steps),
        loss_config=settings.loss_settings(config),
        ema_decay=float(config.optim.ema_decay))
    rules = {task: rules_as_arrays(regions.rules_from_config(config.regions, task, "train"))
             for task in batches}
    create = functools.partial(create_train_state, model, tx, policy_settings,
                               image_size=config.data.image_size,
                               ema=config.optim.ema_decay > 0)
    return Run(batches=batches, plan=plan, model=model, tx=tx, step_options=step_options,
               rules=rules, create=create)


def initial_params(run, config, mesh):
    """Parameters named by config.train.init_params (a checkpoint directory), or None."""
    path = config.train.init_params
    if not path:
        return None
    _, params = checkpoints.read_params(path, prefer_ema=False,
                                        sharding=parallel.replicated(mesh))
    expected = jax.eval_shape(run.create, jax.random.PRNGKey(config.seed)).params
    checkpoints.check_shapes(expected, params, f"config.train.init_params={path}")
    return params


def new_state(run, config, mesh):
    """A fresh TrainState replicated over `mesh` (config.train.init_params when set)."""
    params = initial_params(run, config, mesh)
    create = compilation.jit(lambda k, p: run.create(k, params=p),
                             out_shardings=parallel.replicated(mesh))
    return create(jax.random.PRNGKey(config.seed), params)


def explore_steps_of(run, sharding):
    """The run's `train_step` argument explore_steps (its weighting policy's exploration
    length), a float32 scalar placed with `sharding`."""
    return jax.device_put(jnp.float32(run.step_options["policy_settings"].explore_steps),
                          sharding)


def compile_step(step_fn, args, fast):
    """The AOT-compiled step for `args` (arrays or jax.ShapeDtypeStruct); fast: XLA backend
    optimisation level 0 (much shorter compiles on CPU, slower steps)."""
    options = {"xla_backend_optimization_level": 0} if fast else None
    return step_fn.lower(*args).compile(compiler_options=options)


class PendingMetrics:
    """The metrics of the steps dispatched since the last fetch: fetching them all at once keeps
    the host from waiting on the devices after every step."""

    def __init__(self):
        self.items, self.started = [], time.perf_counter()

    def add(self, step, metrics):
        self.items.append((step, metrics))

    def __len__(self):
        return len(self.items)

    def fetch(self):
        """([(step, {name: float})], steps per second since the previous fetch); empties."""
        records = [(step, {name: float(value) for name, value in values.items()})
                   for step, values in jax.device_get(self.items)]
        rate = len(records) / max(time.perf_counter() - self.started, 1e-9)
        self.items, self.started = [], time.perf_counter()
        return records, rate

    def restart_clock(self):
        """Leaves time spent outside the steps (compiling, checkpointing) out of the rate."""
        self.started = time.perf_counter()


class TrainingProgress:
    """A progress bar over the planned steps, or over the time budget when one is set
    (config.train.max_minutes): a run that the budget ends never reaches its step count."""

    def __init__(self, total_steps, done_steps, max_minutes, enabled):
        from tqdm import tqdm

        self.budget_s = 60.0 * max_minutes
        self.started = time.perf_counter()
        if self.budget_s > 0:
            self.bar = tqdm(total=round(self.budget_s), unit="s", disable=not enabled,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of the time "
                                       "budget{postfix}", dynamic_ncols=True)
        else:
            self.bar = tqdm(total=total_steps, initial=done_steps, unit="step",
                            disable=not enabled, dynamic_ncols=True)

    def advance(self, steps, step, task, loss):
        if self.budget_s > 0:
            self.bar.n = min(round(time.perf_counter() - self.started), self.bar.total)
            self.bar.set_postfix(step=step, task=task, loss=f"{loss:.4g}")
        else:
            self.bar.update(steps)
            self.bar.set_postfix(task=task, loss=f"{loss:.4g}")

    def write(self, text):
        self.bar.write(text)

    def close(self):
        self.bar.close()


def check_finite(records, epoch, task, manager, checkpoint_dir):
    """Raises NonFiniteLoss at the first non-finite loss term of `records`, naming the last
    good checkpoint."""
    bad = first_non_finite(records)
    if bad is None:
        return
    step, term = bad
    last_good = manager.latest_step()
    kept = (f"the last good checkpoint is step {last_good} in {checkpoint_dir}"
            if last_good is not None else "no checkpoint was written before it")
    raise NonFiniteLoss(f"training stopped: loss term '{term}' is not finite at step {step} "
                        f"(epoch {epoch}, task {task}); {kept}")


class StepReporter:
    """Collects the dispatched steps' metrics and every `log_every` steps (and at each epoch's
    end) fetches them, stops on a non-finite loss, logs them and advances the progress bar."""

    def __init__(self, log, progress, log_every, batch_size, manager, checkpoint_dir):
        self.log, self.progress, self.log_every = log, progress, log_every
        self.batch_size, self.manager, self.checkpoint_dir = batch_size, manager, checkpoint_dir
        self.pending = PendingMetrics()

    def add(self, step, metrics, epoch, task):
        self.pending.add(step, metrics)
        if len(self.pending) >= self.log_every:
            self.report(epoch, task)

    def report(self, epoch, task):
        records, rate = self.pending.fetch()
        if not records:
            return
        check_finite(records, epoch, task, self.manager, self.checkpoint_dir)
        last = records[-1][0]
        for step, values in records:
            if step % self.log_every == 0 or step == last:
                self.log.write(step, dict(values, epoch=epoch, task=task, steps_per_second=rate,
                                          images_per_second=rate * self.batch_size))
        self.progress.advance(len(records), last, task, records[-1][1]["loss"])


def restore_or_start(run, config, mesh, manager):
    """(TrainState, epoch, steps of that epoch already taken): the latest checkpoint in
    `manager` with the data iterators moved to where it stopped, or a fresh state at (0, 0)."""
    latest = manager.latest_step()
    if latest is None:
        return new_state(run, config, mesh), 0, 0
    abstract = jax.eval_shape(run.create, jax.random.PRNGKey(config.seed))
    state, progress = restore_state(manager, latest, abstract, mesh)
    for task, position in progress["data"].items():
        run.batches[task].restore(position)
    return state, int(progress["epoch"]), int(progress.get("epoch_step", 0))


def checkpoint_due(config, epoch, epoch_end, decision):
    """Whether the step that ends (epoch_end) or continues `epoch` is saved: every
    checkpoint_every_epochs epochs, after the last epoch, and when `decision` (a
    stopping.Decision, or None between checks) asks for it."""
    epochs_due = epoch_end and ((epoch + 1) % config.train.checkpoint_every_epochs == 0
                                or epoch + 1 == config.train.epochs)
    return epochs_due or (decision is not None and decision.checkpoint)


def save_progress(manager, state, run, host_step, epoch, epoch_step):
    """Saves `state` as checkpoint `host_step` with where training stands: `epoch` in progress
    with `epoch_step` of its steps taken (an epoch's end is saved as (epoch + 1, 0)) and every
    data iterator's position."""
    position = dict(epoch=epoch, epoch_step=epoch_step, step=host_step,
                    data={name: it.state() for name, it in run.batches.items()})
    checkpoints.save(manager, host_step, state_to_items(state), position)


def compile_train_step(config, run, mesh, state, rules, log, progress):
    """The train step compiled for the run's batches (every task's batches have one shape, so
    one program serves the whole run), once every process has compiled it."""
    replicated = parallel.replicated(mesh)
    first_task = run.plan[0][0]
    example = (state, run.batches[first_task].element_spec(), rules[first_task],
               jax.device_put(jnp.float32(0.0), replicated), explore_steps_of(run, replicated))
    started = time.perf_counter()
    compiled = compile_step(make_train_step(mesh, replicated, **run.step_options), example,
                            config.train.fast_compile)
    seconds = time.perf_counter() - started
    parallel.wait_for_all_processes("difffccf-train-step-compiled")
    progress.write(f"compiled the train step in {seconds:.1f} s")
    log.write(int(state.step), {"compile_seconds": seconds})
    return compiled


def train_epochs(config, run, compiled, state, rules, replicated, manager, reporter, watch,
                 start):
    """The loop from `start` = (epoch, steps of it already taken): returns (final TrainState,
    the stopping.Decision that stopped it early, or None when every epoch ran). `watch`
    decides (alike on every process) every log_every_steps steps and at every epoch end."""
    start_epoch, start_epoch_step = start
    host_step = int(state.step)
    explore_steps = explore_steps_of(run, replicated)
    for epoch in range(start_epoch, config.train.epochs):
        task, steps = run.plan[epoch]
        learning_rate = jax.device_put(
            jnp.float32(learning_rate_at(config.optim, epoch)), replicated)
        first = start_epoch_step if epoch == start_epoch else 0
        for epoch_step in range(first + 1, steps + 1):
            state, metrics = compiled(state, next(run.batches[task]), rules[task],
                                      learning_rate, explore_steps)
            host_step += 1
            reporter.add(host_step, metrics, epoch, task)
            epoch_end = epoch_step == steps
            decision = None
            if epoch_end or host_step % config.train.log_every_steps == 0:
                reporter.report(epoch, task)
                decision = watch.decide()
            if checkpoint_due(config, epoch, epoch_end, decision):
                save_progress(manager, state, run, host_step, *(
                    (epoch + 1, 0) if epoch_end else (epoch, epoch_step)))
                watch.checkpointed()
                reporter.pending.restart_clock()
            finished = epoch_end and epoch + 1 == config.train.epochs
            if decision is not None and decision.stop and not finished:
                return state, decision
    return state, None


def fit(config, workdir):
    """Trains as `config` says, checkpointing and logging into `workdir`; resumes from the
    latest checkpoint there. Returns the final TrainState; raises stopping.Preempted, after
    every process saved the same step, when a stop signal arrived (module stopping). (Scoring
    the result is the job of `inference.fusion` and `evaluation.scoring`.)"""
    parallel.initialize_distributed(config.train.distributed)
    mesh = parallel.make_mesh()
    replicated = parallel.replicated(mesh)
    run = setup_run(config, mesh, os.path.join(workdir, DATA_CACHE_DIR))
    checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)
    lead = jax.process_index() == 0
    if lead:
        os.makedirs(workdir, exist_ok=True)
        checkpoints.write_config(checkpoint_dir, config)
    manager = checkpoints.open_manager(checkpoint_dir, keep=config.train.keep_checkpoints)
    state, *start = restore_or_start(run, config, mesh, manager)
    rules = jax.device_put(run.rules, replicated)
    log = MetricsLog(workdir, enabled=lead)
    progress = TrainingProgress(sum(steps for _, steps in run.plan), int(state.step),
                                config.train.max_minutes, enabled=lead)
    try:
        with stopping.StopWatch(config.train.max_minutes,
                                config.train.checkpoint_every_minutes) as watch:
            compiled = None
            if start[0] < config.train.epochs:
                compiled = compile_train_step(config, run, mesh, state, rules, log, progress)
            reporter = StepReporter(log, progress, config.train.log_every_steps,
                                    config.data.batch_size, manager, checkpoint_dir)
            watch.start_clocks()
            state, decision = train_epochs(config, run, compiled, state, rules, replicated,
                                           manager, reporter, watch, start)
        if decision is not None and decision.signum:
            raise stopping.Preempted(decision.signum, int(state.step), checkpoint_dir)
        if decision is not None:
            progress.write(f"stopped after step {int(state.step)}: the time budget of "
                           f"{config.train.max_minutes:g} min is spent")
    finally:
        progress.close()
        log.close()
        manager.close()
    return state


def read_metrics_log(workdir):
    """The records of `workdir`'s metrics.jsonl that carry the training loss, in order."""
    with open(os.path.join(workdir, METRICS_FILE), encoding="utf-8") as file:
        records = [json.loads(line) for line in file if line.strip()]
    return [record for record in records if "loss" in record]
