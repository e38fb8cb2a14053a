"""Run directory outputs: metrics.jsonl (one JSON object per logged step) and console progress."""
from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

from vjepa_fast.user_errors import RunError


class MetricsLog:
    """Appends to <run_dir>/metrics.jsonl; on resume, drops entries of steps that will be run again.

    The trimmed file is written beside the old one, fsynced and renamed over it, so a kill at any moment leaves
    either the old rows or the trimmed ones, never an empty or half-written file. A failed write (a full disk) stops
    the run with one line; the checkpoints are untouched by it."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self._failed = False
        try:
            if path.exists():
                kept = []
                for line in path.read_text().splitlines():
                    try:
                        if json.loads(line)["step"] < resume_step:
                            kept.append(line)
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a kill: drop it
                tmp = path.with_name(path.name + ".tmp")
                with open(tmp, "w") as f:
                    f.write("".join(k + "\n" for k in kept))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            self._f = open(path, "a", buffering=1)
        except OSError as e:
            raise write_error(path, e) from None

    def write(self, row: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) and k != "loss" else v)
                 for k, v in row.items()}
        try:
            self._f.write(json.dumps(clean) + "\n")
        except OSError as e:
            self._failed = True
            raise write_error(self.path, e) from None

    def close(self) -> None:
        try:
            self._f.close()  # flushes what a failed write left in the buffer, and fails again if it was that
        except OSError as e:
            if not self._failed:
                raise write_error(self.path, e) from None


def write_error(path: Path, e: OSError) -> RunError:
    """The one line for a run output that could not be written."""
    why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return RunError(f"writing {path} failed: {why}; free space or point run_dir elsewhere (the checkpoints are "
                    f"intact: relaunching resumes from the newest)")


class Progress:
    """A tqdm bar when tqdm is installed and enabled, otherwise a line per logged step."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar: Optional[Any] = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, mininterval=1.0,
                                file=sys.stderr)
            except ImportError:
                self.bar = None

    def update(self, row: Optional[dict] = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if row is not None:
                self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                     clips_s=f"{row['clips_per_s']:.1f}", refresh=False)
        elif self.enabled and row is not None:
            print(f"step {row['step']:>7d}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  "
                  f"clips/s {row['clips_per_s']:.1f}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
