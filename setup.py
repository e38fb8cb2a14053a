"""Build of the `vjepa_fast._C` extension (metadata lives in pyproject.toml).

    pip install -e . --no-build-isolation      # torch must already be installed: the extension links against it

What gets built:
- csrc/*.cpp always (schemas, CPU kernels, the tiny Python module);
- csrc/*.cu as well when torch is a CUDA build and a CUDA toolkit (nvcc + headers) is found; no GPU is needed.
Environment switches:
- VJEPA_FAST_NO_EXT=1   build no extension at all (every op then runs its reference / Triton path);
- VJEPA_FAST_NO_CUDA=1  build the CPU kernels only;
- TORCH_CUDA_ARCH_LIST  CUDA targets, default "8.0;9.0+PTX" (A100, H100; PTX lets newer cards JIT-compile);
- CUDA_HOME             the toolkit; when unset we also try /usr/local/cuda-<torch's CUDA version> and /usr/local/cuda;
- MAX_JOBS              parallel compile jobs (with ninja; without ninja the files compile one by one).
"""
from __future__ import annotations

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_toolkit(path: str | None) -> bool:
    # A usable toolkit has nvcc *and* the runtime headers: an nvcc wrapper script on the PATH (as in /usr/local/bin)
    # makes torch guess a CUDA_HOME that has neither include/ nor lib64/.
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def _find_toolkit(torch_guess: str | None, cuda_version: str) -> str | None:
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), torch_guess,
                  f"/usr/local/cuda-{cuda_version}", "/usr/local/cuda"]
    for path in candidates:
        if _is_toolkit(path):
            return path
    return None


def _extension_modules():
    """Returns (ext_modules, cmdclass); prints one line saying what is built."""
    if _flag("VJEPA_FAST_NO_EXT"):
        print("vjepa_fast: VJEPA_FAST_NO_EXT=1 -> building no C++/CUDA extension (reference paths only)")
        return [], {}

    import torch
    from torch.utils import cpp_extension

    cpp_sources = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
    cu_sources = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "*.cu")))

    why_not_cuda = None
    toolkit = None
    if _flag("VJEPA_FAST_NO_CUDA"):
        why_not_cuda = "VJEPA_FAST_NO_CUDA=1"
    elif not torch.version.cuda:
        why_not_cuda = f"torch {torch.__version__} is not a CUDA build"
    else:
        toolkit = _find_toolkit(cpp_extension.CUDA_HOME, torch.version.cuda)
        if toolkit is None:
            why_not_cuda = "no CUDA toolkit found (set CUDA_HOME to a directory with bin/nvcc and include/)"
    with_cuda = why_not_cuda is None and bool(cu_sources)

    # -O3 everywhere. No fast-math on either side: the gather and EMA results are compared bit-for-bit-ish with
    # the reference (fast-math would allow reassociation and flush denormals).
    cxx_flags = ["-O3"]
    if with_cuda:
        # torch's helpers read the toolkit location from this module global and from the environment.
        cpp_extension.CUDA_HOME = toolkit
        os.environ["CUDA_HOME"] = toolkit
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        # torch's CUDA headers include cusparse.h etc., which pip-installed CUDA 13 wheels keep under
        # nvidia/cu13/include; CPATH (searched after every -I) finds them without shadowing the toolkit's headers.
        wheel_inc = os.path.join(os.path.dirname(torch.__file__), os.pardir, "nvidia", "cu13", "include")
        if os.path.isdir(wheel_inc):
            cpath = os.environ.get("CPATH", "")
            wheel_inc = os.path.normpath(wheel_inc)
            if wheel_inc not in cpath.split(os.pathsep):
                os.environ["CPATH"] = os.pathsep.join(p for p in (cpath, wheel_inc) if p)
        cxx_flags.append("-DVJEPA_FAST_WITH_CUDA")
        nvcc_flags = ["-O3", "-lineinfo", "-DVJEPA_FAST_WITH_CUDA"]
        ext = cpp_extension.CUDAExtension(
            "vjepa_fast._C", cpp_sources + cu_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags})
        print(f"vjepa_fast: building vjepa_fast._C: CPU + CUDA archs {os.environ['TORCH_CUDA_ARCH_LIST']} "
              f"(toolkit {toolkit}, torch {torch.__version__})")
    else:
        ext = cpp_extension.CppExtension("vjepa_fast._C", cpp_sources, extra_compile_args={"cxx": cxx_flags})
        print(f"vjepa_fast: building vjepa_fast._C: CPU only ({why_not_cuda or 'no .cu sources'})")

    use_ninja = cpp_extension.is_ninja_available()
    if not use_ninja:
        print("vjepa_fast: ninja not found, compiling one file at a time (pip install ninja for MAX_JOBS parallelism)")
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=use_ninja)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = _extension_modules()

# Packages (vjepa_fast*) and metadata come from pyproject.toml.
setup(ext_modules=ext_modules, cmdclass=cmdclass)
