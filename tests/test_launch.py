"""Start-up of multi-process runs: the devices each SLURM task drives, and the checks and log
at start. Fake SLURM environments stand for real allocations."""

import os
import types

import jax
import pytest
from jax._src import clusters

from difffccf_jax import parallel
from difffccf_jax.errors import UserError

JOB = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[001-004]"}


def slurm_task(nodes, tasks_per_node, process, gpus_per_node=8, bound=False):
    """The environment SLURM gives task `process` of a step with `tasks_per_node` tasks on each
    of `nodes` nodes of `gpus_per_node` GPUs; bound: each task sees only its own GPUs
    (--gpus-per-task), else every task sees all the node's GPUs."""
    local = process % tasks_per_node
    share = gpus_per_node // tasks_per_node
    visible = (range(local * share, (local + 1) * share) if bound else range(gpus_per_node))
    return dict(JOB, SLURM_NTASKS=str(nodes * tasks_per_node), SLURM_PROCID=str(process),
                SLURM_LOCALID=str(local), SLURM_NODEID=str(process // tasks_per_node),
                SLURM_TASKS_PER_NODE=f"{tasks_per_node}(x{nodes})",
                SLURM_GPUS_ON_NODE=str(gpus_per_node),
                SLURM_STEP_GPUS=",".join(map(str, range(gpus_per_node))),
                CUDA_VISIBLE_DEVICES=",".join(map(str, visible)))


def gpus_driven(environ, arguments):
    """The node's GPU numbers behind a task's local_device_ids (CUDA numbers the visible
    GPUs from 0)."""
    visible = environ["CUDA_VISIBLE_DEVICES"].split(",")
    return {int(visible[i]) for i in arguments["local_device_ids"]}


def jax_detected(monkeypatch, environ, arguments):
    """What jax.distributed.initialize would start with: JAX's own cluster detection run on
    `environ` with our arguments."""
    for name in [n for n in list(os.environ) if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, arguments.get("local_device_ids"), None, None)


def test_one_task_per_node_drives_all_eight_gpus(monkeypatch):
    for process in range(4):
        environ = slurm_task(nodes=4, tasks_per_node=1, process=process)
        arguments = parallel.distributed_arguments(False, environ)
        assert arguments == {"local_device_ids": list(range(8))}
        address, count, index, devices = jax_detected(monkeypatch, environ, arguments)
        assert (address, count, index, list(devices)) == (
            f"gpu001:{4242 % 4096 + 61440}", 4, process, list(range(8)))
        assert parallel.expected_local_devices(environ) == 8
    # Without the arguments JAX's detection alone gives each node's task GPU 0 only.
    assert jax_detected(monkeypatch, environ, {})[3] == [0]


@pytest.mark.parametrize("bound", [False, True])
def test_one_task_per_gpu_uses_every_gpu_of_each_node(monkeypatch, bound):
    for node in range(2):
        driven = []
        for process in range(node * 8, node * 8 + 8):
            environ = slurm_task(nodes=2, tasks_per_node=8, process=process, bound=bound)
            arguments = parallel.distributed_arguments(False, environ)
            assert len(arguments["local_device_ids"]) == 1
            assert jax_detected(monkeypatch, environ, arguments)[1:3] == (16, process)
            driven += gpus_driven(environ, arguments)
        assert sorted(driven) == list(range(8))


def test_two_tasks_per_node_split_the_gpus():
    environs = [slurm_task(nodes=1, tasks_per_node=2, process=p) for p in range(2)]
    assert [parallel.distributed_arguments(False, e)["local_device_ids"] for e in environs] == [
        [0, 1, 2, 3], [4, 5, 6, 7]]


def test_gpus_that_do_not_split_over_the_tasks_are_refused():
    environ = slurm_task(nodes=1, tasks_per_node=3, process=0, gpus_per_node=8)
    with pytest.raises(UserError, match="8 GPUs on this node do not split over its 3 tasks"):
        parallel.distributed_arguments(False, environ)
    environ = dict(slurm_task(nodes=1, tasks_per_node=4, process=0), CUDA_VISIBLE_DEVICES="0,1,2")
    with pytest.raises(UserError, match="sees 3 GPUs, the node's 4 tasks were allocated 8"):
        parallel.distributed_arguments(False, environ)


def test_without_gpus_or_slurm():
    cpu_task = {k: v for k, v in slurm_task(1, 2, 0).items()
                if not k.endswith("GPUS") and k not in ("CUDA_VISIBLE_DEVICES",
                                                        "SLURM_GPUS_ON_NODE")}
    assert parallel.distributed_arguments(False, cpu_task) == {}
    assert parallel.expected_local_devices(cpu_task) is None
    assert parallel.distributed_arguments(False, {}) is None
    assert parallel.distributed_arguments(True, {}) == {}
    explicit = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert parallel.distributed_arguments(False, explicit) == dict(
        coordinator_address="h:1", num_processes=2, process_id=1)


def test_tasks_on_node_reads_slurms_compressed_counts():
    assert [parallel.tasks_on_node("8(x2),4", n) for n in range(3)] == [8, 8, 4]
    with pytest.raises(UserError, match="SLURM_TASKS_PER_NODE='8x2' is not SLURM's format"):
        parallel.tasks_on_node("8x2", 0)


def test_submitit_local_tasks_meet_on_localhost():
    task = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2",
            "SUBMITIT_LOCAL_JOB_ID": "5000", "SUBMITIT_LOCAL_GLOBALID": "1"}
    assert parallel.submitit_local_coordinator(task) == {
        "JAX_COORDINATOR_ADDRESS": f"localhost:{5000 % 4096 + 61440}",
        "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert parallel.submitit_local_coordinator(dict(task, SUBMITIT_LOCAL_NTASKS="1")) == {}
    assert parallel.submitit_local_coordinator({}) == {}


def fake_devices(*per_process, platform="gpu"):
    return [types.SimpleNamespace(process_index=p, platform=platform)
            for p, count in enumerate(per_process) for _ in range(count)]


def test_a_process_that_sees_fewer_devices_than_allocated_stops():
    parallel.check_local_devices(8, fake_devices(8))
    parallel.check_local_devices(None, fake_devices(0, platform="cpu"))
    with pytest.raises(UserError, match=r"was allocated 8 GPUs but JAX sees 4 gpu device"):
        parallel.check_local_devices(8, fake_devices(4))
    with pytest.raises(UserError, match=r"allocated 1 GPUs but JAX sees 1 cpu device.*jax\[cuda12\]"):
        parallel.check_local_devices(1, fake_devices(1, platform="cpu"))


def test_process_zero_describes_hosts_processes_and_devices():
    lines = parallel.describe_processes(["gpu001", "gpu001", "gpu002"], fake_devices(4, 4, 8))
    assert lines == ["3 processes on 2 hosts, 16 gpu devices in all",
                     "  gpu001: process 0 drives 4, process 1 drives 4",
                     "  gpu002: process 2 drives 8"]


def test_single_process_start_checks_devices_and_starts_nothing():
    environ = {k: v for k, v in slurm_task(1, 1, 0, gpus_per_node=2).items()}
    environ["SLURM_NTASKS"] = "1"
    # One SLURM task with 2 GPUs: no runtime to start, but these CPU devices are refused.
    with pytest.raises(UserError, match="allocated 2 GPUs but JAX sees 4 cpu"):
        parallel.initialize_distributed(False, environ)
    assert parallel.initialize_distributed(False, {}) is False
    assert not jax.distributed.is_initialized()
