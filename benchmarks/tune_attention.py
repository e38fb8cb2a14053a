"""Tune the Triton varlen attention's block sizes on this GPU, one shape class (padded head dim) at a time.

For each class it times every candidate of `attention_candidates.py` on the shapes that class stands for (the
benchmark's ViT-L context / dense / predictor batches, and a ViT-H batch for the 128 class), checks each candidate's
output against an fp32 reference, and keeps the fastest correct one. The kernels are tuned in order: forward, then
the dK/dV kernel of the (default) split backward with that forward, then its dQ kernel; last, the atomic-dQ backward
with the chosen dK/dV tiles is timed once for comparison (VJEPA_FAST_FLASH_BWD=atomic selects it). The result is a
table in the format of `vjepa_fast/ops/flash_varlen_tuned.json`, keyed by this card's
compute capability, which the kernels read when `VJEPA_FAST_FLASH_TUNING` points at it (or once it is committed as
the packaged table).

    python benchmarks/tune_attention.py --out tuned.json [--budget 150]
    VJEPA_FAST_FLASH_TUNING=tuned.json pytest benchmarks/test_bench_attention.py --benchmark-only

The JSON is rewritten after every class, so a run cut short keeps what it finished; a class left untuned keeps the
shipped entry. Timing: triton.testing.do_bench medians (CUDA events), inputs drawn at random per class.

`--smoke` runs the same code path on the CPU under the Triton interpreter (fp16, tiny ragged batches, wall-clock
timing): it checks the plumbing, not speed (tests/test_bench_tools.py runs it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from attention_candidates import CANDIDATES, CONTEXT_LENS, DENSE_LENS, PREDICTOR_LENS  # noqa: E402

HEADS = 16
MAX_REL_ERR = 2e-2  # bf16 outputs land near 3e-3 (rel. Frobenius error); a wrong config is far above


# head dim -> shapes it is tuned on (the same batches as benchmarks/test_bench_attention.py, plus ViT-H for 80)
SHAPES = {
    24: {"predictor": PREDICTOR_LENS},
    64: {"context": CONTEXT_LENS, "dense": DENSE_LENS},
    80: {"vith_dense": [1568] * 8},
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


SMOKE_SHAPES = {24: {"ragged": [5, 17, 0, 33]}, 64: {"ragged": [9, 40]}, 80: {"ragged": [21]}}


class Case:
    """One packed batch with its fp32 reference output and gradient."""

    def __init__(self, lens: list[int], head_dim: int, seed: int, device: str, dtype: torch.dtype, heads: int):
        from vjepa_fast.ops.attention import varlen_attention_reference

        g = torch.Generator().manual_seed(seed)
        self.lens = lens
        self.cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
        T = sum(lens)
        self.max_len = max(lens)
        self.qkv = torch.randn(T, 3, heads, head_dim, generator=g).to(device, dtype)
        self.dout = torch.randn(T, heads, head_dim, generator=g).to(device, dtype)
        self.scale = head_dim ** -0.5
        x = self.qkv.float().requires_grad_(True)
        ref = varlen_attention_reference(x, self.cu)
        (self.ref_grad,) = torch.autograd.grad(ref, x, self.dout.float())
        self.ref_out = ref.detach()
        self.flops = 4 * sum(n * n for n in lens) * heads * head_dim


def _bench(fn) -> float:
    """Median milliseconds: CUDA events through do_bench on a GPU, a few wall-clock runs in --smoke."""
    if not torch.cuda.is_available():
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return sorted(times)[1]
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def _trial(tfv, kernel: str, cfg: dict, fixed: dict, cases: dict) -> dict:
    """Time one candidate over the class's shapes; error on any shape rejects it."""
    row = {"kernel": kernel, "config": cfg, "ms": {}, "rel_err": {}}
    configs = {**fixed, "dkdv" if kernel == "bwd_atomic" else kernel: cfg}  # the launches' options, not the table's
    for name, c in cases.items():
        args = (c.qkv, c.cu, c.max_len, c.scale)
        try:
            out, lse = tfv._forward(*args, configs=configs)
            if kernel == "fwd":
                row["rel_err"][name] = _rel(out, c.ref_out)
                row["ms"][name] = _bench(lambda: tfv._forward(*args, configs=configs))
            else:
                det = kernel != "bwd_atomic"  # dkdv and dq are tuned inside the split backward
                tfv._backend.set_attention_backward("split" if det else "atomic")
                bwd = (c.dout, c.qkv, out, lse, c.cu, c.max_len, c.scale, det)
                dqkv = tfv._backward(*bwd, configs=configs)
                row["rel_err"][name] = _rel(dqkv, c.ref_grad)
                row["ms"][name] = _bench(lambda: tfv._backward(*bwd, configs=configs))
            if c.qkv.is_cuda:
                torch.cuda.synchronize()
        except Exception as e:  # out of shared memory, a compile error: this candidate is out, not the run
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            return row
        finally:
            tfv._backend.set_attention_backward("auto")
    row["total_ms"] = sum(row["ms"].values())
    row["ok"] = max(row["rel_err"].values()) < MAX_REL_ERR
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON table to write")
    ap.add_argument("--budget", type=float, default=150.0, help="seconds; classes not started by then are skipped")
    ap.add_argument("--head-dims", type=int, nargs="*", default=list(SHAPES))
    ap.add_argument("--smoke", action="store_true", help="CPU plumbing check under TRITON_INTERPRET=1 (no timing)")
    args = ap.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are first imported
        device, dtype, heads, shapes = "cpu", torch.float16, 2, SMOKE_SHAPES
    elif torch.cuda.is_available():
        device, dtype, heads, shapes = "cuda", torch.bfloat16, HEADS, SHAPES
    else:
        print("tune_attention: needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    from vjepa_fast.ops import flash_tuning
    from vjepa_fast.ops import triton_flash_varlen as tfv

    t0 = time.time()
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        arch = f"sm_{major}{minor}"
    else:
        arch = "smoke"
    table: dict = {}
    trials: list = []
    result = {arch: table, "_meta": {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                     "torch": torch.__version__, "triton": __import__("triton").__version__,
                                     "dtype": str(dtype).removeprefix("torch."), "heads": heads,
                                     "shapes": {str(k): v for k, v in shapes.items()},
                                     "timer": "triton.testing.do_bench median (ms)"}, "_trials": trials}
    out = Path(args.out)
    for hd in args.head_dims:
        if time.time() - t0 > args.budget:
            print(f"Dh {hd}: skipped (budget of {args.budget:.0f}s spent)", flush=True)
            continue
        bd = str(tfv._block_d(hd))
        cases = {name: Case(lens, hd, hd * 100 + i, device, dtype, heads)
                 for i, (name, lens) in enumerate(shapes[hd].items())}
        fixed: dict = {}
        for kernel in ("fwd", "dkdv", "dq"):
            best = None
            default = flash_tuning._gpu_config(kernel, int(bd), torch.bfloat16)
            cands = CANDIDATES[kernel][hd] if hd in CANDIDATES[kernel] else [default]
            # smoke: the first two and one with each kernel switch (EXP2_POLY), so every code path runs once
            smoke = cands[:2] + [c for c in cands[2:] if "EXP2_POLY" in c][:1]
            for cfg in (smoke if args.smoke else cands):
                row = _trial(tfv, kernel, cfg, fixed, cases)
                row["head_dim"] = hd
                row["default"] = cfg == default
                trials.append(row)
                note = row.get("error") or (" ".join(f"{n} {ms:.3f}ms" for n, ms in row["ms"].items())
                                            + f" err {max(row['rel_err'].values()):.1e}"
                                            + ("" if row["ok"] else " REJECTED"))
                print(f"Dh {hd} {kernel:4s} {json.dumps(cfg)}{' (default)' if row['default'] else ''}: {note}",
                      flush=True)
                if row.get("ok") and (best is None or row["total_ms"] < best["total_ms"]):
                    best = row
            if best is None:  # nothing correct: keep the shipped default and say so
                print(f"Dh {hd} {kernel}: no candidate passed; keeping the shipped default", flush=True)
                continue
            table.setdefault(kernel, {})[bd] = best["config"]
            dflt = next((r for r in trials if r["head_dim"] == hd and r["kernel"] == kernel and r["default"]
                         and r.get("ok")), None)
            gain = f", {dflt['total_ms'] / best['total_ms']:.2f}x the default" if dflt else ""
            print(f"Dh {hd} {kernel}: best {json.dumps(best['config'])} {best['total_ms']:.3f} ms{gain}", flush=True)
            fixed[kernel] = best["config"]
        dkdv = fixed.get("dkdv", flash_tuning._gpu_config("dkdv", int(bd), torch.bfloat16))
        atomic = _trial(tfv, "bwd_atomic", dkdv,
                        {k: v for k, v in fixed.items() if k != "dkdv"}, cases)
        atomic.update(head_dim=hd, default=False)
        trials.append(atomic)
        split_ms = min((r["total_ms"] for r in trials if r["head_dim"] == hd and r["kernel"] == "dq" and r.get("ok")),
                       default=None)
        if atomic.get("ok") and split_ms:
            print(f"Dh {hd} backward: split {split_ms:.3f} ms, atomic {atomic['total_ms']:.3f} ms", flush=True)
        del cases
        if device == "cuda":
            torch.cuda.empty_cache()
        out.write_text(json.dumps(result, indent=1))
    out.write_text(json.dumps(result, indent=1))
    print(f"tune_attention: {len(trials)} trials in {time.time() - t0:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
