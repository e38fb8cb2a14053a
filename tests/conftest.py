import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Without a GPU the Triton kernels run under the interpreter, which Triton reads when it is first imported and when
# each kernel is defined: set it before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests that run Triton kernels under the interpreter go first: once inductor has compiled a graph in this process,
# interpreted kernels can fail with "Cannot call @triton.jit'd outside of the scope of a kernel".
TRITON_INTERPRETER_FILES = ("test_attention.py", "test_l1_loss.py", "test_rope.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: 0 if item.path.name in TRITON_INTERPRETER_FILES else 1)


@pytest.fixture
def subprocess_env():
    """Environment for child processes (torchrun, python -m): the package importable, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def force_backend(op: str, name: str, monkeypatch) -> str:
    """Force `name` for `op` in one test; C++ backends need the built extension (CUDA ones a GPU, else skip)."""
    from vjepa_fast import _ext

    if name in ("cpu", "cuda"):
        if os.environ.get("VJEPA_FAST_NO_EXT") == "1":
            pytest.skip("VJEPA_FAST_NO_EXT=1: extension not built")
        assert _ext.load(), f"vjepa_fast._C is not built ({_ext.load_error()}); run pip install -e . --no-build-isolation"
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs CUDA")
        assert _ext.has_cuda_kernels(), "CUDA is available but vjepa_fast._C has no CUDA kernels"
    monkeypatch.setenv(f"VJEPA_FAST_{op.upper()}_BACKEND", name)
    return name
