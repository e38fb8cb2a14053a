"""The one way a benchmark forces backends: `with forced_backends({op: backend}):` around the rows that need them.

A forced backend is process-wide (and so is a Trainer's `ops.configure` of its config's `backends` section), so a
row must hand the next one the process as it found it, however it ends. On leaving the block every op's forced
choice and the Triton attention's backward mode and block-size table are what they were on entering it, including
choices made inside the block (a Trainer built there). A plain module, not a fixture: scripts use it too
(step_anatomy.py).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Optional

from vjepa_fast.ops import _backend


@contextlib.contextmanager
def forced_backends(choices: Optional[Mapping[str, Optional[str]]] = None) -> Iterator[None]:
    """Force {op: backend} ("auto" or None: the process default) inside the block; restore every op after it."""
    forced = {op: _backend.forced_backend(op) for op in _backend.op_names()}
    backward, tuning = _backend.attention_backward, _backend.attention_tuning
    try:
        for op, name in (choices or {}).items():
            _backend.set_backend(op, name)
        yield
    finally:
        for op, name in forced.items():
            _backend.set_backend(op, name)
        _backend.set_attention_backward(backward)
        _backend.set_attention_tuning(tuning)
