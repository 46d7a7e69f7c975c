"""Stop decisions (training/stopping.py): signals, the time budget and timed checkpoints, decided
from every process's flags alike. Whole interrupted runs are in test_train.py."""

import os
import signal
import time

import numpy as np
import pytest

from difffccf_jax.training import stopping


def gathered(*rows):
    """A gather function standing in for the processes: returns `rows` ([signum, over budget,
    checkpoint due] per process) whatever this process's flags, and records them."""
    seen = []

    def gather(flags):
        seen.append(list(flags))
        return np.asarray(rows, np.int64)
    return gather, seen


def test_a_signal_on_any_process_stops_every_process():
    gather, seen = gathered([0, 0, 0], [int(signal.SIGUSR1), 0, 0])
    decision = stopping.StopWatch(0, 0, gather=gather).decide()
    assert decision == stopping.Decision(stop=True, checkpoint=True, signum=signal.SIGUSR1)
    assert seen == [[0, 0, 0]]  # this process: no signal, no budget, no interval


def test_process_zero_clock_decides_the_budget_and_the_timed_checkpoints():
    gather, _ = gathered([0, 0, 0], [0, 1, 1])  # only process 1's clock says so: ignored
    assert stopping.StopWatch(0, 0, gather=gather).decide() == (False, False, 0)
    gather, _ = gathered([0, 0, 1], [0, 0, 0])
    assert stopping.StopWatch(0, 0, gather=gather).decide() == (False, True, 0)
    gather, _ = gathered([0, 1, 0], [0, 0, 0])
    assert stopping.StopWatch(0, 0, gather=gather).decide() == (True, True, 0)


def test_clocks_of_one_process():
    """Single process: the all-gather of the real `agree` returns this process's flags."""
    watch = stopping.StopWatch(max_minutes=0, checkpoint_every_minutes=0.5 / 60)
    assert watch.decide() == (False, False, 0)
    time.sleep(0.6)
    assert watch.decide() == (False, True, 0)
    watch.checkpointed()
    assert watch.decide() == (False, False, 0)
    time.sleep(0.6)
    watch.start_clocks()
    assert watch.decide() == (False, False, 0)
    budget = stopping.StopWatch(max_minutes=1e-9, checkpoint_every_minutes=0)
    assert budget.decide() == (True, True, 0)


@pytest.mark.parametrize("signum", stopping.STOP_SIGNALS)
def test_handlers_record_the_first_signal_and_are_put_back(signum):
    before = {s: signal.getsignal(s) for s in stopping.STOP_SIGNALS}
    with stopping.StopWatch(0, 0) as watch:
        os.kill(os.getpid(), signum)
        os.kill(os.getpid(), signal.SIGUSR2 if signum != signal.SIGUSR2 else signal.SIGTERM)
        decision = watch.decide()
    assert decision == (True, True, signum)
    assert {s: signal.getsignal(s) for s in stopping.STOP_SIGNALS} == before
