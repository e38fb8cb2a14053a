"""Compile the Triton attention kernels for a GPU architecture on a machine without a GPU, and report what ptxas says.

Why: GPU time is scarce. Every block-size candidate that `benchmarks/tune_attention.py` will time on a GPU is compiled
here first for the target (default sm_90), so a candidate that does not compile, spills registers or needs more
shared memory than the card has is dropped before any GPU time is spent on it.

    python benchmarks/aot_compile_attention.py                  # the shipped table + the tuning candidates, sm_90
    python benchmarks/aot_compile_attention.py --only-table     # just the shipped table
    python benchmarks/aot_compile_attention.py --json out.json
    python benchmarks/aot_compile_attention.py --only-table --fp64-scalars --with-l1   # what tests/ runs

`--fp64-scalars` types the float arguments as fp64, as Inductor passes Python floats to user Triton kernels under
torch.compile; `--with-l1` also compiles the fused L1 loss kernel.

Output: one row per (kernel, head-dim class, config): registers per thread, spill stores/loads and shared memory.
Exit status 1 when a shipped-table entry fails to compile or spills.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from vjepa_fast.ops import flash_tuning  # noqa: E402
from vjepa_fast.ops import triton_flash_varlen as tfv  # noqa: E402
from attention_candidates import CANDIDATES, HEAD_DIMS  # noqa: E402


SMEM_LIMIT = {90: 227 * 1024, 80: 163 * 1024}  # opt-in shared memory per block (bytes)

_POINTERS = {"QKV", "O", "LSE", "CU", "DO", "DELTA", "DQKV", "DQ_ACC"}


def _stride_values(head_dim: int, heads: int) -> dict:
    """The stride arguments a real launch passes for contiguous ViT tensors (qkv [T, 3, H, Dh], out / dout
    [T, H, Dh], dqkv like qkv): row and head strides divided by ALIGN, as `_forward` / `_backward` do."""
    a = tfv._align(3 * heads * head_dim, heads * head_dim, head_dim)
    qkv = (3 * heads * head_dim // a, heads * head_dim // a, head_dim // a, 1)
    out = (heads * head_dim // a, head_dim // a, 1)
    vals = dict(zip(("s_qt", "s_q3", "s_qh", "s_qd"), qkv))
    vals.update(zip(("s_ot", "s_oh", "s_od"), out))
    vals.update(zip(("s_dt", "s_dh", "s_dd"), out))
    vals.update(zip(("s_gt", "s_g3", "s_gh", "s_gd"), qkv))
    return vals, a


def _signature(fn, dtype: str, head_dim: int, heads: int, delta: bool,
               float_type: str = "fp32") -> tuple[dict, dict, dict, int]:
    """Argument types as Triton's launcher would specialise them: 32-bit ints, an int equal to 1 becomes a constant,
    pointers and ints divisible by 16 carry that attribute. The delta kernel sees unscaled strides."""
    vals, align = _stride_values(head_dim, heads)
    if delta:
        vals.update(s_ot=heads * head_dim, s_oh=head_dim, s_dt=heads * head_dim, s_dh=head_dim)
    vals.update(H=heads, T=24 * 1568 + 1)
    sig, attrs, const = {}, {}, {}
    fp32_ptrs = {"LSE", "DELTA", "DQ_ACC"}
    for i, name in enumerate(fn.arg_names):
        if name in _POINTERS:
            sig[name] = "*i32" if name == "CU" else ("*fp32" if name in fp32_ptrs else f"*{dtype}")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("qk_scale", "sm_scale"):
            sig[name] = float_type  # Triton passes Python floats as fp32; Inductor may pass them as fp64
        elif name in vals:
            if vals[name] == 1:
                sig[name], const[name] = "constexpr", 1
            else:
                sig[name] = "i32"
                if vals[name] % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs, const, align


def _ptxas(ptx: str, arch: str) -> dict:
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "k.ptx"
        f.write_text(ptx)
        r = subprocess.run([str(ptxas), f"-arch={arch}", "-v", str(f), "-o", str(Path(d) / "k.cubin")],
                           capture_output=True, text=True)
    text = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(spill.group(1)) if spill else None,
            "spill_loads": int(spill.group(2)) if spill else None,
            "ptxas_ok": r.returncode == 0}


def compile_one(kernel: str, head_dim: int, cfg: dict, dtype: str = "bf16", cc: int = 90,
                atomic_dq: bool = True, float_type: str = "fp32") -> dict:
    fn = {"fwd": tfv._fwd_kernel, "dkdv": tfv._bwd_dkdv_kernel, "dq": tfv._bwd_dq_kernel,
          "delta": tfv._bwd_delta_kernel}[kernel]
    fn = getattr(fn, "fn", fn) if not hasattr(fn, "arg_names") else fn
    cfg = dict(cfg)
    opts = {"num_warps": cfg.pop("num_warps", 4), "num_stages": cfg.pop("num_stages", 3)}
    cfg.pop("MAX_PROGRAMS", None)
    if kernel == "fwd":  # the table's switch becomes the kernel's constexprs, as _forward passes them
        cfg.update(tfv._poly_switch(cfg.get("EXP2_POLY", 0), cfg["BLOCK_N"], getattr(torch, {
            "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype])))
    sig, attrs, const, align = _signature(fn, dtype, head_dim, 16, kernel == "delta", float_type)
    const.update(HEAD_DIM=head_dim, BLOCK_D=tfv._block_d(head_dim), **cfg)
    if kernel != "delta":
        const.update(DOT_PREC=None, ALIGN=align)
    if kernel == "dkdv":
        const["ATOMIC_DQ"] = atomic_dq
    for name in const:
        sig[name] = "constexpr"
    row = {"kernel": kernel, "head_dim": head_dim, "config": {**cfg, **opts}, "atomic_dq": atomic_dq}
    try:
        k = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", cc, 32), options=opts)
    except Exception as e:  # a config that cannot compile (too much shared memory, unsupported shape) is a result
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return row
    row["shared"] = k.metadata.shared
    row.update(_ptxas(k.asm["ptx"], f"sm_{cc}a"))
    limit = SMEM_LIMIT.get(cc, 99 * 1024)
    row["ok"] = bool(row["ptxas_ok"] and row["spill_stores"] == 0 and row["shared"] <= limit)
    return row


def compile_l1(cc: int = 90) -> dict:
    """The fused L1 loss kernel at the ViT-L width (its only float, eps, is a compile-time constant)."""
    from vjepa_fast.ops import _triton
    from vjepa_fast.ops import l1_loss as L

    kernel = _triton.load("triton_l1_loss")._l1_fwd_kernel
    sig = {"z_ptr": "*bf16", "h_ptr": "*bf16", "rows_ptr": "*i64", "w_ptr": "*fp32", "sgn_ptr": "*bf16",
           "partial_ptr": "*fp32", "R": "i32", "M": "i32", "D": "i32", "stride_z": "i32", "stride_h": "i32",
           "stride_sgn": "i32", "EPS": "constexpr", "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"}
    const = {"EPS": L.LN_EPS, "BLOCK_R": 4, "BLOCK_D": 1024}
    row = {"kernel": "l1_loss", "head_dim": 1024, "config": {"BLOCK_R": 4, "num_warps": 8}}
    try:
        k = triton.compile(ASTSource(kernel, sig, const), target=GPUTarget("cuda", cc, 32),
                           options={"num_warps": 8})
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return row
    row["shared"] = k.metadata.shared
    row.update(_ptxas(k.asm["ptx"], f"sm_{cc}a"))
    row["ok"] = bool(row["ptxas_ok"] and row["spill_stores"] == 0)
    return row


def shipped_configs() -> list[tuple[str, int, dict]]:
    out = []
    for kernel in ("fwd", "dkdv", "dq", "delta"):
        for hd in HEAD_DIMS:
            out.append((kernel, hd, flash_tuning._gpu_config(kernel, tfv._block_d(hd), torch.bfloat16)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cc", type=int, default=90, help="compute capability, e.g. 90 (H100/H200) or 80 (A100)")
    ap.add_argument("--only-table", action="store_true", help="compile only the shipped block-size table")
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--fp64-scalars", action="store_true", help="float arguments typed fp64, as under Inductor")
    ap.add_argument("--with-l1", action="store_true", help="also compile the fused L1 loss kernel")
    ap.add_argument("--kernel", help="only this kernel's candidates (fwd, dkdv, dq)")
    ap.add_argument("--head-dim", type=int, help="only the candidates of this head-dim class (24, 64, 80)")
    args = ap.parse_args()
    ftype = "fp64" if args.fp64_scalars else "fp32"
    if tfv.interpreted():
        print("unset TRITON_INTERPRET: the interpreter builds no GPU code", file=sys.stderr)
        return 2
    rows, bad = [], 0
    todo = [(k, hd, c, True) for k, hd, c in shipped_configs()]
    n_shipped = len(todo) + 3  # with the deterministic variant and the forward's FMA-exp2 switches below
    todo.append(("dkdv", 64, flash_tuning._gpu_config("dkdv", 64, torch.bfloat16), False))  # the deterministic variant
    for switch, warps in ((1, 4), (2, 8)):  # the forward's FMA-exp2 switch: a half, a quarter of each key block
        fwd24 = flash_tuning._gpu_config("fwd", 32, torch.bfloat16)
        todo.append(("fwd", 24, {**fwd24, "BLOCK_N": 64, "num_warps": warps, "EXP2_POLY": switch}, True))
    if not args.only_table:
        todo += [(k, hd, c, True) for k, per_hd in CANDIDATES.items() for hd, cfgs in per_hd.items() for c in cfgs
                 if args.kernel in (None, k) and args.head_dim in (None, hd)]
    print(f"triton {triton.__version__}, sm_{args.cc}: {len(todo)} compiles", flush=True)
    for i, (kernel, hd, cfg, atomic) in enumerate(todo):
        row = compile_one(kernel, hd, cfg, cc=args.cc, atomic_dq=atomic, float_type=ftype)
        row["shipped"] = i < n_shipped
        rows.append(row)
        status = row.get("error") or (f"regs {row['registers']:3d} spill {row['spill_stores']}/{row['spill_loads']} "
                                      f"smem {row['shared'] // 1024} KiB" + ("" if row["ok"] else "  <-- rejected"))
        print(f"{'table' if row['shipped'] else 'cand '} {kernel:5s} Dh {hd:3d} {json.dumps(row['config'])}: "
              f"{status}", flush=True)
        if row["shipped"] and not row.get("ok"):
            bad += 1
    if args.with_l1:
        row = compile_l1(args.cc)
        rows.append(row)
        print(f"l1_loss: {row.get('error') or ('ok' if row['ok'] else 'spills')}", flush=True)
        bad += 0 if row.get("ok") else 1
    if args.json:
        Path(args.json).write_text(json.dumps({"triton": triton.__version__, "cc": args.cc, "rows": rows}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    raise SystemExit(main())
