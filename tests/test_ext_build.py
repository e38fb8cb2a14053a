"""The compiled extension vjepa_fast._C: it imports, its op schemas exist, its CUDA kernels were compiled in
whenever the build was meant to compile them, and (opt-in, CI) the CUDA sources compile on a machine without a GPU,
so CI fails loudly when the .cu sources break or silently drop out."""
import glob
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

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


def _gpu_present():
    # Mirrors scripts/setup.sh, which skips the CUDA kernels on a machine without an NVIDIA GPU unless
    # VJEPA_FAST_NO_CUDA=0 asks for them.
    if os.path.exists("/dev/nvidia0"):
        return True
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def _cuda_build_wanted():
    if _flag("VJEPA_FAST_NO_CUDA"):
        return False
    # an explicit VJEPA_FAST_NO_CUDA=0 compiles them without a GPU too
    return os.environ.get("VJEPA_FAST_NO_CUDA", "").strip() != "" or _gpu_present()


@needs_ext
def test_cuda_kernels_compiled_when_possible():
    expected = bool(torch.version.cuda) and _toolkit_present() and _cuda_build_wanted()
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


ROOT = Path(__file__).resolve().parents[1]
CUDA_CHECK_PY = """
import sys, torch
torch.ops.load_library(sys.argv[1])
names = sys.argv[2:]
missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(f"vjepa_fast::{n}", "CUDA")]
assert not missing, f"no CUDA kernel registered for {missing}"
print("CUDA kernels registered:", ", ".join(names))
"""


@pytest.mark.skipif(not _flag("VJEPA_FAST_CUDA_COMPILE_CHECK"),
                    reason="opt-in, minutes of nvcc: VJEPA_FAST_CUDA_COMPILE_CHECK=1 (CI sets it) compiles csrc/*.cu")
def test_cuda_sources_compile(tmp_path):
    # The project's rule: the CUDA sources compile on a machine without a GPU. setup.py builds the extension with its
    # CUDA kernels into a scratch folder (one arch is enough to compile every line), and a fresh process (this one
    # already holds the installed _C's registrations) loads the result and finds a CUDA kernel for every op.
    assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build: the CUDA sources cannot compile"
    assert _toolkit_present(), "no CUDA toolkit (set CUDA_HOME to a directory with bin/nvcc and include/)"
    env = dict(os.environ, VJEPA_FAST_NO_CUDA="0",
               TORCH_CUDA_ARCH_LIST=os.environ.get("VJEPA_FAST_CUDA_CHECK_ARCH", "8.0"))
    env.pop("VJEPA_FAST_NO_EXT", None)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                            "--build-temp", str(tmp_path / "tmp")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    assert "CPU + CUDA archs" in build.stdout, build.stdout[-3000:]
    built = glob.glob(str(tmp_path / "lib" / "vjepa_fast" / "_C*.so"))
    assert len(built) == 1, built
    check = subprocess.run([sys.executable, "-c", CUDA_CHECK_PY, built[0], *sorted(SCHEMAS)],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, (check.stdout + check.stderr)[-3000:]
