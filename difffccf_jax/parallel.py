"""Devices, the ('data',) mesh and multi-process start-up.

Training is data-parallel: parameters and optimiser state are replicated over a one-axis mesh
named 'data' and every global batch is split along its first axis over that axis.

Multi-process runs call `jax.distributed.initialize()` before JAX touches a device. It is asked
for by `config.train.distributed`, by a SLURM job step with several tasks (JAX reads the SLURM
variables itself), or explicitly by the environment:

    JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 difffccf train ...

Each process drives the GPUs SLURM gave its task: all GPUs of the node with one task per node
(what the sweep launcher asks for), one each with one task per GPU. JAX's own SLURM detection
alone would give every task only the GPU numbered by its local task id, so the start-up
arguments always name the devices (`local_device_ids`) when SLURM allocated GPUs.
"""

import os
import re
import socket

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from difffccf_jax.errors import UserError

DATA_AXIS = "data"
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                   "SLURM_LOCALID")
HOSTNAME_BYTES = 64


def _id_list(text):
    """'0,1,3' -> ['0', '1', '3']; None or '' -> [] (SLURM and CUDA write GPU lists this way)."""
    return [item for item in (text or "").split(",") if item.strip()]


def tasks_on_node(tasks_per_node, node_id):
    """The task count of node `node_id` from SLURM's compressed `SLURM_TASKS_PER_NODE`,
    e.g. '8(x2),4' -> 8 for nodes 0 and 1, 4 for node 2."""
    counts = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise UserError(f"SLURM_TASKS_PER_NODE={tasks_per_node!r} is not SLURM's format "
                            "(e.g. '8(x2),4')")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node_id < len(counts):
        raise UserError(f"SLURM_NODEID={node_id} but SLURM_TASKS_PER_NODE={tasks_per_node!r} "
                        f"describes {len(counts)} nodes")
    return counts[node_id]


def share_of_gpus(visible, allocated, tasks, local_id):
    """The CUDA ordinals (0 = the first visible GPU) this task drives.

    visible: how many GPUs the process sees (CUDA_VISIBLE_DEVICES); allocated: how many SLURM
    gave the node's tasks together; tasks: the tasks on the node; local_id: this task's index
    among them. When every task sees all the node's GPUs, task k takes the k-th equal slice;
    when SLURM bound each task to its own GPUs (--gpus-per-task, --gpu-bind), it takes them all.
    """
    if tasks > 1 and visible == allocated:
        if allocated % tasks:
            raise UserError(f"{allocated} GPUs on this node do not split over its {tasks} tasks; "
                            "ask for a multiple of the tasks per node")
        share = allocated // tasks
        return list(range(local_id * share, (local_id + 1) * share))
    if visible * tasks == allocated or tasks == 1:
        return list(range(visible))
    raise UserError(f"this task sees {visible} GPUs, the node's {tasks} tasks were allocated "
                    f"{allocated}: neither all GPUs nor an equal share; check --gpus-per-node, "
                    "--gpus-per-task and --ntasks-per-node")


def slurm_local_device_ids(environ):
    """The CUDA ordinals this SLURM task drives, or None when SLURM allocated no GPUs."""
    visible = _id_list(environ.get("CUDA_VISIBLE_DEVICES"))
    node_gpus = (_id_list(environ.get("SLURM_STEP_GPUS")) or _id_list(environ.get("SLURM_JOB_GPUS")))
    allocated = int(environ.get("SLURM_GPUS_ON_NODE") or 0) or len(node_gpus) or len(visible)
    if not allocated:
        return None
    tasks_text = (environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
                  or "1")
    tasks = tasks_on_node(tasks_text, int(environ.get("SLURM_NODEID", 0)))
    return share_of_gpus(len(visible) or allocated, allocated, tasks,
                         int(environ.get("SLURM_LOCALID", 0)))


def distributed_arguments(requested, environ):
    """Keyword arguments for `jax.distributed.initialize`, or None for a single process.

    requested: config.train.distributed; environ: the process environment (a mapping).
    Arguments left out are detected by JAX (coordinator, process count and id from SLURM).
    """
    slurm = all(name in environ for name in SLURM_VARIABLES)
    devices = slurm_local_device_ids(environ) if slurm else None
    named_devices = {} if devices is None else {"local_device_ids": devices}
    explicit = {name: environ.get(f"JAX_{name.upper()}")
                for name in ("coordinator_address", "num_processes", "process_id")}
    if explicit["coordinator_address"]:
        missing = [f"JAX_{k.upper()}" for k, v in explicit.items() if v is None]
        if missing:
            raise UserError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} "
                            "is not; set all three for a multi-process run")
        try:
            return dict(coordinator_address=explicit["coordinator_address"],
                        num_processes=int(explicit["num_processes"]),
                        process_id=int(explicit["process_id"]), **named_devices)
        except ValueError as error:
            raise UserError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
                            f"{explicit['num_processes']!r} and {explicit['process_id']!r}"
                            ) from error
    if (slurm and int(environ["SLURM_NTASKS"]) > 1) or requested:
        return named_devices  # JAX detects the rest (fails with its own message if it cannot)
    return None


def submitit_local_coordinator(environ):
    """JAX_* variables that make the tasks of one job of submitit's local executor one JAX
    runtime with a coordinator on localhost ({} outside such a job or for a single task).
    The port follows the job id, as JAX's SLURM detection does, so all tasks agree on it."""
    tasks = int(environ.get("SUBMITIT_LOCAL_NTASKS", 1))
    if environ.get("SUBMITIT_EXECUTOR") != "local" or tasks < 2:
        return {}
    port = int(environ["SUBMITIT_LOCAL_JOB_ID"]) % 2**12 + 65536 - 2**12
    return {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": str(tasks),
            "JAX_PROCESS_ID": environ["SUBMITIT_LOCAL_GLOBALID"]}


def expected_local_devices(environ):
    """How many GPUs this process was allocated (SLURM), or None when nothing says."""
    if not all(name in environ for name in SLURM_VARIABLES):
        return None
    devices = slurm_local_device_ids(environ)
    return None if devices is None else len(devices)


def check_local_devices(expected, devices):
    """Raises UserError when this process sees fewer (GPU) devices than it was allocated."""
    if expected is None:
        return
    kinds = sorted({device.platform for device in devices})
    if len(devices) < expected or kinds == ["cpu"]:
        raise UserError(
            f"process {jax.process_index()} on {socket.gethostname()} was allocated {expected} "
            f"GPUs but JAX sees {len(devices)} {'/'.join(kinds)} device(s): check that "
            "jax[cuda12] is installed and CUDA_VISIBLE_DEVICES is not narrowed")


def _gathered_hostnames():
    """Every process's hostname, in process order (a collective: all processes call it)."""
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    name = socket.gethostname().encode()[:HOSTNAME_BYTES].ljust(HOSTNAME_BYTES, b"\0")
    rows = multihost_utils.process_allgather(np.frombuffer(name, np.uint8))
    return [bytes(row).rstrip(b"\0").decode() for row in np.asarray(rows).reshape(
        jax.process_count(), HOSTNAME_BYTES)]


def gather_bytes(data):
    """Every process's `data` (bytes, of any length), in process order (a collective: all
    processes call it)."""
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    lengths = np.asarray(multihost_utils.process_allgather(
        np.array([len(data)], np.int32))).reshape(-1)
    padded = np.frombuffer(data.ljust(int(lengths.max()), b"\0"), np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [bytes(row[:length]) for row, length in zip(rows, lengths)]


def describe_processes(hostnames, devices):
    """Lines saying how many processes run on how many hosts and, per host, how many devices
    each of its processes drives. hostnames: one per process, in process order."""
    counts = [0] * len(hostnames)
    for device in devices:
        counts[device.process_index] += 1
    platforms = "/".join(sorted({device.platform for device in devices}))
    lines = [f"{len(hostnames)} processes on {len(set(hostnames))} hosts, "
             f"{len(devices)} {platforms} devices in all"]
    for host in dict.fromkeys(hostnames):
        lines.append(f"  {host}: " + ", ".join(
            f"process {index} drives {counts[index]}"
            for index, name in enumerate(hostnames) if name == host))
    return lines


def initialize_distributed(requested, environ=None, log=print):
    """Starts the multi-process runtime when asked for, checks that this process sees the
    devices it was allocated and (process 0) logs processes, hosts and devices.
    Returns True when it started the runtime."""
    environ = os.environ if environ is None else environ
    arguments = distributed_arguments(requested, environ)
    started = arguments is not None and not jax.distributed.is_initialized()
    if started:
        jax.distributed.initialize(**arguments)
    check_local_devices(expected_local_devices(environ), jax.local_devices())
    if started:
        hostnames = _gathered_hostnames()
        if jax.process_index() == 0:
            for line in describe_processes(hostnames, jax.devices()):
                log(f"[devices] {line}")
    return started


def make_mesh(devices=None):
    """A one-axis mesh named 'data' over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh):
    """The sharding of values every device holds whole (parameters, optimiser state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh):
    """The sharding of arrays split along their first (batch) axis over the 'data' axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size, mesh):
    """Raises UserError unless the global batch splits evenly over the mesh's devices."""
    if batch_size % mesh.size:
        raise UserError(f"config.data.batch_size={batch_size} must be a multiple of the number "
                        f"of devices ({mesh.size}) for data-parallel training")


def wait_for_all_processes(name, timeout_seconds=3600):
    """Blocks until every process reaches the barrier `name` (unique per run).

    The coordination service's barrier, not a collective: it waits as long as a slower process
    needs (e.g. to compile), where the first collective between processes would time out.
    """
    if jax.process_count() == 1:
        return
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_seconds * 1000)
