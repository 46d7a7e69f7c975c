"""Starting the processes of a multi-process test run: a free localhost port for the
coordinator, and two `python -c` processes of 2 simulated CPU devices each; the XLA flags of
every test process."""

import os
import socket
import subprocess
import sys

PROCESS_TIMEOUT_S = 400
# XLA's backend (LLVM) optimisation off: the tests' programs compile about 3x faster (the tiny
# training step's gradient 23 s -> 8 s on 2 cores) and run slower, and the tests compile far
# more than they run. Every test process gets it, so programs compiled here and in the
# processes that tests start agree.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices):
    """XLA_FLAGS of a test process with `devices` simulated CPU devices."""
    return f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"


def free_port():
    """A localhost TCP port free now (for a coordinator)."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def run_two_processes(arguments, extra_env=None):
    """Runs `python -c ARGUMENTS[i]...` as process i of 2 (2 CPU devices each, a localhost
    coordinator); returns their (exit status, output)."""
    port = free_port()
    workers = []
    for process_id in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=xla_flags(2),
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(process_id), **(extra_env or {}))
        workers.append(subprocess.Popen([sys.executable, "-c", *arguments[process_id]],
                                        env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [worker.communicate(timeout=PROCESS_TIMEOUT_S)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    return [(worker.returncode, output) for worker, output in zip(workers, outputs)]
