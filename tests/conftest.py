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
TRITON_INTERPRETER_FILES = ("test_attention.py", "test_l1_loss.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: 0 if item.path.name in TRITON_INTERPRETER_FILES else 1)


@pytest.fixture
def subprocess_env():
    """Environment for child processes (torchrun, python -m): the package importable, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
