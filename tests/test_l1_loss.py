"""Fused L1 target loss: the Triton path against an fp64 truth, with the plain definition as the yardstick.

Without CUDA the kernel runs under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before vjepa_fast
is imported; ops/_triton.py builds the kernel in that mode). With CUDA the same tests run the compiled kernel on the
GPU.
"""
import os
import subprocess
import sys
import textwrap

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from conftest import force_backend  # noqa: E402
from kernel_hooks import poison_outputs  # noqa: E402

from vjepa_fast.ops import _backend, _triton  # noqa: E402
from vjepa_fast.ops import l1_loss as L  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS32 = 2.0 ** -24
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def triton_backend(monkeypatch):
    force_backend(L.OP, "triton", monkeypatch)


def _kernel():
    return _triton.load("triton_l1_loss")


def _inputs(R, D, M, dtype=torch.float32, h_dtype=None, seed=0, rows_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(R, D, generator=g).to(dtype)
    # Targets with a non-zero mean and non-unit spread, so the normalisation matters.
    h = (torch.randn(M, D, generator=g) * 3.0 + torch.randn(M, 1, generator=g) * 2.0).to(h_dtype or dtype)
    rows = torch.randint(0, M, (R,), generator=g).to(rows_dtype)
    w = torch.rand(R, generator=g) + 0.05
    return [t.to(DEVICE) for t in (z, h, rows, w)]


def _truth(z, h, rows, w, eps=L.LN_EPS):
    """fp64 loss, fp64 gradient (for unit upstream grad) and the fp64 difference z - LN(h)[rows]."""
    target = F.layer_norm(h.double(), (h.shape[1],), eps=eps)[rows.long()]
    diff = z.double() - target
    w64 = w.double()[:, None]
    return (w64 * diff.abs()).sum(), w64 * torch.sign(diff), diff


def _loss_and_grad(fn, z, h, rows, w, upstream):
    z = z.detach().clone().requires_grad_(True)
    loss = fn(z, h, rows, w)
    loss.backward(torch.tensor(upstream, device=z.device))
    return loss.detach(), z.grad


def _check_against_truth(z, h, rows, w, upstream=0.37):
    loss64, grad64, diff64 = _truth(z, h, rows, w)
    grad64 = grad64 * upstream
    loss, grad = _loss_and_grad(L.l1_target_loss, z, h, rows, w, upstream)
    ref_loss, ref_grad = _loss_and_grad(L.l1_target_loss_reference, z, h, rows.long(), w, upstream)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert grad.dtype == z.dtype and grad.shape == z.shape
    # docs/testing.md: at most twice the plain definition's own error against fp64; the floor covers the summation order of a
    # few fp32 ulps when the reference happens to be nearly exact.
    floor = 16 * EPS32 * abs(float(loss64)) + 1e-30
    assert abs(float(loss) - float(loss64)) <= 2 * abs(float(ref_loss) - float(loss64)) + floor
    # Where z - LN(h) is within rounding of zero, either sign is right: compare the rest, in norm (both paths form
    # w * sign * upstream in fp32 and round once to z's dtype).
    clear = diff64.abs() > 1e-4
    err = (grad.double() - grad64)[clear].norm()
    ref_err = (ref_grad.double() - grad64)[clear].norm()
    assert err <= 2 * ref_err + 1e-7 * grad64.norm() + 1e-30
    assert int(clear.sum()) >= clear.numel() - max(2, clear.numel() // 1000)  # the exclusion stays negligible


@pytest.mark.parametrize("D", [1, 7, 96, 1000, 1024])
@pytest.mark.parametrize("R", [0, 1, 13, 257])
def test_matches_fp64_fp32(triton_backend, R, D):
    _check_against_truth(*_inputs(R, D, M=max(2, R // 3), seed=R * 7919 + D))


@pytest.mark.parametrize("R,D", [(1, 1), (13, 7), (17, 96), (257, 1000), (40, 1024), (5, 1408), (3, 2048)])
def test_matches_fp64_fp16(triton_backend, R, D):
    _check_against_truth(*_inputs(R, D, M=max(2, R // 3), dtype=torch.float16, seed=R + D))


@pytest.mark.parametrize("z_dtype,h_dtype", [(torch.float32, torch.float16), (torch.float16, torch.float32)])
def test_mixed_dtypes_and_int32_rows(triton_backend, z_dtype, h_dtype):
    _check_against_truth(*_inputs(31, 96, M=4, dtype=z_dtype, h_dtype=h_dtype, rows_dtype=torch.int32, seed=5))


@pytest.mark.parametrize("R,D", [(1, 1), (13, 7), (17, 96), (33, 257), (257, 1000)])
def test_kernel_writes_every_element(R, D):
    """Poisoned buffers: any element or partial sum the kernel fails to write stays NaN (the loss is their sum)."""
    _kernel()  # registers the op
    z, h, rows, w = _inputs(R, D, M=5, seed=R + 3 * D)
    with poison_outputs():
        loss, sgn = torch.ops.vjepa_fast.l1_target_loss_fwd(z, h, rows, w, L.LN_EPS)
    loss64, grad64, diff64 = _truth(z, h, rows, w)
    assert torch.isfinite(sgn).all() and torch.isfinite(loss)
    clear = diff64.abs() > 1e-4
    assert torch.equal(sgn.double()[clear], torch.sign(diff64)[clear])  # the kernel stores sign(z - LN(h)[rows])
    assert abs(float(loss) - float(loss64)) <= 1e-5 * float(loss64)


def test_strided_rows(triton_backend):
    z, h, rows, w = _inputs(19, 100, M=6, seed=11)
    z_wide = torch.randn(19, 130, device=z.device)
    z_wide[:, 7:107] = z
    h_wide = torch.randn(6, 150, device=z.device)
    h_wide[:, 20:120] = h
    z_view, h_view = z_wide[:, 7:107], h_wide[:, 20:120]  # row strides 130 and 150
    loss, grad = _loss_and_grad(L.l1_target_loss, z_view, h_view, rows, w, 1.0)
    ref, ref_grad = _loss_and_grad(L.l1_target_loss, z, h, rows, w, 1.0)
    assert float(loss) == float(ref) and torch.equal(grad, ref_grad)


def test_sign_of_zero_is_zero(triton_backend):
    """Where z equals the normalised target exactly, the gradient is 0 (torch's abs), not +-w."""
    # Constant target rows normalise to exactly 0; z is exactly 0 in a random half of the entries.
    R, D = 13, 64
    z, _, rows, w = _inputs(R, D, M=3, seed=2)
    h = torch.tensor([[1.5], [-4.0], [0.25]], device=z.device).expand(3, D).contiguous()
    zero = torch.rand(R, D, device=z.device) < 0.5
    z = torch.where(zero, torch.zeros_like(z), z)
    _, grad = _loss_and_grad(L.l1_target_loss, z, h, rows, w, 1.0)
    _, ref_grad = _loss_and_grad(L.l1_target_loss_reference, z, h, rows, w, 1.0)
    assert (grad[zero] == 0).all()
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)


def test_nan_propagates(triton_backend):
    z, h, rows, w = _inputs(13, 96, M=4, seed=3)
    z[4, 17] = float("nan")
    loss, grad = _loss_and_grad(L.l1_target_loss, z, h, rows, w, 1.0)
    assert torch.isnan(loss)
    assert torch.isnan(grad[4, 17]) and int(torch.isnan(grad).sum()) == 1


def test_unchecked_out_of_range_rows_give_nan_not_a_crash(triton_backend):
    z, h, rows, w = _inputs(13, 96, M=4, seed=4)
    rows[5] = 4
    rows[9] = -1
    loss, grad = _loss_and_grad(lambda *a: L.l1_target_loss(*a, check_range=False), z, h, rows, w, 1.0)
    assert torch.isnan(loss)
    bad = torch.isnan(grad).all(dim=1)
    assert bad[5] and bad[9] and int(bad.sum()) == 2 and not torch.isnan(grad[~bad]).any()


def test_validation_errors(triton_backend):
    z, h, rows, w = _inputs(13, 96, M=4, seed=6)
    with pytest.raises(ValueError, match="z \\[R, D\\] and h \\[M, D\\]"):
        L.l1_target_loss(z, h[:, :95], rows, w)
    with pytest.raises(ValueError, match="z \\[R, D\\]"):
        L.l1_target_loss(z[0], h, rows, w)
    with pytest.raises(ValueError, match="rows and row_weight"):
        L.l1_target_loss(z, h, rows[:12], w)
    with pytest.raises(ValueError, match="rows and row_weight"):
        L.l1_target_loss(z, h, rows, w[:, None])
    with pytest.raises(ValueError, match="int32/int64"):
        L.l1_target_loss(z, h, rows.float(), w)
    with pytest.raises(ValueError, match="z must be a floating-point"):
        L.l1_target_loss(z.long(), h, rows, w)
    with pytest.raises(ValueError, match="h on meta"):
        L.l1_target_loss(z, h.to("meta"), rows, w)
    with pytest.raises(ValueError, match="row_weight on meta"):
        L.l1_target_loss(z, h, rows, w.to("meta"))
    for bad in (4, -1):
        r = rows.clone()
        r[7] = bad
        with pytest.raises(IndexError, match="out of range"):
            L.l1_target_loss(z, h, r, w, check_range=True)
    with pytest.raises(RuntimeError, match="D <= "):
        big = torch.randn(1, L.MAX_D + 1, device=z.device)
        L.l1_target_loss(big, big, rows[:1] * 0, w[:1])
    for eps in (-1.0, 0.0, float("nan"), float("inf")):  # LayerNorm's eps: <= 0 gives NaN for a constant row
        with pytest.raises(ValueError, match="eps must be a positive"):
            L.l1_target_loss(z, h, rows, w, eps=eps)


def test_backend_choice(monkeypatch):
    def choice(device, D):
        return L.L1_LOSS.choose((device, D)).name

    assert choice("cpu", 96) == "reference"  # the interpreter is never chosen automatically
    assert choice("cuda", 96) == "triton"
    assert choice("cuda", L.MAX_D + 1) == "reference"
    force_backend(L.OP, "triton", monkeypatch)
    if DEVICE == "cpu":
        assert choice("cpu", 96) == "triton"  # forced: the interpreter is on in this process without CUDA
    else:
        with pytest.raises(RuntimeError, match="cannot run on"):
            choice("cpu", 96)
    with pytest.raises(RuntimeError, match="cannot run on .*meta"):
        choice("meta", 96)


def test_weights_and_target_get_no_gradient(triton_backend):
    z, h, rows, w = _inputs(13, 96, M=4, seed=8)
    h.requires_grad_(True)
    w.requires_grad_(True)
    z.requires_grad_(True)
    L.l1_target_loss(z, h, rows, w).backward()
    assert z.grad is not None and h.grad is None and w.grad is None


def test_opcheck():
    _kernel()
    z, h, rows, w = _inputs(13, 96, M=4, seed=9)
    torch.library.opcheck(torch.ops.vjepa_fast.l1_target_loss_fwd.default, (z.requires_grad_(True), h, rows, w,
                                                                           L.LN_EPS))


def test_torch_compile_matches_eager(triton_backend):
    # aot_eager on CPU keeps this quick (no C++ build) and still exercises dynamo, fake tensors and the autograd
    # registration; on a GPU inductor traces into the triton_op.
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"

    def f(z, h, rows, w):
        return L.l1_target_loss(z, h, rows, w, check_range=False) * 2.0

    compiled = torch.compile(f, backend=backend, fullgraph=True, dynamic=True)
    for R in (13, 29):  # two sizes: the packed row count changes every step
        z, h, rows, w = _inputs(R, 96, M=7, seed=R)
        loss, grad = _loss_and_grad(compiled, z, h, rows, w, 0.37)
        ref_loss, ref_grad = _loss_and_grad(f, z, h, rows, w, 0.37)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)


def test_first_call_inside_fullgraph_compile(subprocess_env):
    """In a fresh process the op is built during dynamo's trace, without a graph break."""
    script = textwrap.dedent(f"""
        import torch
        from vjepa_fast.ops import _backend, l1_loss as L
        _backend.set_backend(L.OP, "triton")
        dev = {DEVICE!r}
        z = torch.randn(13, 96, device=dev, requires_grad=True)
        h, w = torch.randn(5, 96, device=dev), torch.rand(13, device=dev) + 0.1
        rows = torch.randint(0, 5, (13,), device=dev)
        backend = "inductor" if dev == "cuda" else "aot_eager"
        f = torch.compile(lambda *a: L.l1_target_loss(*a, check_range=False), backend=backend, fullgraph=True)
        f(z, h, rows, w).backward()
        z_ref = z.detach().clone().requires_grad_(True)
        ref = L.l1_target_loss_reference(z_ref, h, rows, w)
        ref.backward()
        assert torch.allclose(f(z, h, rows, w), ref, rtol=1e-5), "loss"
        assert torch.equal(z.grad, z_ref.grad), "grad"
        print("ok")
    """)
    env = dict(subprocess_env)
    if DEVICE == "cpu":
        env["TRITON_INTERPRET"] = "1"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@gpu
@needs_cuda
@pytest.mark.parametrize("R,D", [(4099, 1024), (257, 1408), (33, 2048)])
def test_bf16_on_gpu(triton_backend, R, D):
    _check_against_truth(*_inputs(R, D, M=max(2, R // 3), dtype=torch.bfloat16, seed=R))


@gpu
@needs_cuda
def test_bf16_gpu_compile(triton_backend):
    z, h, rows, w = _inputs(1001, 1024, M=300, dtype=torch.bfloat16, seed=1)
    f = torch.compile(lambda *a: L.l1_target_loss(*a, check_range=False), fullgraph=True)
    loss, grad = _loss_and_grad(f, z, h, rows, w, 1.0)
    ref_loss, ref_grad = _loss_and_grad(L.l1_target_loss, z, h, rows, w, 1.0)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
