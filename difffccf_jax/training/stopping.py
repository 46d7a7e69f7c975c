"""When training stops or checkpoints between its planned checkpoints, decided alike everywhere.

Three things can end a run early or ask for an extra checkpoint: a signal (SIGTERM, which SLURM
sends at preemption or time-out, or the early warning asked for with `sbatch --signal=USR1@T`
or USR2), the time budget (config.train.max_minutes) and timed checkpoints
(config.train.checkpoint_every_minutes). A signal handler only sets a flag. At agreed steps the
loop calls `StopWatch.decide()`, which gathers every process's flags (one tiny all-gather across
processes) and returns the same `Decision` on every process: stop when any process was
signalled or process 0's clock says the budget is spent, checkpoint when process 0's clock says
the checkpoint interval has passed. Every process therefore saves the same step and leaves the
loop together; a process deciding on its own clock could leave while the others wait for it.
"""

import signal
import threading
import time
from typing import NamedTuple

import numpy as np
from jax.experimental import multihost_utils

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint of every process's same step;
    running the same command again resumes from it. signum: the first signal received."""

    def __init__(self, signum, step, checkpoint_dir):
        self.signum, self.step = signum, step
        super().__init__(f"training stopped on {signal.Signals(signum).name} after step {step}; "
                         f"its checkpoint is in {checkpoint_dir}: run the same command again "
                         "to resume")


class Decision(NamedTuple):
    """What every process does after the step at which `StopWatch.decide` was called."""
    stop: bool  # save a checkpoint and leave the loop
    checkpoint: bool  # save a checkpoint (also true when stop is)
    signum: int  # the signal that asks to stop (0: none; the time budget stops with 0)


def agree(flags):
    """[processes, len(flags)] int64: every process's `flags` (a list of ints), gathered on
    every process."""
    return np.asarray(multihost_utils.process_allgather(np.asarray(flags, np.int64)))


class StopWatch:
    """The signal flags and the clocks of one training loop; a context manager that installs
    the handlers of STOP_SIGNALS on entry and puts back the previous ones on exit.

    max_minutes, checkpoint_every_minutes: 0 turns the budget or the timed checkpoints off.
    Handlers can only be installed in the main thread; elsewhere signals keep their handlers.
    """

    def __init__(self, max_minutes, checkpoint_every_minutes, gather=agree):
        self.max_seconds = 60.0 * max_minutes
        self.checkpoint_seconds = 60.0 * checkpoint_every_minutes
        self.gather = gather
        self.signum = 0
        self.started = self.last_checkpoint = time.monotonic()
        self.previous = {}

    def _handle(self, signum, frame):  # pylint: disable=unused-argument
        self.signum = self.signum or signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle)
                             for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def start_clocks(self):
        """Starts the budget and the checkpoint interval now (the loop's first step; compiling
        before it is not counted)."""
        self.started = self.last_checkpoint = time.monotonic()

    def checkpointed(self):
        """Restarts the checkpoint interval (call after every save)."""
        self.last_checkpoint = time.monotonic()

    def decide(self):
        """The Decision of all processes: a collective, so every process must call it at the
        same step."""
        now = time.monotonic()
        over_budget = self.max_seconds > 0 and now - self.started >= self.max_seconds
        due = (self.checkpoint_seconds > 0
               and now - self.last_checkpoint >= self.checkpoint_seconds)
        flags = self.gather([self.signum, int(over_budget), int(due)])
        signals = [int(s) for s in flags[:, 0] if s]
        stop = bool(signals) or bool(flags[0, 1])
        return Decision(stop=stop, checkpoint=stop or bool(flags[0, 2]),
                        signum=signals[0] if signals else 0)
