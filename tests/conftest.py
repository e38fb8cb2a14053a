import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Without a GPU the Triton kernels run under the interpreter: vjepa_fast reads TRITON_INTERPRET once, when it is
# imported (ops/_backend.py), and builds every kernel in that mode (ops/_triton.py), so set it before that.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Property tests draw the same examples on every machine and every run (a failure found once is found again, and CI
# cannot go red on a draw nobody can reproduce); the examples still cover the strategies, chosen from a fixed seed.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("reproducible", derandomize=True, print_blob=True)
    _hypothesis_settings.load_profile("reproducible")
except ImportError:  # hypothesis is a test extra; the property tests import it themselves
    pass


@pytest.fixture
def subprocess_env():
    """Environment for child processes (torchrun, python -m): the package importable, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def force_backend(op: str, name: str, monkeypatch) -> str:
    """Force backend `name` (or "auto") for `op` until the test ends, when the op's forced choice and its cache are
    restored: the one way a test picks a backend. C++ backends need the built extension (CUDA ones a GPU, else skip),
    Triton ones triton (skip without it). Environment variables cannot do this: they are read once, at import, so a
    test that sets one would silently compare a path with itself (tests/test_backend.py checks that a Triton backend
    forced here launches its kernels)."""
    from vjepa_fast import _ext
    from vjepa_fast.ops import _backend

    if name == "triton":
        pytest.importorskip("triton")
    if name in ("cpu", "cuda"):
        if os.environ.get("VJEPA_FAST_NO_EXT") == "1":
            pytest.skip("VJEPA_FAST_NO_EXT=1: extension not built")
        assert _ext.load(), f"vjepa_fast._C is not built ({_ext.load_error()}); run pip install -e . --no-build-isolation"
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs CUDA")
        assert _ext.has_cuda_kernels(), "CUDA is available but vjepa_fast._C has no CUDA kernels"
    registered = _backend._op(op)
    monkeypatch.setattr(registered, "forced", registered.forced)
    monkeypatch.setattr(registered, "chosen", {})
    registered.force(name)
    return name
