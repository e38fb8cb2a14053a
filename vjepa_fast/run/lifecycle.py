"""A worker's life: it dies with its launcher, and a preemption signal stops the loop cleanly on every rank.

SIGTERM / SIGUSR1 (what a scheduler sends before it preempts or hits the time limit) set a flag; every rank
shares its flag in one small asynchronous all-reduce per step on the CPU control group, read one step later, so all
ranks stop after the same step without a host sync on the training stream. The loop then saves and the process
exits with `REQUEUE_EXIT_CODE`, which scripts/slurm/train.sbatch turns into a requeue.

A cluster signals every process of the job, the data-loader workers included. A worker killed by SIGTERM makes torch
raise "DataLoader worker ... killed by signal" in the main process (from its SIGCHLD handler, at any point of the
step), so the workers ignore the stop signals and the main process shuts them down itself after the save
(data/worker_signals.py, which the loader uses).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Optional

import torch
import torch.distributed as dist

from vjepa_fast.data.worker_signals import STOP_SIGNALS

log = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
# Linux sends the parent-death signal whenever the creating *thread* exits (also when the process lives on in other
# threads) and once per thread of the child: a dedicated signal lets the handler check that the parent is gone.
PARENT_DEATH_SIGNAL = signal.SIGUSR2
_PR_SET_PDEATHSIG = 1
_parent_pid: Optional[int] = None


def die_with_parent() -> None:
    """Ask Linux to signal this process when its launcher (torchrun's agent) dies, so no worker trains on alone.

    The worker then saves and stops as on a preemption (see StopRequest)."""
    global _parent_pid
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
            return
    except (OSError, AttributeError) as e:
        log.warning("prctl unavailable (%s): workers will not stop with their launcher", e)
        return
    _parent_pid = os.getppid()
    if threading.current_thread() is threading.main_thread():
        signal.signal(PARENT_DEATH_SIGNAL, _exit_if_orphaned)  # outside the loop (start-up, teardown)
    if _parent_pid == 1:  # the parent died before the request was in place
        raise SystemExit("error: the launcher died before this worker started")


def parent_died() -> bool:
    return _parent_pid is not None and os.getppid() != _parent_pid


def _exit_if_orphaned(signum, frame) -> None:
    if parent_died():
        raise SystemExit("error: the launcher (torchrun) died; this worker stops with it")


class StopRequest:
    """Preemption signals -> one stop decision shared by every rank (see the module docstring)."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None):
        self.group = group
        self.signal_name: Optional[str] = None
        self._previous = {}
        self._work = None
        self._flag_buf: Optional[torch.Tensor] = None
        if threading.current_thread() is threading.main_thread():
            for sig in (*STOP_SIGNALS, PARENT_DEATH_SIGNAL):
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if signum == PARENT_DEATH_SIGNAL and not parent_died():
            return  # one of the launcher's threads ended, the launcher itself lives on
        if self.signal_name is not None:
            return
        self.signal_name = "the launcher's death" if signum == PARENT_DEATH_SIGNAL else signal.Signals(signum).name
        log.warning("stop requested (%s): finishing this step, saving, then exiting", self.signal_name)

    def agreed(self) -> bool:
        """Call once per step on every rank: True on all ranks at the same step once any rank got a signal."""
        if not dist.is_initialized():
            return self.signal_name is not None
        stop = False
        if self._work is not None:
            self._work.wait()
            stop = bool(self._flag_buf.item())
        self._flag_buf = torch.tensor([int(self.signal_name is not None)], dtype=torch.int32)
        self._work = dist.all_reduce(self._flag_buf, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return stop

    def __enter__(self) -> "StopRequest":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(clean=exc_type is None)

    def close(self, clean: bool = True) -> None:
        """Restore the handlers; `clean` (every rank got here normally): wait for the last all-reduce too."""
        if clean and self._work is not None:
            self._work.wait()
        self._work = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class CollectiveError(RuntimeError):
    """A collective failed (a peer died, stalled past parallel.timeout_s, or lost its connection); one line."""


_COLLECTIVE_SIGNS = ("gloo", "NCCL", "nccl", "Connection closed by peer", "Connection reset by peer", "Timed out",
                     "Application timeout caused pair closure")


def as_collective_error(e: BaseException, rank: int, phase: str, timeout_s: float) -> Optional[CollectiveError]:
    """The one-line form of a failed collective, or None when `e` is something else."""
    text = str(e).strip()
    if not (isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(s in text for s in
                                                                                   _COLLECTIVE_SIGNS))):
        return None
    return CollectiveError(f"rank {rank}: a collective failed during {phase} ({backend_message(e)}); another rank "
                           f"died, stalled for more than parallel.timeout_s={timeout_s:g} s or lost its connection")


def backend_message(e: BaseException) -> str:
    """The first line of a backend error, without the C++ frames after it and the "[/path/file.cc:129]" prefix."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first.split("] ", 1)[-1]
