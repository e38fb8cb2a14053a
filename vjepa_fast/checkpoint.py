"""Checkpoints: every rank writes its own shards (torch.distributed.checkpoint), visible only once complete.

Layout of one checkpoint, `<run_dir>/checkpoints/step_XXXXXXXX/`:
- `__<rank>_0.distcp`: that rank's shards of the model and optimizer state (one file per rank, no gather);
- `.metadata`: DCP's index of every tensor chunk (written by rank 0 after every rank finished writing);
- `loop.pt`: the loop state (step, data error counts, world size) and `config.yaml`: the resolved config.
It is written under `step_XXXXXXXX.tmp/` and renamed by rank 0 once every rank's files are fsynced, so a name
without `.tmp` is always complete. A checkpoint reshards on load (any world size, HSDP or not) and loads into one
process for inspection (`load_payload`). Single-file `step_XXXXXXXX.pt` checkpoints of earlier versions still load.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")
TMP_SUFFIX = ".tmp"
LOOP_FILE = "loop.pt"
CONFIG_FILE = "config.yaml"
METADATA_FILE = ".metadata"


class CheckpointError(RuntimeError):
    """A save or load that failed; the message is one line saying why."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Committed checkpoints (sharded dirs and single files), oldest first; partial `.tmp` ones never appear."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), d / n) for n in os.listdir(d) if (m := _NAME.match(n))]
    return sorted(found)


def is_checkpoint(path: str | Path) -> bool:
    """A sharded checkpoint dir or a training checkpoint file of this project (by name)."""
    p = Path(path)
    return bool(_NAME.match(p.name)) and (p.is_file() or (p / METADATA_FILE).is_file())


def remove_partial(run_dir: str | Path) -> None:
    """Delete the leftovers of saves killed half-way (`*.tmp`): they were never complete, so nothing is lost."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return
    for name in os.listdir(d):
        if name.endswith(TMP_SUFFIX):
            p = d / name
            log.warning("removing %s, left by a save that did not finish", p)
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def unreadable_reason(path: Path) -> Optional[str]:
    """None when the checkpoint is complete and readable, else why not (cheap: index and sizes, no tensor reads)."""
    try:
        if path.is_file():  # single-file format: reading it is the only check there is
            payload = load_file(path)
            return None if isinstance(payload, dict) and "model" in payload else "no model state in it"
        torch.load(path / LOOP_FILE, map_location="cpu", weights_only=True)
        metadata = FileSystemReader(path).read_metadata()
        need: dict[str, int] = {}
        for info in metadata.storage_data.values():
            need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
        for name, size in sorted(need.items()):
            f = path / name
            if not f.is_file():
                return f"shard {name} is missing"
            if f.stat().st_size < size:
                return f"shard {name} is truncated ({f.stat().st_size} of {size} bytes)"
    except Exception as e:  # any failure to read the index or the loop state
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


def load_file(path: Path) -> dict[str, Any]:
    """Load a single-file checkpoint safely (weights_only: no code runs from the file)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_payload(path: str | Path, keys: Optional[set[str]] = None) -> dict[str, Any]:
    """The whole checkpoint in this process as full tensors: {"model": ..., "optim": ..., "step": ..., ...}.
    `keys` (e.g. {"model"}) reads only those parts of a sharded checkpoint."""
    path = Path(path)
    if path.is_file():
        return load_file(path)
    with _single_process_ok():
        state = _load_state_dict_from_keys(keys, storage_reader=FileSystemReader(path))
    return {**state, **torch.load(path / LOOP_FILE, map_location="cpu", weights_only=True)}


def consolidate(path: str | Path, out: str | Path) -> Path:
    """Write a sharded checkpoint as one torch.save file (the single-file layout), e.g. for export."""
    out = Path(out)
    torch.save(load_payload(path), out)
    return out


def why_failed(e: BaseException) -> str:
    """One line for a failed save or load, naming the OS reason (no space left, read-only) when there is one."""
    seen: list[BaseException] = []
    stack = [e]
    while stack:
        cur = stack.pop()
        if cur is None or any(cur is s for s in seen):
            continue
        seen.append(cur)
        if isinstance(cur, CheckpointException):
            stack.extend(exc for exc, _ in cur.failures.values())
        stack.extend([cur.__cause__, cur.__context__])
    for cur in seen:
        if isinstance(cur, OSError) and cur.errno is not None:
            where = f" ({cur.filename})" if cur.filename else ""
            return f"{os.strerror(cur.errno).lower()}{where}"
    inner = seen[-1] if len(seen) > 1 and isinstance(e, CheckpointException) else e
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0] if text else ''}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns that it "assumes a single process" when there is no process group: here that is the intent."""
    with warnings.catch_warnings():
        if not dist.is_initialized():
            warnings.filterwarnings("ignore", message="torch.distributed is", category=UserWarning)
        yield


def params_finite(model: torch.nn.Module) -> bool:
    """Every rank's parameter shards finite: reduced on the device, one host sync for the whole check."""
    flags = [torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in model.parameters()]
    ok = torch.stack(flags).all().to(torch.int32) if flags else torch.ones((), dtype=torch.int32)
    if dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


@dataclass
class _InFlight:
    future: Future
    step: int
    tmp: Path
    loop_state: dict
    config_yaml: str


class Checkpointer:
    """Saves (sync or async, at most one in flight), commits, prunes to the newest `keep`; loads on resume.

    Every method is collective (all ranks call it); rank 0 alone touches names in checkpoints/."""

    def __init__(self, run_dir: str | Path, keep: int, is_main: bool, async_save: bool = False,
                 group: Optional[dist.ProcessGroup] = None):
        self.run_dir, self.keep, self.is_main = Path(run_dir), keep, is_main
        self.async_save, self.group = async_save, group
        self.in_flight: Optional[_InFlight] = None

    # ---- save ---------------------------------------------------------------------------------------------------
    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loop_state: dict,
             config_yaml: str) -> None:
        self.wait()  # at most one save in flight: the previous one is committed before the next starts
        final = step_path(self.run_dir, step)
        tmp = final.with_name(final.name + TMP_SUFFIX)
        if self.is_main:
            final.parent.mkdir(parents=True, exist_ok=True)
        model_state, optim_state = get_state_dict(model, optimizer)
        writer = FileSystemWriter(tmp, single_file_per_rank=True, sync_files=True, thread_count=1)
        state = {"model": model_state, "optim": optim_state}
        try:
            with _single_process_ok():
                if self.async_save:
                    future = dcp.async_save(state, storage_writer=writer, process_group=self.group,
                                            no_dist=not dist.is_initialized())
                else:
                    dcp.save(state, storage_writer=writer, process_group=self.group,
                             no_dist=not dist.is_initialized())
            if self.async_save:
                self.in_flight = _InFlight(future, step, tmp, dict(loop_state), config_yaml)
                return
        except (Exception, CheckpointException) as e:
            self._fail(step, tmp, e)
        self._commit_everywhere(_InFlight(None, step, tmp, dict(loop_state), config_yaml))

    def poll(self) -> None:
        """Commit a finished background save (rank 0) without waiting; call once per step."""
        if self.in_flight is not None and self.in_flight.future.done() and self.is_main:
            self._finish_async()

    def wait(self) -> None:
        """Block until the save in flight (if any) is written and committed."""
        if self.in_flight is not None:
            self._finish_async()

    def _finish_async(self) -> None:
        job, self.in_flight = self.in_flight, None
        try:
            job.future.result()
        except (Exception, CheckpointException) as e:
            self._fail(job.step, job.tmp, e)
        if self.is_main:
            try:
                self._commit(job)
            except OSError as e:
                self._fail(job.step, job.tmp, e)

    def _commit_everywhere(self, job: _InFlight) -> None:
        error = None
        if self.is_main:
            try:
                self._commit(job)
            except OSError as e:
                error = why_failed(e)
        if dist.is_initialized():
            box = [error]
            dist.broadcast_object_list(box, src=0, group=self.group)
            error = box[0]
        if error is not None:
            self._fail(job.step, job.tmp, error)

    def _commit(self, job: _InFlight) -> None:
        """Rank 0, after every rank's shards are on disk: loop state + config, fsync, rename, prune."""
        buf = io.BytesIO()
        torch.save({"step": job.step, **job.loop_state}, buf)
        _write_synced(job.tmp / LOOP_FILE, buf.getvalue())
        _write_synced(job.tmp / CONFIG_FILE, job.config_yaml.encode())
        _fsync_dir(job.tmp)
        final = job.tmp.with_name(job.tmp.name[:-len(TMP_SUFFIX)])
        os.replace(job.tmp, final)
        _fsync_dir(final.parent)
        self.prune(job.step)

    def prune(self, written: int) -> None:
        """Keep the newest `keep` checkpoints up to the one just written; never that one, never a newer one."""
        older = [(s, p) for s, p in list_checkpoints(self.run_dir) if s < written]
        for _, path in older[:max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def _fail(self, step: int, tmp: Path, e: BaseException | str) -> None:
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        why = e if isinstance(e, str) else why_failed(e)
        raise CheckpointError(f"checkpoint at step {step} not saved: {why}; the previous checkpoint is intact")

    # ---- load ---------------------------------------------------------------------------------------------------
    def load(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Restore model and optimizer from `path` on every rank (resharding as needed); returns the loop state."""
        try:
            if path.is_dir():
                model_state, optim_state = get_state_dict(model, optimizer)
                state = {"model": model_state, "optim": optim_state}
                with _single_process_ok():
                    dcp.load(state, storage_reader=FileSystemReader(path), process_group=self.group,
                             no_dist=not dist.is_initialized())
                set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
                loop = torch.load(path / LOOP_FILE, map_location="cpu", weights_only=True)
            else:
                payload = load_file(path)
                set_state_dict(model, optimizer, model_state_dict=payload["model"], optim_state_dict=payload["optim"],
                               options=StateDictOptions(full_state_dict=True))
                loop = {k: v for k, v in payload.items() if k not in ("model", "optim")}
            error = None
        except (Exception, CheckpointException) as e:
            # DCP reports every rank's failure to all ranks: name the ranks that really failed to read
            me = dist.get_rank(self.group) if dist.is_initialized() else 0
            error = (sorted(e.failures) if isinstance(e, CheckpointException) else [me], why_failed(e))
        errors = [error]
        if dist.is_initialized():  # every rank loaded it, or every rank stops
            errors = [None] * dist.get_world_size(self.group)
            dist.all_gather_object(errors, error, group=self.group)
        failed = [err for err in errors if err is not None]
        if failed:
            ranks = ", ".join(str(r) for r in sorted({r for rs, _ in failed for r in rs}))
            raise CheckpointError(f"checkpoint {path} could not be loaded on rank {ranks} ({failed[0][1]}); "
                                  f"every rank stops")
        return loop
