"""Who owns a run dir and where a run starts: one lock, one resume decision, made by rank 0 and shared by all.

Rank 0 takes an exclusive lock on `<run_dir>/.lock` for the run's whole life (a second launch into the same dir fails
at once, naming the holder), then chooses the checkpoint every rank will load: the newest one whose files are the ones
written (checkpoint.check_intact: index, sizes, checksums). A damaged checkpoint is renamed out of the resume order
(kept); a file that cannot be read at all (permissions, an I/O error) stops the start and nothing is renamed, since
another try, or another rank, may read it fine.
The decision travels to the other ranks as one broadcast object, so either every rank starts from the same step or
every rank stops with the same one-line error. A run never starts from scratch over existing checkpoints unless
`train.resume=restart` asks for it, and then the old ones are moved aside, never deleted.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch.distributed as dist

from vjepa_fast.run import checkpoint

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# Lock fds held by this process. A flock belongs to the open file, which a fork shares: a data-loader worker still
# alive after its run released the lock would keep the dir locked, and the next run in the same process (a benchmark
# that trains several times, a notebook) would be refused as "in use". Forked children close their copies at once.
_HELD_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCK_FDS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class RunDirError(RuntimeError):
    """The run cannot start in this dir (busy, refused resume, nothing readable); the message is one line."""


class RunDirLock:
    """An exclusive flock on <run_dir>/.lock that names its holder (host, pid, start time) inside the file."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            raise RunDirError(f"run dir {self.path.parent} is in use by another run ({holder}); wait for it to "
                              f"finish or choose another run_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host={socket.gethostname()} pid={os.getpid()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
                  .encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _HELD_LOCK_FDS.add(fd)

    def release(self) -> None:
        if self._fd is not None:
            _HELD_LOCK_FDS.discard(self._fd)
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a new holder)
            self._fd = None


@dataclass
class ResumeDecision:
    path: Optional[Path]  # the checkpoint every rank loads, None: start at step 0
    step: int
    error: Optional[str] = None


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def move_aside(run_dir: Path) -> list[Path]:
    """`train.resume=restart`: rename checkpoints/ and metrics.jsonl out of the way (kept, never deleted)."""
    moved = []
    stamp = _stamp()
    for src, dst in ((checkpoint.checkpoint_dir(run_dir), run_dir / f"checkpoints.old-{stamp}"),
                     (run_dir / "metrics.jsonl", run_dir / f"metrics.old-{stamp}.jsonl")):
        if src.exists():
            os.replace(src, dst)
            moved.append(dst)
    return moved


def decide(run_dir: Path, resume: bool | str) -> ResumeDecision:
    """Rank 0's choice (file-system only, no collectives): newest complete and readable checkpoint, or a refusal."""
    checkpoint.remove_partial(run_dir)  # saves killed half-way: never visible, never chosen
    found = checkpoint.list_checkpoints(run_dir)
    if resume == "restart":
        for dst in move_aside(run_dir):
            log.warning("train.resume=restart: moved %s aside to %s", dst.name.split(".old-")[0], dst)
        return ResumeDecision(None, 0)
    if not found:
        return ResumeDecision(None, 0)
    if resume is False:
        return ResumeDecision(None, 0, f"train.resume=false but {checkpoint.checkpoint_dir(run_dir)} holds "
                                       f"checkpoints (newest: step {found[-1][0]}); set train.resume=true to continue "
                                       f"them or train.resume=restart to move them aside and start again")
    reasons = []
    for step, path in reversed(found):
        try:
            why = checkpoint.unreadable_reason(path)
        except checkpoint.CheckpointReadError as e:  # the file system failed, not the checkpoint: keep it and stop
            return ResumeDecision(None, 0, f"rank 0: checkpoint {e}")
        if why is None:
            return ResumeDecision(path, step)
        reasons.append(why)
        aside = path.with_name(f"{path.name}.unreadable-{_stamp()}")
        os.replace(path, aside)  # out of the resume and pruning order, kept for a post-mortem
        log.warning("checkpoint damaged: %s; moved to %s, trying an older one", why, aside.name)
    return ResumeDecision(None, 0, f"none of the {len(found)} checkpoints in {checkpoint.checkpoint_dir(run_dir)} is "
                                   f"readable ({reasons[0]}); they were renamed *.unreadable-*; set "
                                   f"train.resume=restart to start again")


class RunDir:
    """The run's hold on its dir: lock (rank 0), the shared resume decision, release at the end."""

    def __init__(self, run_dir: str | Path, is_main: bool, group: Optional[dist.ProcessGroup] = None):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.group = group
        self.lock = RunDirLock(self.run_dir)

    def open(self, resume: bool | str, precheck: Optional[Callable[[], Optional[str]]] = None) -> ResumeDecision:
        """Collective: every rank gets rank 0's decision, or every rank raises its error. `precheck` (rank 0, before
        anything is written) returns None or the one-line reason the start is refused."""
        decision = None
        if self.is_main:
            try:
                refused = precheck() if precheck is not None else None
                if refused is not None:
                    raise RunDirError(refused)
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.lock.acquire()
                decision = decide(self.run_dir, resume)
            except RunDirError as e:
                decision = ResumeDecision(None, 0, str(e))
            except OSError as e:
                decision = ResumeDecision(None, 0, f"run dir {self.run_dir}: {e.strerror or e}")
        if dist.is_initialized():
            box = [decision]
            dist.broadcast_object_list(box, src=0, group=self.group)
            decision = box[0]
        if decision.error is not None:
            self.close()
            raise RunDirError(decision.error)
        return decision

    def close(self) -> None:
        self.lock.release()

