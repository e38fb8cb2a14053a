"""A training checkpoint on disk, the read side: where a run keeps its checkpoints, how one is checked intact and
read without running code from it, and the one-line errors of both (run/checkpoint.py writes checkpoints and loads
them into a training model; weights/formats.py reads them as weights).

A checkpoint is `<run_dir>/checkpoints/step_XXXXXXXX/` (DCP shards, `.metadata`, `loop.pt`, `config.yaml`,
`checksums.json`) or, from earlier versions, a single file `step_XXXXXXXX.pt`; run/checkpoint.py describes the layout.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from vjepa_fast.user_errors import RunError
from vjepa_fast.weights import dcp_safe, shard_sums

_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")
LOOP_FILE = "loop.pt"
METADATA_FILE = ".metadata"


class CheckpointError(RuntimeError):
    """A save or load that failed; the message is one line saying why."""


class CheckpointDamaged(CheckpointError):
    """The checkpoint's files are not what was written (missing, short, another checksum, an index that is not DCP's):
    the same for every process that reads them, so a resume falls back to an older checkpoint."""


class CheckpointReadError(CheckpointError, RunError):
    """The file system failed to read a file (permissions, I/O error): not proof of damage, as it may pass on retry or
    on another rank, so nothing is renamed and the run stops. A RunError, so that the trainer reports it as it is
    rather than as a checkpoint that does not fit the model."""


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


def check_intact(path: Path) -> None:
    """Raise CheckpointDamaged or CheckpointReadError unless the checkpoint is complete and its files are the ones
    written (index read without running code, every shard present, at its size and, where recorded, its checksum)."""
    with _as_checkpoint_error(path):
        if path.is_file():  # single-file format: reading it is the only check there is
            payload = load_file(path)
            if not (isinstance(payload, dict) and "model" in payload):
                raise CheckpointDamaged(f"{path}: no model state in it")
            return
        meta_file = path / METADATA_FILE
        try:
            metadata = dcp_safe.read_metadata(meta_file)
        except dcp_safe.UnsafeMetadata as e:
            raise CheckpointDamaged(f"{meta_file} refused: {e}; nothing from it was run") from None
        need: dict[str, int] = {}
        for info in metadata.storage_data.values():
            need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
        for name, size in sorted(need.items()):
            f = path / name
            if not f.is_file():
                raise CheckpointDamaged(f"{path}: {shard_sums.shard_label(name)} is missing")
            if f.stat().st_size < size:
                raise CheckpointDamaged(f"{path}: {shard_sums.shard_label(name)} is truncated "
                                        f"({f.stat().st_size} of {size} bytes)")
        why = shard_sums.damage(path, [*need, METADATA_FILE, LOOP_FILE])
        if why is not None:
            raise CheckpointDamaged(f"{path}: {why}")
        load_file(path / LOOP_FILE)


@contextlib.contextmanager
def _as_checkpoint_error(path: Path):
    """Any failure to read `path` as a CheckpointError: CheckpointReadError when the file system failed,
    CheckpointDamaged when a file is gone or its content does not parse."""
    try:
        yield
    except CheckpointError:
        raise
    except OSError as e:
        if isinstance(e, FileNotFoundError):  # a file of the checkpoint is gone: as missing as a missing shard
            raise CheckpointDamaged(f"{path}: {why_failed(e)}") from None
        raise CheckpointReadError(f"{path} could not be read ({why_failed(e)}); it was left as it is: fix the file "
                                  f"system or permissions and start again") from None
    except Exception as e:  # an index, shard or loop state that does not parse
        raise CheckpointDamaged(f"{path}: {why_failed(e)}") from None


def load_file(path: Path) -> dict[str, Any]:
    """Load a single-file checkpoint safely (weights_only: no code runs from the file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _refused_by_weights_only(e):
            raise
        raise CheckpointDamaged(f"{path} refused: {weights_only_refusal(e)}") from None


def _refused_by_weights_only(e: BaseException) -> bool:
    return isinstance(e, pickle.UnpicklingError) and "weights_only" in str(e)


def weights_only_refusal(e: BaseException) -> str:
    """What torch's weights-only unpickler refused, without its advice to load the file unsafely instead."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = next((ln for ln in lines if ln.startswith(("WeightsUnpickler error:", "Trying to load"))), None)
    if why is None:
        why = next((ln for ln in lines if "weights_only" not in ln and "Weights only load failed" not in ln
                    and "trust" not in ln), type(e).__name__)
    why = why.removeprefix("WeightsUnpickler error:").strip()
    why = re.split(r"\s+Please use `torch\.serialization", why)[0].rstrip(". ")
    return f"{why}: it holds more than tensors and plain data; nothing from it was run"


def load_payload(path: str | Path, keys: Optional[set[str]] = None) -> dict[str, Any]:
    """The whole checkpoint in this process as full tensors: {"model": ..., "optim": ..., "step": ..., ...}.
    `keys` (e.g. {"model"}) reads only those parts of a sharded checkpoint. CheckpointError (one line) when the
    checkpoint is damaged, unreadable or holds anything but tensors and plain data."""
    path = Path(path)
    if path.is_file():
        with _as_checkpoint_error(path):
            return load_file(path)
    check_intact(path)
    try:
        state: dict[str, Any] = {}
        with single_process_ok():
            _load_state_dict(state, storage_reader=dcp_safe.SafeReader(path), no_dist=not dist.is_initialized(),
                             planner=dcp_safe.SafeKeysPlanner(keys={keys} if isinstance(keys, str) else keys))
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        raise CheckpointError(f"{path} could not be loaded ({why_failed(e)})") from None
    with _as_checkpoint_error(path):
        return {**state, **load_file(path / LOOP_FILE)}


def causes(e: BaseException) -> list[BaseException]:
    """`e`, its causes and contexts, and every rank's failure a CheckpointException carries."""
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
    return seen


def why_failed(e: BaseException) -> str:
    """One line for a failed save or load, naming the OS reason (no space left, read-only) when there is one, or
    what a weights-only load refused (without torch's advice to load unsafely)."""
    seen = causes(e)
    for cur in seen:
        if isinstance(cur, OSError) and cur.errno is not None:
            where = f" ({cur.filename})" if cur.filename else ""
            return f"{os.strerror(cur.errno).lower()}{where}"
    for cur in seen:
        if _refused_by_weights_only(cur):
            return weights_only_refusal(cur)
    inner = seen[-1] if len(seen) > 1 and isinstance(e, CheckpointException) else e
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def single_process_ok():
    """DCP warns that it "assumes a single process" when there is no process group: here that is the intent."""
    with warnings.catch_warnings():
        if not dist.is_initialized():
            warnings.filterwarnings("ignore", message="torch.distributed is", category=UserWarning)
        yield
