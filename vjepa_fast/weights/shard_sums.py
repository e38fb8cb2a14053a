"""A content check of checkpoint files: each shard's size and CRC-32 (and those of the index and the loop state),
recorded at save time in `checksums.json`.

Each rank sums the shard file it has just written (all ranks at once, from the page cache; in the save's background
thread when the save is asynchronous) into `<shard>.sum`; rank 0 merges those into `checksums.json` (`sums_json`)
before the checkpoint's commit rename, so a committed checkpoint carries the sums of exactly its files. Whoever opens the
checkpoint (rank 0 choosing where to resume, eval, load_encoder, export, train.init_from) re-reads every shard and
compares: any changed byte or another size is named with the file and the rank that wrote it. CRC-32 catches
accidental damage at disk speed; it is no defence against a deliberate edit, which is why nothing in a checkpoint
can run code either (dcp_safe.py). Checkpoints of earlier versions have no `checksums.json`: sizes are all that is
checked there.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional

from torch.distributed.checkpoint import FileSystemWriter

SUMS_FILE = "checksums.json"
PARTIAL_SUFFIX = ".sum"  # one rank's sum of its own shard, merged into SUMS_FILE at the commit
_BLOCK = 16 << 20
_SHARD_NAME = re.compile(r"^__(\d+)_\d+\.distcp$")  # DCP's file names: __<rank>_<file index>.distcp


def shard_label(name: str) -> str:
    """`__1_0.distcp` -> "shard __1_0.distcp (written by rank 1)", `loop.pt` -> "file loop.pt"."""
    m = _SHARD_NAME.match(name)
    return f"shard {name} (written by rank {m.group(1)})" if m else f"file {name}"


def file_sum(path: Path) -> dict:
    """{"bytes": size, "crc32": 8 hex digits} of a file; OSError when it cannot be read."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            crc = zlib.crc32(block, crc)  # zlib releases the GIL on large blocks: threads sum files in parallel
            size += len(block)
    return {"bytes": size, "crc32": f"{crc:08x}"}


def write_synced(path: Path, data: bytes) -> None:
    """Write a small file and fsync it (a checkpoint's files are all on disk before its commit rename)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class SummingWriter(FileSystemWriter):
    """FileSystemWriter that sums each shard this rank wrote, once it is written and synced."""

    def write_data(self, plan, planner):
        future = super().write_data(plan, planner)
        for name in sorted({r.storage_data.relative_path for r in future.wait()}):
            shard = Path(self.path) / name
            write_synced(shard.with_name(name + PARTIAL_SUFFIX), json.dumps(file_sum(shard)).encode())
        return future


def sums_json(ckpt_dir: Path, names: Iterable[str]) -> bytes:
    """Rank 0 at the commit: the content of SUMS_FILE, the sum of every file in `names` (a rank's `.sum` for its
    shard, else summed here)."""
    sums = {}
    for name in sorted(names):
        partial = ckpt_dir / (name + PARTIAL_SUFFIX)
        sums[name] = json.loads(partial.read_text()) if partial.is_file() else file_sum(ckpt_dir / name)
    return json.dumps({"algorithm": "crc32", "files": sums}, indent=1).encode()


def remove_partials(ckpt_dir: Path) -> None:
    for partial in ckpt_dir.glob("*" + PARTIAL_SUFFIX):
        partial.unlink()


def damage(ckpt_dir: Path, shards: Iterable[str]) -> Optional[str]:
    """None when every file named in `shards` matches its recorded sum (or none was recorded), else what is wrong.
    OSError when a file cannot be read (a read error is not damage: it may pass on retry or on another rank)."""
    path = ckpt_dir / SUMS_FILE
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())["files"]
        if not isinstance(recorded, dict):
            raise ValueError("no files table")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return f"{SUMS_FILE} is not readable ({type(e).__name__})"
    names = sorted(shards)
    unrecorded = [n for n in names if n not in recorded]
    if unrecorded:
        return f"{shard_label(unrecorded[0])} has no checksum in {SUMS_FILE}"
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        found = dict(zip(names, pool.map(lambda n: file_sum(ckpt_dir / n), names)))
    for name in names:
        want, got = recorded[name], found[name]
        if got["bytes"] != want.get("bytes"):
            return f"{shard_label(name)} has {got['bytes']} bytes, {want.get('bytes')} were written"
        if got["crc32"] != want.get("crc32"):
            return f"{shard_label(name)} is damaged (crc32 {got['crc32']}, {want.get('crc32')} when written)"
    return None
