"""The compiled extension vjepa_fast._C: it imports, its op schemas exist, and its CUDA kernels were compiled in
whenever the build could compile them (so CI fails loudly when the .cu sources silently dropped out)."""
import os
import sys
import warnings

import pytest
import torch

import vjepa_fast
from vjepa_fast import _ext

SCHEMAS = {
    "indexed_gather_add": "vjepa_fast::indexed_gather_add(Tensor src, Tensor src_rows, Tensor? pos, Tensor pos_rows, "
                          "bool unique_rows=False) -> Tensor",
    "indexed_gather_add_backward": "vjepa_fast::indexed_gather_add_backward(Tensor grad, Tensor src_rows, "
                                   "int num_src_rows, bool unique_rows) -> Tensor",
    "ema_update_": "vjepa_fast::ema_update_(Tensor(a!)[] targets, Tensor[] sources, float momentum, "
                   "Tensor? apply=None) -> ()",
}

needs_ext = pytest.mark.skipif(os.environ.get("VJEPA_FAST_NO_EXT") == "1",
                               reason="VJEPA_FAST_NO_EXT=1: the extension was deliberately not built")


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _toolkit_present():
    # Mirrors setup.py: a directory with bin/nvcc and include/cuda_runtime.h, from CUDA_HOME or the usual places.
    from torch.utils import cpp_extension

    for path in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME,
                 f"/usr/local/cuda-{torch.version.cuda}", "/usr/local/cuda"):
        if path and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
                os.path.join(path, "include", "cuda_runtime.h")):
            return True
    return False


@needs_ext
def test_extension_imports():
    assert _ext.load(), f"vjepa_fast._C did not import: {_ext.load_error()}"


@needs_ext
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_op_schemas(name):
    assert _ext.has_op(name)
    assert str(getattr(torch.ops.vjepa_fast, name).default._schema) == SCHEMAS[name]
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vjepa_fast::{name}", "CPU")


def test_has_op_unknown_name():
    assert not _ext.has_op("no_such_op")


@needs_ext
def test_cuda_kernels_compiled_when_possible():
    expected = bool(torch.version.cuda) and _toolkit_present() and not _flag("VJEPA_FAST_NO_CUDA")
    built = _ext.has_cuda_kernels()
    print(f"vjepa_fast._C CUDA kernels compiled: {built} (expected: {expected})")
    if expected:
        assert built, "torch has CUDA and a toolkit is present, but the CUDA kernels were not compiled in"
    for name in SCHEMAS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vjepa_fast::{name}", "CUDA") == built


def test_missing_extension_warns_once_and_reports(monkeypatch):
    # A fresh copy of the loader that cannot import _C (sys.modules entry None makes the import fail).
    import importlib.util

    spec = importlib.util.find_spec("vjepa_fast._ext")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    monkeypatch.setitem(sys.modules, "vjepa_fast._C", None)
    monkeypatch.delattr(vjepa_fast, "_C", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fresh.load() is False
        assert fresh.load() is False
        assert not fresh.has_cuda_kernels()
    msgs = [str(w.message) for w in caught if "vjepa_fast._C not built" in str(w.message)]
    assert len(msgs) == 1 and "pip install -e . --no-build-isolation" in msgs[0]
    assert "not built" in fresh.unavailable_reason(torch.device("cpu"))
