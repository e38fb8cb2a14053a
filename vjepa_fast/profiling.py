"""Opt-in profiling helpers: NVTX ranges around the phases of a step, and a torch.profiler Chrome trace.

Both cost nothing unless switched on, so the training loop can call them unconditionally:
- `nvtx_range(name)` marks a phase (data, target, context, predictor, loss, backward, optimizer, ema) for Nsight
  Systems once `enable_nvtx(True)` was called; it uses the `nvtx` package when installed (lower overhead, domains)
  and `torch.cuda.nvtx` otherwise, and is a no-op while torch.compile traces (a range is a side effect that would
  break the graph).
- `maybe_profile(run_dir, enabled, steps)` returns a torch.profiler context that records `steps` steps after a
  short wait and warm-up and writes `<run_dir>/profile/trace_step<N>.json` (open in chrome://tracing or Perfetto);
  while it is open, `nvtx_range` also labels the phases in that trace (record_function). Disabled, it returns a
  stand-in with the same `step()` method that does nothing.
"""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Iterator, Union

import torch

_ENABLED = False  # NVTX ranges on (enable_nvtx)
_RECORDING = False  # a maybe_profile context is open: label phases with record_function too
_OBSERVER = None  # observe_phases(fn): fn(name, begin) at every phase boundary (benchmarks/step_anatomy.py)
_HAS_NVTX_PACKAGE = importlib.util.find_spec("nvtx") is not None
DOMAIN = "vjepa_fast"


def enable_nvtx(on: bool = True) -> None:
    """Switch NVTX ranges on or off for this process (off by default)."""
    global _ENABLED
    _ENABLED = bool(on)


def nvtx_enabled() -> bool:
    return _ENABLED


def observe_phases(fn) -> None:
    """Call `fn(name, begin: bool)` on entering and leaving every phase range (None: stop). The step anatomy
    records a timestamp there; only one observer at a time."""
    global _OBSERVER
    _OBSERVER = fn


def _push(name: str) -> bool:
    """Open a range; False when no NVTX implementation can run here (then nothing is pushed)."""
    if _HAS_NVTX_PACKAGE:
        import nvtx

        nvtx.push_range(name, domain=DOMAIN)
        return True
    if torch.cuda.is_available():
        torch.cuda.nvtx.range_push(name)
        return True
    return False


def _pop() -> None:
    if _HAS_NVTX_PACKAGE:
        import nvtx

        nvtx.pop_range(domain=DOMAIN)
    else:
        torch.cuda.nvtx.range_pop()


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    """Mark the block as phase `name`: an NVTX range when enabled, a profiler label while maybe_profile records.

    With neither switched on (the default) it does nothing, so it can stay in the training loop.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"nvtx_range: name must be a non-empty string, got {name!r}")
    if not (_ENABLED or _RECORDING or _OBSERVER is not None) or torch.compiler.is_compiling():
        yield
        return
    with contextlib.ExitStack() as stack:
        observer = _OBSERVER
        if observer is not None:
            observer(name, True)
            stack.callback(observer, name, False)
        if _RECORDING:  # shows the phase in the Chrome trace of maybe_profile
            stack.enter_context(torch.profiler.record_function(name))
        if _ENABLED and _push(name):
            stack.callback(_pop)
        yield


class _NoProfiler:
    """What `maybe_profile` returns when profiling is off: a context manager whose step() does nothing."""

    def __enter__(self) -> "_NoProfiler":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def step(self) -> None:
        pass


def maybe_profile(run_dir: Union[str, Path], enabled: bool, steps: int = 3, wait: int = 1,
                  warmup: int = 1) -> Union["_Recording", _NoProfiler]:
    """A torch.profiler context recording `steps` steps (after `wait` + `warmup`), or a no-op stand-in.

    Call `.step()` once per training step inside the context. The trace lands in <run_dir>/profile/ as
    trace_step<N>.json, N the profiler's step count when the recording ended.
    """
    if not enabled:
        return _NoProfiler()
    for name, v, lo in (("steps", steps, 1), ("wait", wait, 0), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"maybe_profile: {name} must be an integer >= {lo}, got {v!r}")
    out_dir = Path(run_dir) / "profile"
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(prof: torch.profiler.profile) -> None:
        prof.export_chrome_trace(str(out_dir / f"trace_step{prof.step_num}.json"))

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    # repeat=1: one recording per run, so a long run does not fill the disk with traces.
    schedule = torch.profiler.schedule(wait=wait, warmup=warmup, active=steps, repeat=1)
    return _Recording(torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=write))


class _Recording:
    """The torch profiler, plus the flag that makes nvtx_range label phases while it is open."""

    def __init__(self, prof: torch.profiler.profile):
        self.profiler = prof

    def __enter__(self) -> "_Recording":
        global _RECORDING
        self.profiler.__enter__()
        _RECORDING = True
        return self

    def __exit__(self, *exc) -> bool:
        global _RECORDING
        _RECORDING = False
        return bool(self.profiler.__exit__(*exc))

    def step(self) -> None:
        self.profiler.step()


def trace_files(run_dir: Union[str, Path]) -> list[Path]:
    """The Chrome traces written under <run_dir>/profile, oldest step first."""
    d = Path(run_dir) / "profile"
    return sorted(d.glob("trace_step*.json"), key=lambda p: int(p.stem.removeprefix("trace_step"))) \
        if d.is_dir() else []

