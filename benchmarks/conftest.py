"""Shared benchmark fixtures, kept minimal so that every benchmark file stays self-contained.

- `device` / `on_gpu`: CUDA when present, else the CPU (benchmarks pick real shapes on a GPU, small ones on the CPU);
- `roofline`: this machine's measured copy GB/s and bf16 matmul TFLOP/s (benchmarks/roofline.py), once per session
  (or read from the file VJEPA_FAST_ROOFLINE_JSON names, which gpu_check.sh writes once for all its runs);
- `results_dir`: where a benchmark writes files of its own (tables), never over the tracked benchmarks/results/:
  `--bench-results DIR`, else $VJEPA_FAST_BENCH_RESULTS, else .benchmarks/results (gitignored); a result worth keeping
  is copied into benchmarks/results/ by hand, with its date and machine in the name;
- a pytest-benchmark hook that writes the card, the software versions and the measured roofline into the JSON's
  machine_info, so a saved result says what it ran on (benchmarks/render_summary.py prints them).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

_MEASURED: dict = {}  # the roofline, once measured in this session (for machine_info)
RESULTS_ENV = "VJEPA_FAST_BENCH_RESULTS"


def pytest_addoption(parser):
    parser.addoption("--bench-results", default=None, metavar="DIR",
                     help=f"folder for the benchmarks' own result files (default ${RESULTS_ENV}, else "
                          ".benchmarks/results, gitignored)")


@pytest.fixture(scope="session")
def results_dir(request) -> Path:
    """The folder a benchmark writes its own result files into (created)."""
    chosen = request.config.getoption("--bench-results") or os.environ.get(RESULTS_ENV)
    path = Path(chosen).expanduser().resolve() if chosen else ROOT / ".benchmarks" / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _roofline_module():
    spec = importlib.util.spec_from_file_location("vjepa_fast_bench_roofline", HERE / "roofline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread():
    """CPU numbers are a smoke test on shared machines: with two intra-op threads, one descheduled thread stalls every
    parallel region for a whole time slice and rounds jump by 100x. One thread keeps them steady."""
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def on_gpu(device) -> bool:
    return device.type == "cuda"


@pytest.fixture(scope="session")
def roofline(device) -> dict:
    """{'device', 'copy_gb_per_s', 'matmul_tflops' (None on the CPU), 'matmul_shape'}, measured once."""
    if not _MEASURED:
        saved = os.environ.get("VJEPA_FAST_ROOFLINE_JSON")  # measured earlier on this machine (gpu_check.sh)
        if saved and Path(saved).is_file():
            _MEASURED.update(json.loads(Path(saved).read_text()))
        else:
            _MEASURED.update(_roofline_module().measure(device))
    return dict(_MEASURED)


def _versions() -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


@pytest.hookimpl(optionalhook=True)  # only called when pytest-benchmark is installed
def pytest_benchmark_update_machine_info(config, machine_info):
    if torch.cuda.is_available():
        machine_info["card"] = torch.cuda.get_device_name(0)
        machine_info["gpu_count"] = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        machine_info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    else:
        machine_info["card"] = "cpu"
    machine_info.update(_versions())
    # Which block sizes the Triton attention ran with: a freshly tuned table, the packaged one, or the defaults.
    tuned = os.environ.get("VJEPA_FAST_FLASH_TUNING")
    packaged = ROOT / "vjepa_fast" / "ops" / "flash_varlen_tuned.json"
    machine_info["attention_block_sizes"] = (f"tuned here ({Path(tuned).name})" if tuned
                                             else "packaged table" if packaged.exists() else "built-in defaults")
    if _MEASURED:
        machine_info["roofline"] = dict(_MEASURED)
