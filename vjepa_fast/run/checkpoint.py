"""Checkpoints: every rank writes its own shards (torch.distributed.checkpoint), visible only once complete.

Layout of one checkpoint, `<run_dir>/checkpoints/step_XXXXXXXX/`:
- `__<rank>_0.distcp`: that rank's shards of the model and optimizer state (one file per rank, no gather);
- `.metadata`: DCP's index of every tensor chunk (written by rank 0 after every rank finished writing);
- `loop.pt`: the loop state (step, data error counts, world size) and `config.yaml`: the resolved config;
- `checksums.json`: size and CRC-32 of every shard, `.metadata` and `loop.pt`, taken at save time
  (weights/shard_sums.py).
It is written under `step_XXXXXXXX.tmp/` and renamed by rank 0 once every rank's files are fsynced, so a name
without `.tmp` is always complete. Reading one runs no code from it (weights/dcp_safe.py), and a checkpoint whose
files differ from what was written is named as damaged (`check_intact`) before anything is loaded from it. A
checkpoint reshards on load (any world size, HSDP or not) and loads into one process for inspection (`load_payload`).
The read side (the layout's names, the errors, `check_intact`, `load_payload`) is weights/training_checkpoint.py,
below the weights loaders that read a run's checkpoints too; this module writes, prunes and loads into training.
Single-file `step_XXXXXXXX.pt` checkpoints of earlier versions still load.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from vjepa_fast.weights import dcp_safe, shard_sums
from vjepa_fast.weights.training_checkpoint import (LOOP_FILE, METADATA_FILE, CheckpointDamaged, CheckpointError,
                                                    CheckpointReadError, causes, check_intact, checkpoint_dir,
                                                    list_checkpoints, load_file, load_payload, single_process_ok,
                                                    step_path, why_failed)

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
CONFIG_FILE = "config.yaml"


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
    """None when `check_intact` passes, else why the checkpoint is damaged; CheckpointReadError propagates."""
    try:
        check_intact(path)
    except CheckpointDamaged as e:
        return str(e)
    return None


def consolidate(path: str | Path, out: str | Path) -> Path:
    """Write a sharded checkpoint as one torch.save file (the single-file layout), e.g. for export."""
    out = Path(out)
    torch.save(load_payload(path), out)
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_write_synced = shard_sums.write_synced  # every file of a commit is written through this one name


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

    Every method is collective (all ranks call it); rank 0 alone touches names in checkpoints/. It also owns when a
    run saves: every `every` steps, after step `last_step`, on a stop request, and not during a streak of non-finite
    steps (that save is deferred to the first finite step)."""

    def __init__(self, run_dir: str | Path, keep: int, is_main: bool, async_save: bool = False,
                 group: Optional[dist.ProcessGroup] = None, every: int = 1, last_step: int = 0):
        self.run_dir, self.keep, self.is_main = Path(run_dir), keep, is_main
        self.async_save, self.group = async_save, group
        self.in_flight: Optional[_InFlight] = None
        self.every, self.last_step = every, last_step
        self.deferred = False  # a due save not written (non-finite streak): tried again after each step

    # ---- when -----------------------------------------------------------------------------------------------------
    def due(self, next_step: int, stop: bool) -> bool:
        """Whether the state before `next_step` is to be saved now: on the cadence, after the last step, on a stop
        request, or while a save is deferred."""
        return self.on_cadence(next_step) or next_step == self.last_step or stop or self.deferred

    def on_cadence(self, next_step: int) -> bool:
        return next_step % self.every == 0

    def defer(self, next_step: int, nonfinite_in_a_row: int) -> bool:
        """True (the save deferred) while non-finite steps are being skipped: the state may be diverging, and the
        previous checkpoint is the one to resume from."""
        self.deferred = nonfinite_in_a_row > 0
        if self.deferred and self.is_main:
            log.warning("step %d: checkpoint deferred during a streak of non-finite steps", next_step)
        return self.deferred

    # ---- save ---------------------------------------------------------------------------------------------------
    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loop_state: dict,
             config_yaml: str) -> None:
        self.wait()  # at most one save in flight: the previous one is committed before the next starts
        final = step_path(self.run_dir, step)
        tmp = final.with_name(final.name + TMP_SUFFIX)
        if self.is_main:
            final.parent.mkdir(parents=True, exist_ok=True)
        model_state, optim_state = get_state_dict(model, optimizer)
        writer = shard_sums.SummingWriter(tmp, single_file_per_rank=True, sync_files=True, thread_count=1)
        state = {"model": model_state, "optim": optim_state}
        try:
            with single_process_ok():
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
        """Rank 0, after every rank's shards are on disk: loop state, config, checksums, fsync, rename, prune."""
        buf = io.BytesIO()
        torch.save({"step": job.step, **job.loop_state}, buf)
        _write_synced(job.tmp / LOOP_FILE, buf.getvalue())
        _write_synced(job.tmp / CONFIG_FILE, job.config_yaml.encode())
        index = dcp_safe.read_metadata(job.tmp / METADATA_FILE)
        files = [*{info.relative_path for info in index.storage_data.values()}, METADATA_FILE, LOOP_FILE]
        _write_synced(job.tmp / shard_sums.SUMS_FILE, shard_sums.sums_json(job.tmp, files))
        shard_sums.remove_partials(job.tmp)
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
                with single_process_ok():
                    dcp.load(state, storage_reader=dcp_safe.SafeReader(path), planner=dcp_safe.SafeLoadPlanner(),
                             process_group=self.group, no_dist=not dist.is_initialized())
                set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
                loop = load_file(path / LOOP_FILE)
            else:
                payload = load_file(path)
                set_state_dict(model, optimizer, model_state_dict=payload["model"], optim_state_dict=payload["optim"],
                               options=StateDictOptions(full_state_dict=True))
                loop = {k: v for k, v in payload.items() if k not in ("model", "optim")}
            error = None
        except (Exception, CheckpointException) as e:
            # DCP reports every rank's failure to all ranks: name the ranks that really failed to read
            me = dist.get_rank(self.group) if dist.is_initialized() else 0
            error = (sorted(e.failures) if isinstance(e, CheckpointException) else [me], why_failed(e),
                     any(isinstance(c, OSError) for c in causes(e)))
        errors = [error]
        if dist.is_initialized():  # every rank loaded it, or every rank stops
            errors = [None] * dist.get_world_size(self.group)
            dist.all_gather_object(errors, error, group=self.group)
        failed = [err for err in errors if err is not None]
        if failed:
            ranks = ", ".join(str(r) for r in sorted({r for rs, _, _ in failed for r in rs}))
            if any(read for _, _, read in failed):  # the file system's fault, not the checkpoint's: keep it
                raise CheckpointReadError(f"checkpoint {path} could not be read on rank {ranks} ({failed[0][1]}); "
                                          f"every rank stops and the checkpoint was left as it is: fix the file "
                                          f"system or permissions and start again")
            raise CheckpointError(f"checkpoint {path} could not be loaded on rank {ranks} ({failed[0][1]}); "
                                  f"every rank stops")
        return loop
