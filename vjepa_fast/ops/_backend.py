"""The one backend registry of the ops.

Each op declares its backends once, fastest first, as `Backend(name, run, check)`. A check takes the op's *key*, a
small hashable summary of the inputs (device type, dtype and whatever else the op's backends care about, such as
the head dimension) and returns None when the backend can run on such inputs, else the reason it cannot. The
choice is resolved once per (op, key) and cached, so an op's call path costs one dict lookup for it.

Each op also registers its probe: one call of its public function on tiny inputs, which preflight runs for every
forced backend (`run_probe`), so a backend that cannot run on the run's device fails before step 0.

Automatic choice takes the first backend whose check passes and whose `auto` check (if any: e.g. the Triton
interpreter, which runs but is never picked on its own) passes too. A forced backend (`set_backend`, fed from the
config's `backends` section) skips `auto`; if its check fails the call is an error that says why, never a silent
fallback.

Environment variables are read once, when this module is imported, as process defaults under the config:
`VJEPA_FAST_<OP>_BACKEND`, `VJEPA_FAST_FLASH_BWD`, `VJEPA_FAST_FLASH_TUNING`, `VJEPA_FAST_CHECK_INDICES` and
`TRITON_INTERPRET` (docs/architecture.md, "Backends"). One rule for all of them: the environment's value is what
`auto` (or None, or an unset config key) means, and a config value naming a choice overrides it. So
`VJEPA_FAST_ROPE_BACKEND=triton` forces the Triton rope in every run whose config says `backends.rope: auto`, and
`set_backend(op, None)` returns an op to the process default, not past it. Nothing on an op's call path reads the
environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Hashable, Optional

import torch

TRUE = ("1", "true", "on", "yes")

# The environment, once: later changes to os.environ do not reach the ops (set_backend / configure do).
ENV: dict[str, str] = {k: v for k, v in os.environ.items() if k.startswith("VJEPA_FAST_") or k == "TRITON_INTERPRET"}
INTERPRET = ENV.get("TRITON_INTERPRET", "0").strip().lower() in TRUE  # Triton kernels run on the CPU interpreter

Check = Callable[[Hashable], Optional[str]]
# probe(device, dtype, head_dim): run the op once on tiny inputs on `device` in `dtype` (head_dim: the model's attention
# head width, since some kernels accept some head dims only); a backend that cannot run raises.
Probe = Callable[[torch.device, torch.dtype, int], object]


def always(_key: Hashable) -> Optional[str]:
    return None


@dataclass(frozen=True)
class Backend:
    name: str
    run: Callable
    check: Check = always  # None: it can run on inputs with this key; else why not
    auto: Optional[Check] = None  # an extra condition for automatic choice only (None: whenever it can run)


class Op:
    """One op's backends (fastest first), its probe, its forced choice and its per-key cache."""

    def __init__(self, name: str, *backends: Backend, probe: Probe):
        if name in _OPS:
            raise ValueError(f"op {name!r} is registered twice")
        self.name = name
        self.backends: dict[str, Backend] = {b.name: b for b in backends}
        self.probe = probe
        self.chosen: dict[Hashable, Backend] = {}
        env_var = env_backend_var(name)
        # The process default, what `auto` means for this op: the environment's backend (None: automatic choice).
        self.default: Optional[str] = self._known(ENV.get(env_var, "").strip().lower() or None, env_var)
        self.forced: Optional[str] = self.default
        _OPS[name] = self

    def _known(self, name: Optional[str], source: str) -> Optional[str]:
        """`name` as a forced choice (None for None / "auto"); ValueError naming `source` if no such backend."""
        if name is None or name == "auto":
            return None
        if name not in self.backends:
            raise ValueError(f"{source}: unknown backend {name!r}; choose one of auto, {', '.join(self.backends)}")
        return name

    def force(self, name: Optional[str]) -> None:
        """Force backend `name`; None or "auto": the process default (VJEPA_FAST_<OP>_BACKEND, else automatic)."""
        self.forced = self._known(name, self.name) or self.default
        self.chosen.clear()

    def choose(self, key: Hashable) -> Backend:
        if torch.compiler.is_compiling():
            # Resolved while tracing, once per graph: touching the cache would make torch.compile guard on its
            # contents (and recompile when an eager call fills it); the choice is noted for chosen_backends().
            backend = self._resolve(key)
            _note_traced_choice(self.name, backend.name)
            return backend
        backend = self.chosen.get(key)
        if backend is None:
            backend = self.chosen[key] = self._resolve(key)
        return backend

    def _resolve(self, key: Hashable) -> Backend:
        if self.forced is not None:
            backend = self.backends[self.forced]
            reason = backend.check(key)
            if reason is not None:
                raise RuntimeError(f"{self.name}: backend {self.forced!r} was forced but cannot run on {key}: "
                                   f"{reason}")
            return backend
        for backend in self.backends.values():
            if backend.check(key) is None and (backend.auto is None or backend.auto(key) is None):
                return backend
        raise RuntimeError(f"{self.name}: no backend can run on {key}")


_OPS: dict[str, Op] = {}


def env_backend_var(op: str) -> str:
    """The environment variable whose backend is `op`'s process default."""
    return f"VJEPA_FAST_{op.upper()}_BACKEND"


TRACED = "(traced by torch.compile)"  # the key under which chosen_backends() lists choices made while tracing


@torch.compiler.assume_constant_result
def _note_traced_choice(op: str, name: str) -> bool:
    """Record a choice made while torch.compile traces (dynamo runs this once, at trace time, and guards nothing;
    the key itself may hold symbolic sizes there, so the choice is listed under TRACED)."""
    registered = _OPS[op]
    registered.chosen.setdefault(TRACED, registered.backends[name])
    return True


def _op(name: str) -> Op:
    if name not in _OPS:
        raise ValueError(f"unknown op {name!r}; choose one of {', '.join(sorted(_OPS))}")
    return _OPS[name]


def set_backend(op: str, name: Optional[str]) -> None:
    """Force backend `name` for `op` in this process (None or "auto": the process default again, i.e. the backend
    VJEPA_FAST_<OP>_BACKEND named when vjepa_fast was imported, else automatic choice)."""
    _op(op).force(name)


def forced_backend(op: str) -> Optional[str]:
    """The backend forced for `op`, by the config or the environment (None: automatic choice)."""
    return _op(op).forced


def backend_names(op: str) -> tuple[str, ...]:
    return tuple(_op(op).backends)


def op_names() -> tuple[str, ...]:
    return tuple(_OPS)


def run_probe(op: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    """Run `op` once on tiny inputs with its current choice (the forced backend, if any): its registered probe."""
    _op(op).probe(device, dtype, head_dim)


def chosen_backends() -> dict[str, dict[str, str]]:
    """What each op chose so far in this process: {op: {key: backend}} (for the run log)."""
    return {name: {str(key): b.name for key, b in op.chosen.items()} for name, op in _OPS.items() if op.chosen}


# ---- settings that are no backend choice, with the same env-once-then-config rule ------------------------------

# Index-range checks cost a host synchronisation on a GPU, so there they run only in debug mode: config
# train.check_indices=true or VJEPA_FAST_CHECK_INDICES=1 (either turns them on). On the CPU they always run.
_CHECK_INDICES_ENV = ENV.get("VJEPA_FAST_CHECK_INDICES", "0").strip().lower() in TRUE
_check_indices = _CHECK_INDICES_ENV


def set_check_indices(on: bool) -> None:
    global _check_indices
    _check_indices = bool(on) or _CHECK_INDICES_ENV


def check_indices_by_default(device: torch.device) -> bool:
    return device.type == "cpu" or _check_indices


def check_index_range(op: str, name: str, idx: torch.Tensor, limit: int) -> None:
    """IndexError unless every value of `idx` is in [0, limit). Under torch.compile a host-side check would break
    the graph, so there it is a traced assertion (torch._assert_async: no graph break, no host sync; on a GPU a
    device-side assert that stops the process) with the same message minus the offending values."""
    if idx.numel() == 0:
        return
    if torch.compiler.is_compiling():
        torch._assert_async(((idx >= 0) & (idx < limit)).all(), f"{op}: {name} index out of range [0, {limit})")
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= limit:
        raise IndexError(f"{op}: {name} index out of range [0, {limit}): min {lo}, max {hi}")


# The Triton attention backward's dQ path (docs/attention.md): "split" (a separate dQ kernel, bitwise repeatable, the
# default) or "atomic"; and the block-size table the kernels read (None: the packaged one).
ATTENTION_BACKWARD_MODES = ("split", "atomic")


def _backward_mode(mode: str, source: str) -> str:
    mode = mode.strip().lower()
    if mode not in ATTENTION_BACKWARD_MODES:
        raise ValueError(f"{source}={mode!r}: expected one of {', '.join(ATTENTION_BACKWARD_MODES)}")
    return mode


attention_backward = _backward_mode(ENV.get("VJEPA_FAST_FLASH_BWD") or "split", "VJEPA_FAST_FLASH_BWD")
attention_tuning: Optional[str] = ENV.get("VJEPA_FAST_FLASH_TUNING") or None


def set_attention_backward(mode: Optional[str]) -> None:
    """"split" or "atomic" (None or "auto": the process default, VJEPA_FAST_FLASH_BWD, else split)."""
    global attention_backward
    default = ENV.get("VJEPA_FAST_FLASH_BWD") or "split"
    attention_backward = _backward_mode(default if mode in (None, "auto") else mode, "backends.attention_backward")


def set_attention_tuning(path: Optional[str]) -> None:
    """The block-size table of the Triton attention (None: VJEPA_FAST_FLASH_TUNING, else the packaged table)."""
    global attention_tuning
    attention_tuning = path or ENV.get("VJEPA_FAST_FLASH_TUNING") or None


def configure(backends) -> None:
    """Apply a config's `backends` section (vjepa_fast.config.BackendsConfig): forced choices and attention settings.
    Every key is applied, so a choice an earlier config made does not linger; `auto` / null keys fall back to the
    environment's defaults (module docstring), never past them."""
    for op in op_names():
        set_backend(op, getattr(backends, op))
    set_attention_backward(backends.attention_backward)
    set_attention_tuning(backends.attention_tuning)
