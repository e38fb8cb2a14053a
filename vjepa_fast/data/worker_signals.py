"""The data-loader workers' side of the stop signals (run/lifecycle.py handles them in the main process).

A cluster signals every process of the job, the data-loader workers included. A worker killed by SIGTERM makes torch
raise "DataLoader worker ... killed by signal" in the main process (from its SIGCHLD handler, at any point of the
step), so the workers ignore the stop signals (`ignore_stop_signals`, their init function) and the main process shuts
them down itself after the save; they are forked with the stop signals held back (`stop_signals_held`), so one that
arrives before a worker ignores them cannot kill it either.
"""
from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # what a scheduler sends before it preempts or hits the time limit


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A data-loader worker's init function: the stop signals are the main process's to handle (module docstring).

    Set to ignored, a signal still held back since the fork is discarded, then the hold is lifted."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_held():
    """Hold the stop signals back in this thread while it forks workers: a child inherits the held-back set, so a
    signal sent to it before its init function ran waits and is then discarded. A signal for this process that
    arrives meanwhile is delivered (to run/lifecycle.py's StopRequest handler) when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
