"""Devices, the ('data',) mesh and multi-process start-up.

Training is data-parallel: parameters and optimiser state are replicated over a one-axis mesh
named 'data' and every global batch is split along its first axis over that axis.

Multi-process runs call `jax.distributed.initialize()` before JAX touches a device. It is asked
for by `config.train.distributed`, by a SLURM job step with several tasks (JAX reads the SLURM
variables itself), or explicitly by the environment:

    JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 difffccf train ...
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from difffccf_jax.errors import UserError

DATA_AXIS = "data"
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                   "SLURM_LOCALID")


def distributed_arguments(requested, environ):
    """Keyword arguments for `jax.distributed.initialize`, or None for a single process.

    requested: config.train.distributed; environ: the process environment (a mapping).
    """
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
                        process_id=int(explicit["process_id"]))
        except ValueError as error:
            raise UserError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
                            f"{explicit['num_processes']!r} and {explicit['process_id']!r}"
                            ) from error
    slurm = all(name in environ for name in SLURM_VARIABLES)
    if slurm and int(environ["SLURM_NTASKS"]) > 1:
        return {}  # JAX detects the coordinator, process count and id from SLURM
    if requested:
        return {}  # let JAX detect the cluster (fails with its own message if none is found)
    return None


def initialize_distributed(requested, environ=None):
    """Starts the multi-process runtime when asked for; returns True when it did."""
    arguments = distributed_arguments(requested, os.environ if environ is None else environ)
    if arguments is None or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(**arguments)
    return True


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
