"""Block sizes of the Triton varlen attention kernels (vjepa_fast/ops/triton_flash_varlen.py) per shape class.

`config(kernel, block_d, dtype, device)` is the one lookup the launches make. Tests that need other block sizes
replace it (tests/kernel_hooks.py: `block_sizes`); the tuner passes its trial's sizes to the launch functions
instead (benchmarks/tune_attention.py).
"""
from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Optional

import torch

from vjepa_fast.ops import _backend

# Block sizes per shape class: (kernel, padded head dim, dtype, GPU architecture, interpreted), looked up once per
# class (lru_cache) instead of autotuning, which keeps compile time and torch.compile traces predictable.
#
# The one table is `flash_varlen_tuned.json` beside this file: the winners of benchmarks/tune_attention.py per compute
# capability ("sm_90"), kernel and padded head dim, for 16-bit inputs. `backends.attention_tuning` (or
# VJEPA_FAST_FLASH_TUNING) points at another such file, e.g. one just tuned on this card. An architecture the table
# does not name takes the FALLBACK_ARCH entries, which compile without register spills at ViT strides, also with
# fp64 float arguments as Inductor passes them (benchmarks/aot_compile_attention.py, tests/test_triton_aot.py).

_TUNED_FILE = Path(__file__).with_name("flash_varlen_tuned.json")
FALLBACK_ARCH = "sm_90"


@functools.lru_cache(maxsize=None)
def _tuned_tables(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as e:
        warnings.warn(f"flash_tuning: ignoring block-size table {path} ({e}); using the packaged one",
                      RuntimeWarning, stacklevel=3)
        return {}


def _valid_entry(kernel: str, cfg) -> bool:
    if not isinstance(cfg, dict):
        return False
    keys = ("BLOCK_M",) if kernel == "delta" else ("BLOCK_M", "BLOCK_N")
    pow2 = all(isinstance(cfg.get(k), int) and cfg[k] >= 16 and cfg[k] & (cfg[k] - 1) == 0 for k in keys)
    options = {"EXP2_POLY"} if kernel == "fwd" else set()  # kernel switches a table may set (see _poly_switch)
    return (pow2 and cfg.get("num_warps", 4) in (1, 2, 4, 8, 16) and isinstance(cfg.get("num_stages", 2), int)
            and 1 <= cfg.get("num_stages", 2) <= 8 and cfg.get("EXP2_POLY", 0) in (0, 1, 2)
            and set(cfg) <= {*keys, "num_warps", "num_stages", *options})


def _table_entry(path: str, kernel: str, block_d: int, arch: str) -> Optional[dict]:
    cfg = _tuned_tables(path).get(arch, {}).get(kernel, {}).get(str(block_d))
    if cfg is None:
        return None
    if not _valid_entry(kernel, cfg):
        warnings.warn(f"flash_tuning: invalid entry {arch}/{kernel}/{block_d} in {path}: {cfg!r}; "
                      "using the packaged default", RuntimeWarning, stacklevel=3)
        return None
    return dict(cfg)


def _tuned_config(kernel: str, block_d: int, arch: str, tuning: Optional[str] = None) -> Optional[dict]:
    """The entry of the table `tuning` (default: the packaged one) for this class, if it has a valid one."""
    return _table_entry(tuning or str(_TUNED_FILE), kernel, block_d, arch)


def _gpu_config(kernel: str, block_d: int, dtype: torch.dtype) -> dict:
    """The default where no table names this architecture: the packaged FALLBACK_ARCH entry."""
    if kernel == "delta":
        return {"BLOCK_M": 64, "num_warps": 4}
    if dtype == torch.float32:  # a correctness path (ieee dots), not a training dtype
        return {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    cfg = _table_entry(str(_TUNED_FILE), kernel, max(block_d, 32), FALLBACK_ARCH)  # head dims <= 16: the 32 row
    if cfg is None:
        raise RuntimeError(f"flash_tuning: the packaged table {_TUNED_FILE} has no {FALLBACK_ARCH}/{kernel}/"
                           f"{max(block_d, 32)} entry")
    return cfg


# The interpreter's cost is per operation, not per element: few, mid-sized tiles. MAX_PROGRAMS caps the grid's block
# axis: under the interpreter every program, even one that exits at once, costs milliseconds, so one program per
# (sequence, head) walks all of its blocks (the kernels' grid-stride loop).
_INTERPRET_CONFIG = {"fwd": {"BLOCK_M": 64, "BLOCK_N": 64, "MAX_PROGRAMS": 1},
                     "dkdv": {"BLOCK_M": 64, "BLOCK_N": 64, "MAX_PROGRAMS": 1},
                     "dq": {"BLOCK_M": 64, "BLOCK_N": 64, "MAX_PROGRAMS": 1}, "delta": {"BLOCK_M": 64}}

@functools.lru_cache(maxsize=None)
def _cached_config(kernel: str, block_d: int, dtype: torch.dtype, arch: str, interpreted: bool,
                   tuning: Optional[str]) -> dict:
    # `tuning` (backends.attention_tuning) is part of the key so that pointing it elsewhere takes effect.
    if interpreted:
        return dict(_INTERPRET_CONFIG[kernel])
    if dtype != torch.float32:
        tuned = _tuned_config(kernel, block_d, arch, tuning)
        if tuned is not None:
            return tuned
    return _gpu_config(kernel, block_d, dtype)


def _arch(device: torch.device) -> str:
    return _arch_of(device.type, device.index)


@functools.lru_cache(maxsize=None)
def _arch_of(device_type: str, index: Optional[int]) -> str:
    # Once per device: this sits on every launch's path.
    if device_type != "cuda":
        return device_type
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def config(kernel: str, block_d: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The launch options of `kernel` ("fwd", "delta", "dkdv" or "dq") for this shape class on `device`: a fresh
    copy, since the launch pops launch-only keys (MAX_PROGRAMS) from it."""
    return dict(_cached_config(kernel, block_d, dtype, _arch(device), _backend.INTERPRET, _backend.attention_tuning))
