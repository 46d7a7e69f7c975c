"""The cases of `difffccf benchmark`, each measured in a fresh process so that its peak memory
is its own:

    python -m difffccf_jax.benchmark.cases '{"kind": "forward", "framework": "jax", ...}'

prints one line `RESULT <json>`: {"rows": [Row as a dict, ...], "accelerator": ...}. Kinds:
- matmul: a float32 n x n matrix product (the machine's reference rate);
- forward: the U-Net forward in evaluation mode, JAX or the PyTorch port;
- train: one optimisation step of a stand-in objective, the same on both sides (the L1 of every
  output head against a target: the noise for the noise head, 0 for the masks and the
  deformation; AdamW with config.optim's learning rate and weight decay), JAX or the port;
- train_full: the real JAX training step of train.py (all losses, adaptive weighting), in the
  config's or the case's compute dtype;
- step_split: in one process, the real step beside what it is made of: the network's own
  forward and backward (its two calls, AdamW) on the step's network batch, and the forward and
  backward of the registration terms and of the quality loss on the step's shapes;
- sampling: the whole jitted sampler of sampling.py, run whole, or estimated from its per-step
  time (runs of 2 and 4 steps) when a whole run takes too long;
- graph: the bottleneck graph on a pixel grid, stencil operators (graph.py) against dense
  N x N matrices (built only here): the operators alone, or the whole Graformer layer;
- generator: one generated pair of a task written as PNG files (data/generator.py), B aligned
  or misaligned (with its displacement field), at the config's image size;
- metrics: every fusion metric of one (fused, A, B) triple (metrics.all_metrics), the fused
  image by the maximum rule, at the config's image size;
- fuse_throughput: `difffccf fuse`'s streaming folder fusion (`fusion.fuse_into_folder`) of
  `pairs` generated pairs of `size` px, or the fuser's sampler alone on arrays in memory, on
  `devices` simulated CPU devices (XLA_FLAGS of the case's process);
- data_memory: `pairs` generated pet pairs of `size` px and their array_record cache, then one
  epoch of global batches read by fresh processes (`data_read`, each its own peak memory): one
  process holding the pairs in memory, one process reading the cache, and two processes on
  localhost (jax.distributed, `devices` CPU devices each) each reading its rows of every batch
  from the cache, as a multi-process training run does.
"""

import functools
import json
import os
import subprocess
import sys
from typing import NamedTuple

import numpy as np

from difffccf_jax.benchmark import measure
from difffccf_jax.benchmark.measure import Row, Timing

RESULT_PREFIX = "RESULT "
FRAMEWORK_NAMES = {"jax": "JAX", "torch": "PyTorch port", "numpy": "NumPy"}
ESTIMATE_STEPS = (2, 4)  # sampler lengths whose times give the per-step estimate
METRICS_PAIRS = 4  # distinct triples the metrics case cycles through


class Case(NamedTuple):
    """What one worker process measures (JSON-serialisable)."""
    kind: str  # matmul, forward, train, train_full, step_split, sampling, graph, generator,
    # metrics, fuse_throughput, data_memory or data_read (data_memory's reader processes)
    framework: str = "jax"  # 'jax', 'torch' or 'numpy' (generator, metrics)
    config: str = ""  # config file path
    label: str = ""  # the configuration's name in the table
    batch: int = 1
    compat: bool = False  # JAX model in compatibility (published) mode
    steps: int = 0  # sampling: reverse steps
    diffusion_steps: int = 0  # sampling: overrides config.diffusion.steps when > 0
    estimate: bool = False  # sampling: per-step estimate instead of a whole run
    size: int = 0  # graph: grid side; matmul: matrix side
    variant: str = ""  # graph: 'stencil' or 'dense'; generator: 'aligned' or 'misaligned'
    part: str = ""  # graph: 'operators' or 'layer'
    task: str = ""  # generator, metrics: the task whose pairs are generated
    dtype: str = ""  # train_full: the model's compute dtype ("" keeps the config's)
    max_repeats: int = 5
    budget_s: float = 60.0  # wall-clock budget of the steady repeats
    fast_compile: bool = False  # train_full, sampling: compiled at XLA optimisation level 0
    pairs: int = 0  # fuse_throughput: pairs fused
    devices: int = 0  # fuse_throughput, data_memory: simulated CPU devices (0: the process's
    # default; data_memory: per process)
    root: str = ""  # data_read: the folder holding the pairs (data/) and their cache (cache/)


# ---- helpers -------------------------------------------------------------------------------------

def load_case_config(case):
    """The case's config with model.compat set (and the diffusion steps and the compute dtype
    overridden)."""
    from difffccf_jax.config_cli import load_config

    config = load_config(case.config)
    config.model.compat = bool(case.compat)
    if case.diffusion_steps:
        config.diffusion.steps = int(case.diffusion_steps)
    if case.dtype:
        config.model.dtype = case.dtype
    return config


def example_inputs(batch, size, in_channels, diffusion_steps, seed=0):
    """Random network inputs (NumPy): x [B, H, W, C] in [-1, 1], t [B] int32 in
    [0, diffusion_steps), and a noise target [B, H, W, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (batch, size, size, in_channels)).astype(np.float32)
    t = rng.integers(0, diffusion_steps, batch).astype(np.int32)
    noise = rng.standard_normal((batch, size, size, 1)).astype(np.float32)
    return x, t, noise


def sampler_name(steps, diffusion_steps):
    return f"sampler, {steps} steps ({'full' if steps == diffusion_steps else 'respaced'})"


def case_name(case):
    """The name of the (first) row a case measures: one name for a measured and a failed run,
    so that a rerun replaces the row of a failed one."""
    from difffccf_jax.data import generator

    if case.kind == "sampling":
        return sampler_name(case.steps, load_case_config(case).diffusion.steps)
    if case.kind == "fuse_throughput":
        where = "folder (fuse)" if case.variant == "folder" else "sampler on arrays in memory"
        return (f"fuse throughput, {where}, {case.size} px, {case.steps} sampling steps, "
                f"{case.devices} dev")
    if case.kind == "data_memory":
        return data_memory_name(case, 1, "memory")
    if case.kind == "graph" and case.part == "operators":
        order = load_case_config(case).model.cheb_order
        return f"graph operators (A z, T_0..T_{order - 1}(L) z), {case.variant}"
    return {"matmul": "float32 matmul", "forward": "U-Net forward",
            "train": "train step (stand-in L1, AdamW)",
            "train_full": "train step (train.py, all losses)", "step_split": STEP_SPLIT[0],
            "graph": f"Graformer layer, {case.variant}",
            "generator": f"generator, {case.task} pair ({generator.DEFAULT_ANATOMY}), "
                         f"B {case.variant}",
            "metrics": f"fusion metrics (all_metrics), {case.task} pair"}[case.kind]


def case_label(case):
    """The config column of a case's rows: graph cases name their grid size too."""
    return f"{case.label} {case.size}x{case.size}" if case.kind == "graph" else case.label


def make_row(case, name, timing, **fields):
    return Row(case=name, config=case_label(case), batch=case.batch,
               framework=FRAMEWORK_NAMES[case.framework], timing=timing, **fields)


def jax_row(case, name, timing, compiled, note=""):
    """A row with XLA's FLOP count and buffer size of `compiled`."""
    return make_row(case, name, timing, flops=measure.xla_flops(compiled),
                    buffers_mib=measure.xla_buffer_bytes(compiled) / measure.MIB,
                    note=note)


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def torch_inputs(x, t, noise, device):
    """NHWC NumPy inputs as NCHW torch tensors on `device` (t as int64)."""
    import torch

    def nchw(array):
        return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).to(device)

    return nchw(x), torch.from_numpy(t.astype(np.int64)).to(device), nchw(noise)


def standin_loss(out, noise, mean_abs):
    """The stand-in objective of the training-step comparison: L1 of the noise head against
    the noise plus L1 of the masks and the deformation field against 0, so that every head and
    both decoders are trained. mean_abs: the framework's mean absolute value."""
    return (mean_abs(out.noise - noise) + mean_abs(out.m1) + mean_abs(out.m2)
            + mean_abs(out.deformation))


# ---- cases ---------------------------------------------------------------------------------------

def matmul_jax(case):
    import jax
    import jax.numpy as jnp

    from difffccf_jax import compilation

    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(k, (case.size, case.size), jnp.float32) for k in keys)
    timing, compiled = measure.time_jax(compilation.jit(jnp.matmul), (a, b), case.max_repeats,
                                        case.budget_s)
    return [jax_row(case, case_name(case), timing, compiled)]


def matmul_torch(case):
    import torch

    device = torch_device()
    a, b = (torch.randn(case.size, case.size, device=device) for _ in range(2))

    def call():
        torch.mm(a, b)
        torch_sync(device)

    timing = measure.time_calls(call, case.max_repeats, budget_s=case.budget_s)
    return [make_row(case, case_name(case), timing, flops=2.0 * case.size ** 3)]


def forward_jax(case):
    import jax
    import jax.numpy as jnp

    from difffccf_jax import compilation
    from difffccf_jax.model import unet

    config = load_case_config(case)
    size = config.data.image_size
    model = unet.model_from_config(config.model)
    params = unet.init_params(model, jax.random.key(0), size)
    x, t, _ = example_inputs(case.batch, size, model.in_channels, config.diffusion.steps)
    apply = compilation.jit(lambda p, x, t: model.apply({"params": p}, x, t, train=False))
    timing, compiled = measure.time_jax(apply, (params, jnp.asarray(x), jnp.asarray(t)),
                                        case.max_repeats, case.budget_s)
    return [jax_row(case, case_name(case), timing, compiled)]


def torch_setup(case, training):
    """(config, device, the port in train or eval mode, torch inputs x, t, noise) of a case."""
    from difffccf_jax.model import torch_port

    config = load_case_config(case)
    size = config.data.image_size
    device = torch_device()
    model = torch_port.model_from_config(config.model, size).to(device).train(training)
    inputs = torch_inputs(*example_inputs(case.batch, size, config.model.in_channels,
                                          config.diffusion.steps), device)
    return config, device, model, *inputs


def forward_torch(case):
    import torch

    _, device, model, x, t, _ = torch_setup(case, training=False)

    def call():
        with torch.inference_mode():
            model(x, t)
        torch_sync(device)

    timing = measure.time_calls(call, case.max_repeats, budget_s=case.budget_s)
    return [make_row(case, case_name(case), timing)]


def train_jax(case):
    import jax
    import jax.numpy as jnp
    import optax

    from difffccf_jax import compilation
    from difffccf_jax.model import unet

    config = load_case_config(case)
    size = config.data.image_size
    model = unet.model_from_config(config.model)
    params = unet.init_params(model, jax.random.key(0), size)
    tx = optax.adamw(config.optim.learning_rate, weight_decay=config.optim.weight_decay)
    x, t, noise = (jnp.asarray(v) for v in example_inputs(
        case.batch, size, model.in_channels, config.diffusion.steps))
    dropout_key = unet.rbg_key(jax.random.key(1))  # as the training step draws it

    def step(params, opt_state, x, t, noise, key):
        def loss_fn(p):
            out = model.apply({"params": p}, x, t, train=True, rngs={"dropout": key})
            return standin_loss(out, noise, lambda v: jnp.mean(jnp.abs(v)))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = compilation.jit(step, donate_argnums=(0, 1))
    state = [params, tx.init(params)]
    compiled, compile_s = measure.compile_jax(jitted, *state, x, t, noise, dropout_key)

    def call():
        state[:] = jax.block_until_ready(compiled(*state, x, t, noise, dropout_key))[:2]

    timing = measure.time_calls(call, case.max_repeats, compile_s, case.budget_s)
    return [jax_row(case, case_name(case), timing, compiled)]


def train_torch(case):
    import torch

    config, device, model, x, t, noise = torch_setup(case, training=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.learning_rate,
                                  weight_decay=config.optim.weight_decay)

    def call():
        optimizer.zero_grad(set_to_none=True)
        loss = standin_loss(model(x, t), noise, lambda v: v.abs().mean())
        loss.backward()
        optimizer.step()
        torch_sync(device)

    timing = measure.time_calls(call, case.max_repeats, budget_s=case.budget_s)
    return [make_row(case, case_name(case), timing)]


def real_step(case, config):
    """(call, compiled step, compile seconds, train.Run, the batch, the first state) of the real
    training step of `config` at the case's batch size, on one device, fed generated pairs;
    call() runs one step on the state of the last (waited for)."""
    import tempfile

    import jax
    import jax.numpy as jnp

    from difffccf_jax import parallel
    from difffccf_jax.training import train
    from difffccf_jax.data import generator, layouts

    mesh = parallel.make_mesh(jax.devices()[:1])
    with tempfile.TemporaryDirectory() as root:
        # One task's generated pairs feed the data pipeline that training builds.
        task = layouts.tasks_from_config(config.data)[0]
        config.data.root, config.data.tasks = root, (task,)
        config.data.batch_size = case.batch
        generator.write_task(root, layouts.layout_from_config(config.data, task),
                             case.batch, config.data.image_size, seed=0)
        run = train.setup_run(config, mesh)
        batch = next(run.batches[task])
    state = [train.new_state(run, config, mesh)]
    step = train.make_train_step(mesh, parallel.replicated(mesh), **run.step_options)
    args = (run.rules[task],
            jax.device_put(jnp.float32(config.optim.learning_rate), parallel.replicated(mesh)),
            train.explore_steps_of(run, parallel.replicated(mesh)))
    compiled, compile_s = measure.compile_jax(step, state[0], batch, *args,
                                              fast=case.fast_compile)

    first_state = state[0]

    def call():
        state[0] = jax.block_until_ready(compiled(state[0], batch, *args))[0]

    return call, compiled, compile_s, run, batch, first_state


def train_full_jax(case):
    config = load_case_config(case)
    call, compiled, compile_s, *_ = real_step(case, config)
    timing = measure.time_calls(call, case.max_repeats, compile_s, case.budget_s)
    row = jax_row(case, case_name(case), timing, compiled,
                  note=f"network batch 3 x {case.batch} (Y, Cr, Cb)")
    return [row._replace(dtype=config.model.dtype)]


STEP_SPLIT = ("step split: whole step (train.py)",
              "step split: network forward + backward, AdamW",
              "step split: registration terms forward + backward",
              "step split: quality loss forward + backward")


def network_step(model, tx, loss_config):
    """The network's own share of the real step: both its calls (the registration pass, when
    loss_config has one, and the main call with dropout) under a stand-in loss (every output's
    mean absolute value), their gradient and the AdamW update."""
    import jax
    import jax.numpy as jnp
    import optax

    from difffccf_jax import compilation
    from difffccf_jax.model import registration

    mean_abs = lambda v: jnp.mean(jnp.abs(v))  # noqa: E731

    def step(params, opt_state, a, b, x, t, key):
        def loss_fn(p):
            out = model.apply({"params": p}, x, t, train=True, rngs={"dropout": key})
            loss = standin_loss(out, 0.0, mean_abs)
            if loss_config.registration_pass:
                field = registration.predict_field(
                    lambda x, t: model.apply({"params": p}, x, t, train=False), a, b,
                    loss_config.registration_size)
                loss = loss + mean_abs(field)
            return loss

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return compilation.jit(step, donate_argnums=(0, 1))


def loss_pieces(loss_config, pairs):
    """{row name: (jitted function, its arguments)}: the forward and backward of the
    registration terms (MI and correlation of the three channels, smoothness and folding, with
    respect to the field [B, H, W, 2]) and of the quality loss (with respect to the fused image
    of the 3B channel rows), on a batch of pairs (a [B, H, W, 1], b [B, H, W, 3])."""
    import jax
    import jax.numpy as jnp

    from difffccf_jax import compilation
    from difffccf_jax.model import registration, regularisers
    from difffccf_jax.training import losses

    a, b = pairs

    def registration_loss(field):
        mi, correlation = registration.registration_terms(a, b, field, loss_config)
        return jnp.sum(mi + correlation + regularisers.smoothness(field)
                       + regularisers.folding_penalty(field))

    rows_a = jnp.concatenate([a] * 3)
    rows_b = jnp.concatenate(jnp.split(b, 3, axis=-1))

    def quality(fused):
        return jnp.sum(losses.quality_loss(fused, rows_a, rows_b, loss_config.quality_weights))

    field = jnp.full(a.shape[:3] + (2,), 0.25, jnp.float32)
    return {STEP_SPLIT[2]: (compilation.jit(jax.value_and_grad(registration_loss)), (field,)),
            STEP_SPLIT[3]: (compilation.jit(jax.value_and_grad(quality)),
                            (0.5 * (rows_a + rows_b),))}


def waited_call(program, args):
    """program(*args), waited for."""
    import jax

    return jax.block_until_ready(program(*args))


def step_split_jax(case):
    """Rows of the whole real step and of its parts (STEP_SPLIT), each noting its share of the
    whole step's steady wall and CPU time: the rest is the other losses, the conditions and
    bookkeeping. The four programs are compiled first and then timed in alternation
    (`measure.time_alternating`), so that the shares are fair on a shared machine."""
    import jax
    import jax.numpy as jnp

    from difffccf_jax.model import unet

    config = load_case_config(case)
    whole_call, whole, whole_compile_s, run, batch, state = real_step(case, config)
    loss_config = run.step_options["loss_config"]
    size = config.data.image_size
    x, t, _ = example_inputs(3 * case.batch, size, run.model.in_channels,
                             config.diffusion.steps)
    # copies: the real step donates its state's buffers
    net_state = jax.tree.map(jnp.copy, [state.params, state.opt_state])
    net_args = (batch["a"], batch["b"], x, t, unet.rbg_key(jax.random.key(1)))
    net, net_compile_s = measure.compile_jax(
        network_step(run.model, run.tx, loss_config), *net_state, *net_args)

    def net_call():
        net_state[:] = jax.block_until_ready(net(*net_state, *net_args))

    calls, compiled, compile_s = ({STEP_SPLIT[0]: whole_call, STEP_SPLIT[1]: net_call},
                                  {STEP_SPLIT[0]: whole, STEP_SPLIT[1]: net},
                                  {STEP_SPLIT[0]: whole_compile_s, STEP_SPLIT[1]: net_compile_s})
    for name, (function, function_args) in loss_pieces(loss_config,
                                                       (batch["a"], batch["b"])).items():
        compiled[name], compile_s[name] = measure.compile_jax(function, *function_args)
        calls[name] = functools.partial(waited_call, compiled[name], function_args)
    timings = measure.time_alternating(calls, case.max_repeats, compile_s, case.budget_s)
    whole_timing = timings[STEP_SPLIT[0]]
    return [jax_row(case, name, timings[name], compiled[name])._replace(
                dtype=config.model.dtype,
                note=f"{100 * timings[name].steady_s / whole_timing.steady_s:.0f} % of the "
                     f"whole step's wall time, "
                     f"{100 * timings[name].cpu_s / whole_timing.cpu_s:.0f} % of its CPU time; "
                     f"network batch 3 x {case.batch}")
            for name in STEP_SPLIT]


def sampling_jax(case):
    import jax

    from difffccf_jax import parallel
    from difffccf_jax.data import layouts
    from difffccf_jax.inference import sampling
    from difffccf_jax.model import unet

    config = load_case_config(case)
    size = config.data.image_size
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = unet.model_from_config(config.model)
    params = unet.init_params(model, jax.random.key(0), size)
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (case.batch, size, size, 1)).astype(np.float32)
    b = rng.uniform(-1, 1, (case.batch, size, size, 3)).astype(np.float32)
    pair_ids = np.arange(case.batch, dtype=np.int32)

    def timed(steps):
        config.sampling.steps = steps
        sample, schedule = sampling.sampler_from_config(
            config, layouts.tasks_from_config(config.data)[0], mesh)
        args = (params, schedule, a, b, jax.random.key(0), pair_ids)
        return measure.time_jax(sample, args, case.max_repeats, case.budget_s,
                                fast=case.fast_compile)

    if not case.estimate:
        timing, compiled = timed(case.steps)
        note = f"{case.batch / timing.steady_s:.3g} pairs/s; network batch 3 x {case.batch}"
        return [make_row(case, case_name(case), timing,
                         buffers_mib=measure.xla_buffer_bytes(compiled) / measure.MIB,
                         note=note, dtype=config.model.dtype)]
    (short, _), (long, compiled) = (timed(n) for n in ESTIMATE_STEPS)
    spread = ESTIMATE_STEPS[1] - ESTIMATE_STEPS[0]
    per_step = (long.steady_s - short.steady_s) / spread
    per_step_cpu = (long.cpu_s - short.cpu_s) / spread
    fixed = short.steady_s - ESTIMATE_STEPS[0] * per_step
    fixed_cpu = short.cpu_s - ESTIMATE_STEPS[0] * per_step_cpu
    rows = []
    for steps in (case.steps, config.diffusion.steps):
        estimated = Timing(long.compile_s, 0.0, fixed + steps * per_step,
                           fixed_cpu + steps * per_step_cpu, long.repeats)
        note = (f"estimated: {fixed:.3g} s + {steps} x {per_step:.3g} s/step (from "
                f"{ESTIMATE_STEPS[0]}- and {ESTIMATE_STEPS[1]}-step runs); "
                f"{case.batch / estimated.steady_s:.3g} pairs/s")
        rows.append(make_row(case, sampler_name(steps, config.diffusion.steps), estimated, note=note,
                             buffers_mib=measure.xla_buffer_bytes(compiled) / measure.MIB,
                             dtype=config.model.dtype))
    return rows


def dense_graph_matrices(height, width, laplacian_kind):
    """The dense [N, N] float32 normalised adjacency D~^-1/2 (A + I) D~^-1/2 and Laplacian
    (L = D - A, or 2 L / lambda_max - I when 'scaled') of the 4-neighbour pixel grid."""
    from difffccf_jax.model import graph

    n = height * width
    index = np.arange(n).reshape(height, width)
    adjacency = np.zeros((n, n))
    for first, second in ((index[:, :-1], index[:, 1:]), (index[:-1], index[1:])):
        adjacency[first.ravel(), second.ravel()] = 1.0
        adjacency[second.ravel(), first.ravel()] = 1.0
    degree = adjacency.sum(axis=1)
    scale = 1.0 / np.sqrt(degree + 1.0)
    normalised = scale[:, None] * (adjacency + np.eye(n)) * scale[None, :]
    laplacian = np.diag(degree) - adjacency
    if laplacian_kind == "scaled":
        laplacian = 2.0 * laplacian / graph.laplacian_max_eigenvalue(height, width) - np.eye(n)
    return normalised.astype(np.float32), laplacian.astype(np.float32)


def dense_graph(adjacency, laplacian):
    """A graph.GridGraph whose operators multiply node features [B, H, W, C] by dense
    [N, N] matrices."""
    import jax.numpy as jnp

    from difffccf_jax.model import graph

    def apply(matrix):
        def operator(z):
            b, h, w, c = z.shape
            return jnp.einsum("nm,bmc->bnc", matrix, z.reshape(b, h * w, c)).reshape(z.shape)
        return operator

    return graph.GridGraph(apply(adjacency), apply(laplacian))


def graph_jax(case):
    import jax
    import jax.numpy as jnp

    from difffccf_jax import compilation
    from difffccf_jax.model import graph

    m = load_case_config(case).model
    channels = m.model_channels * m.channel_mult[-1]
    z = jax.random.normal(jax.random.key(0), (case.batch, case.size, case.size, channels))
    dense = case.variant == "dense"
    matrices = (tuple(jnp.asarray(a) for a in dense_graph_matrices(case.size, case.size,
                                                                   m.laplacian))
                if dense else ())

    def grid_graph(matrices):
        return dense_graph(*matrices) if dense else graph.stencil_graph(m.laplacian)

    def layer(matrices):
        return graph.GraformerLayer(m.graph_heads, m.graph_ffn_width, m.cheb_order,
                                    grid_graph(matrices), m.norm_eps)

    if case.part == "operators":
        def run(z, *matrices):
            g = grid_graph(matrices)
            return g.adjacency(z), graph.chebyshev_basis(z, g.laplacian, m.cheb_order)
        args = (z, *matrices)
    else:
        params = compilation.jit(lambda k: layer(matrices).init(k, z))(jax.random.key(1))

        def run(params, z, *matrices):
            return layer(matrices).apply(params, z)
        args = (params, z, *matrices)
    timing, compiled = measure.time_jax(compilation.jit(run), args, case.max_repeats,
                                        case.budget_s)
    return [jax_row(case, case_name(case), timing, compiled,
                    note=f"{case.size} x {case.size} x {channels} grid, N = {case.size ** 2}")]


def generator_numpy(case):
    """Seconds per pair written: each call writes one new pair (its own seed) to a new
    folder."""
    import itertools
    import tempfile

    from difffccf_jax.data import generator, layouts

    config = load_case_config(case)
    size = config.data.image_size
    layout = layouts.layout_from_config(config.data, case.task)
    seeds = itertools.count()
    with tempfile.TemporaryDirectory() as root:
        def call():
            seed = next(seeds)
            generator.write_task(os.path.join(root, str(seed)), layout, 1, size, seed,
                                 misalign_b=case.variant == "misaligned",
                                 anatomy=generator.DEFAULT_ANATOMY)

        timing = measure.time_calls(call, case.max_repeats, budget_s=case.budget_s)
    note = (f"{1 / timing.steady_s:.3g} pairs/s, {1 / max(timing.cpu_s, 1e-9):.3g} per CPU "
            "second; PNG files" + (" and the displacement field" if case.variant == "misaligned"
                                   else ""))
    return [make_row(case, case_name(case), timing, note=note)]


def metrics_numpy(case):
    """Seconds to score one fused image against its sources with every metric (the work of
    `difffccf evaluate` per pair and method, without reading files)."""
    import itertools

    from difffccf_jax.data import generator
    from difffccf_jax.evaluation import baselines, metrics

    size = load_case_config(case).data.image_size
    triples = []
    for index in range(METRICS_PAIRS):
        pair = generator.make_pair(case.task, size, 0, index)
        triples.append((baselines.maximum_fusion(pair.a, pair.b), pair.a, pair.b))
    cycle = itertools.cycle(triples)
    timing = measure.time_calls(lambda: metrics.all_metrics(*next(cycle)), case.max_repeats,
                                budget_s=case.budget_s)
    note = f"{100 * timing.steady_s:.3g} s per 100 pairs; fused image by the maximum rule"
    return [make_row(case, case_name(case), timing, note=note)]


FUSE_TASK = "pet"
FUSE_DISTINCT_PAIRS = 8  # generated pairs, copied under new names up to the case's count


def write_fuse_inputs(case, root, config):
    """A fresh tiny-model checkpoint and folders A, B of case.pairs generated pairs (a few
    distinct pairs under many names); returns (checkpoint, [layouts.PairFiles])."""
    import shutil

    import jax

    from difffccf_jax.data import generator, layouts
    from difffccf_jax.model import checkpoints, unet

    checkpoint = os.path.join(root, "checkpoint")
    model = unet.model_from_config(config.model)
    checkpoints.write_params_checkpoint(
        checkpoint, config, unet.init_params(model, jax.random.PRNGKey(0), case.size))
    layout = layouts.layout_from_config(config.data, FUSE_TASK)
    generated = os.path.join(root, "generated")
    folder = generator.write_task(generated, layout, FUSE_DISTINCT_PAIRS, case.size, seed=0)
    a_source, b_source = (os.path.join(folder, name) for name in (layout.a, layout.b))
    a_folder, b_folder = os.path.join(root, "A"), os.path.join(root, "B")
    for source, target in ((a_source, a_folder), (b_source, b_folder)):
        os.makedirs(target)
        for index in range(case.pairs):
            shutil.copyfile(os.path.join(source, f"{index % FUSE_DISTINCT_PAIRS + 1}.png"),
                            os.path.join(target, f"{index}.png"))
    pairs = [layouts.PairFiles(f"{index}.png", os.path.join(a_folder, f"{index}.png"),
                               os.path.join(b_folder, f"{index}.png"), None)
             for index in range(case.pairs)]
    return checkpoint, pairs


def fuse_throughput_jax(case):
    """Pairs per second of a whole streaming folder run (reading, fusing, writing case.pairs
    pairs) or of the sampler alone on batches already in memory, after compiling."""
    import tempfile
    import time

    import jax

    from difffccf_jax import parallel
    from difffccf_jax.data import images
    from difffccf_jax.inference import fuser as fuser_module
    from difffccf_jax.inference import fusion, sizes

    config = load_case_config(case)
    with tempfile.TemporaryDirectory() as root:
        checkpoint, pairs = write_fuse_inputs(case, root, config)
        start = time.perf_counter()
        fuser = fuser_module.Fuser.from_checkpoint(checkpoint, task=FUSE_TASK, steps=case.steps,
                                                   batch_size=case.batch)
        inputs = [fuser.prepare(pair.name, index, images.read_image(pair.a),
                                images.read_image(pair.b))
                  for index, pair in enumerate(pairs[:fuser.batch_size])]
        bucket = fuser.bucket(case.size, case.size)
        a, b = (np.stack(arrays) for arrays in zip(
            *(sizes.pad_pair(pair.a, pair.b, *bucket) for pair in inputs)))
        ids = np.arange(fuser.batch_size, dtype=np.int32)
        # placed as the folder's batches are (`Fuser.start_batch`), so both run one program
        a, b, ids = jax.device_put((a, b, ids), parallel.batch_sharded(fuser.mesh))

        def sample_batch():
            return fuser.sample(fuser.params, fuser.schedule, a, b, fuser.key, ids)

        jax.block_until_ready(sample_batch())
        compile_s = time.perf_counter() - start
        wall, cpu = time.perf_counter(), time.process_time()
        if case.variant == "folder":
            programs = fuser.compiled_programs
            result = fusion.fuse_into_folder(fuser, pairs, {}, os.path.join(root, "fused"),
                                             show_progress=False)
            if len(result.names) != case.pairs or result.failures:
                raise RuntimeError(f"fused {len(result.names)} of {case.pairs} pairs")
            if fuser.compiled_programs != programs:
                raise RuntimeError("the folder run compiled the sampler again: its timing "
                                   "would include a compilation")
        else:
            previous = None
            for _ in range(-(-case.pairs // fuser.batch_size)):
                out = sample_batch()  # one batch runs while the previous one is fetched
                if previous is not None:
                    np.asarray(previous.rgb)
                previous = out
            np.asarray(previous.rgb)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    timing = Timing(compile_s, wall, wall, cpu, 1)
    note = (f"{case.pairs / wall:.3g} pairs/s over {case.pairs} pairs, batch "
            f"{fuser.batch_size} on {len(jax.local_devices())} devices")
    return [make_row(case, case_name(case), timing, note=note, dtype=config.model.dtype)
            ._replace(batch=case.pairs)]


DATA_TASK = "pet"
DATA_SOURCES = {"memory": "pairs in memory", "cache": "array_record cache"}
DATA_PROCESSES = 2  # processes of the multi-process reading
DATA_READ_TIMEOUT_S = 1800.0


def data_memory_name(case, processes, variant, process=0):
    """The row name of one data_read measurement: `processes` reading from `variant`'s source
    ('memory' or 'cache'), measured in process `process` when there are several."""
    name = (f"data memory, {case.pairs} pairs of {case.size} px, {processes} process"
            f"{'es' if processes > 1 else ''}, {DATA_SOURCES[variant]}")
    return name + (f", process {process}" if processes > 1 else "")


def data_read_jax(case):
    """One epoch of global batches of the pairs under case.root, as training reads them
    (`pipeline.source_from_config`, `pipeline.BatchIterator`), in this process: the pairs in
    memory (variant 'memory') or the array_record cache (variant 'cache'; with several processes
    each reads only its rows of every batch). The row's peak memory is this process's growth
    from just before the source is opened, after the libraries and the runtime started."""
    import time

    import jax
    import orbax.checkpoint  # noqa: F401  (the multi-process barrier's, before the baseline)

    from difffccf_jax import parallel
    from difffccf_jax.data import pipeline, tfds_builder  # noqa: F401  (tfds, likewise)

    jax.config.update("jax_platforms", "cpu")  # host memory is measured, on CPU devices
    parallel.initialize_distributed(False)
    mesh = parallel.make_mesh()
    data = load_case_config(case).data
    data.root, data.image_size = os.path.join(case.root, "data"), case.size
    cache = os.path.join(case.root, "cache")
    # One process reads the cache when told to; several read it as training does (cache_dir).
    data.tfds_dir = cache if case.variant == "cache" and jax.process_count() == 1 else ""
    baseline = measure.peak_rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    source = pipeline.source_from_config(data, DATA_TASK, cache)
    batches = pipeline.BatchIterator(source, case.batch, mesh, seed=0)
    for _ in range(batches.steps_per_epoch):
        jax.block_until_ready(next(batches))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pairs_mib = len(source) * case.size ** 2 * (1 + 3) * 4 / measure.MIB  # A and B, float32
    note = (f"pid {os.getpid()}; {type(source).__name__}; one epoch, {batches.steps_per_epoch} "
            f"global batches, {batches.local_batch_size} rows each read here, "
            f"{len(jax.local_devices())} devices per process; the pairs as float32: "
            f"{pairs_mib:.4g} MiB")
    name = data_memory_name(case, jax.process_count(), case.variant, jax.process_index())
    return [make_row(case, name, Timing(0.0, 0.0, wall, cpu, 1),
                     rss_mib=measure.peak_rss_mib() - baseline, note=note)]


def free_port():
    """A TCP port on localhost free just now (for the processes' coordinator)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def run_processes(case, processes, timeout_s=None):
    """Measures `case` in `processes` fresh processes joined by jax.distributed (a localhost
    coordinator); returns every process's rows (a failed process gives one row without timing
    whose note says why)."""
    port = free_port()
    workers = [subprocess.Popen(
        worker_command(case), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=worker_env(case, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                       JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index)))
        for index in range(processes)]
    rows = []
    try:
        for index, worker in enumerate(workers):
            try:
                stdout, stderr = worker.communicate(timeout=timeout_s)
                done = subprocess.CompletedProcess(worker.args, worker.returncode, stdout, stderr)
                rows += worker_result(case, done, data_memory_name(
                    case, processes, case.variant, index))[0]
            except subprocess.TimeoutExpired:
                rows.append(failed_row(case, f"timed out after {timeout_s:.0f} s",
                                       data_memory_name(case, processes, case.variant, index)))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return rows


def data_memory_jax(case):
    """Peak memory of reading one epoch of the training data: case.pairs generated pairs of
    case.size px, global batches of case.batch, read by one process from memory, by one process
    from the array_record cache, and by DATA_PROCESSES processes from the cache (one row each).
    The pairs and the cache are written here, before the readers start, so that no reader's
    peak holds the writing."""
    import tempfile

    from difffccf_jax.data import generator, layouts, tfds_builder

    layout = layouts.layout_from_config(load_case_config(case).data, DATA_TASK)
    with tempfile.TemporaryDirectory() as root:
        data_root = os.path.join(root, "data")
        generator.write_task(data_root, layout, case.pairs, case.size, seed=0)
        tfds_builder.prepare(data_root, layout, case.size, os.path.join(root, "cache"))
        reader = case._replace(kind="data_read", root=root)
        rows = []
        for variant in DATA_SOURCES:
            single = reader._replace(variant=variant)
            rows += run_in_subprocess(single, DATA_READ_TIMEOUT_S,
                                      data_memory_name(single, 1, variant))[0]
        rows += run_processes(reader._replace(variant="cache"), DATA_PROCESSES,
                              DATA_READ_TIMEOUT_S)
    return rows


CASES = {("matmul", "jax"): matmul_jax, ("matmul", "torch"): matmul_torch,
         ("forward", "jax"): forward_jax, ("forward", "torch"): forward_torch,
         ("train", "jax"): train_jax, ("train", "torch"): train_torch,
         ("train_full", "jax"): train_full_jax, ("step_split", "jax"): step_split_jax,
         ("sampling", "jax"): sampling_jax,
         ("graph", "jax"): graph_jax, ("generator", "numpy"): generator_numpy,
         ("metrics", "numpy"): metrics_numpy, ("fuse_throughput", "jax"): fuse_throughput_jax,
         ("data_memory", "jax"): data_memory_jax, ("data_read", "jax"): data_read_jax}


# ---- the worker process and its caller -----------------------------------------------------------

def import_framework(framework):
    """Imports the framework before the memory baseline, so that its own footprint (and the
    threads it starts) are not counted as the case's memory. NumPy is imported with this
    module."""
    if framework == "torch":
        import torch  # noqa: F401
    elif framework == "jax":
        import jax

        import flax.linen  # noqa: F401
        import optax  # noqa: F401

        jax.config.update("jax_enable_compilation_cache", False)  # compile times are real


def accelerator_name(framework):
    """The GPU the case ran on, or None on CPU (where NumPy cases always run)."""
    if framework == "numpy":
        return None
    if framework == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    import jax

    device = jax.devices()[0]
    return None if device.platform == "cpu" else f"{device.device_kind} ({device.platform})"


def device_peak_mib(framework):
    """Peak memory the case used on its GPU, MiB, or None on CPU (where NumPy cases run)."""
    if framework == "numpy":
        return None
    if framework == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / measure.MIB \
            if torch.cuda.is_available() else None
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return stats["peak_bytes_in_use"] / measure.MIB if stats else None


def run_here(case):
    """Measures `case` in this process; returns the worker's result dict."""
    import_framework(case.framework)
    baseline = measure.peak_rss_mib()
    rows = CASES[(case.kind, case.framework)](case)
    rss = measure.peak_rss_mib() - baseline
    accelerator = accelerator_name(case.framework)
    # A row measured in another process, or from a later baseline, keeps its own peak.
    rows = [r._replace(rss_mib=rss if r.rss_mib is None else r.rss_mib, device=accelerator or "",
                       device_mib=device_peak_mib(case.framework)) for r in rows]
    return {"rows": [measure.row_to_dict(r) for r in rows], "accelerator": accelerator}


def worker_command(case):
    return [sys.executable, "-m", "difffccf_jax.benchmark.cases", json.dumps(case._asdict())]


def worker_env(case, **extra):
    """The environment of a case's process: this one's, with case.devices simulated CPU
    devices and `extra` variables."""
    env = dict(os.environ, **extra)
    if case.devices:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                            f"{case.devices}").strip()
    return env


def worker_result(case, done, name=None):
    """(rows, accelerator name) of a finished worker process (subprocess.CompletedProcess);
    a failed one gives one row without timing, named `name` (default case_name), whose note
    says why."""
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            return ([measure.row_from_dict(r) for r in result["rows"]],
                    result["accelerator"])
    if done.returncode < 0:
        why = f"killed by signal {-done.returncode}" + (
            " (out of memory?)" if done.returncode == -9 else "")
    else:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return [failed_row(case, "failed: " + why[:200], name)], None


def run_in_subprocess(case, timeout_s=None, name=None):
    """Measures `case` in a fresh Python process; returns (rows, accelerator name). A failed
    or timed-out case gives one row without timing, named `name` (default case_name), whose
    note says why."""
    try:
        done = subprocess.run(worker_command(case), capture_output=True, text=True,
                              timeout=timeout_s, env=worker_env(case))
    except subprocess.TimeoutExpired:
        return [failed_row(case, f"timed out after {timeout_s:.0f} s", name)], None
    return worker_result(case, done, name)


def failed_row(case, note, name=None):
    return make_row(case, name or case_name(case), None, note=note)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    case = Case(**json.loads(argv[0]))
    print(RESULT_PREFIX + json.dumps(run_here(case)), flush=True)


if __name__ == "__main__":
    main()
