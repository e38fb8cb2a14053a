"""masked_gather: the C++ CPU kernel (and on a GPU the CUDA kernel) against the reference, forward and gradient."""
import os
import zlib

import pytest
import torch

from vjepa_fast import _ext
from vjepa_fast.ops.gather import masked_gather, masked_gather_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, N, D): a single sample, primes, D = 1, odd D (general path), D a multiple of 8 (vectorised path), D = 1000.
SHAPES = [(1, 7, 1), (2, 13, 7), (3, 11, 64), (2, 17, 96), (1, 5, 1000)]


@pytest.fixture
def backend(request, monkeypatch):
    """Force the gather backend named by the test's parameter (the extension must be built unless opted out)."""
    name = request.param
    if name in ("cpu", "cuda"):
        if os.environ.get("VJEPA_FAST_NO_EXT") == "1":
            pytest.skip("VJEPA_FAST_NO_EXT=1: extension not built")
        assert _ext.load(), f"vjepa_fast._C is not built ({_ext.load_error()}); run pip install -e . --no-build-isolation"
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs CUDA")
        assert _ext.has_cuda_kernels(), "CUDA is available but vjepa_fast._C has no CUDA kernels"
    monkeypatch.setenv("VJEPA_FAST_GATHER_BACKEND", name)
    return name


def _seed(*key):
    return zlib.crc32(repr(key).encode())  # stable across runs (hash() of a dtype is not)


def _inputs(B, N, D, dtype, pos_kind, device="cpu", gen=None):
    tokens = torch.randn(B, N, D, generator=gen).to(device=device, dtype=dtype)
    pos = None
    if pos_kind == "same":
        pos = torch.randn(N, D, generator=gen).to(device=device, dtype=dtype)
    elif pos_kind == "fp32":
        pos = torch.randn(N, D, generator=gen).to(device=device)
    return tokens, pos


def _err(x, exact):
    return 0.0 if x.numel() == 0 else (x.double() - exact).abs().max().item()


def _assert_2x(fast, ref, exact, what):
    """The fast path at most twice as far from the fp64 result as the reference in the same dtype."""
    assert fast.shape == ref.shape and fast.dtype == ref.dtype
    assert torch.isfinite(fast).all(), f"{what}: non-finite values"
    e_fast, e_ref = _err(fast, exact), _err(ref, exact)
    assert e_fast <= 2 * e_ref + 1e-12, f"{what}: fast error {e_fast} > 2 x reference error {e_ref}"


def _run(tokens, pos, rows, grad_out, unique_rows=True):
    t = tokens.detach().clone().requires_grad_(True)
    out = masked_gather(t, pos, rows, unique_rows=unique_rows)
    (g,) = torch.autograd.grad(out, t, grad_out)
    return out.detach(), g


def _reference(tokens, pos, rows, grad_out, fp64=False):
    t = tokens.detach().clone()
    p, go = pos, grad_out
    if fp64:
        t, go = t.double(), go.double()
        p = None if p is None else p.double()
    t.requires_grad_(True)
    out = masked_gather_reference(t, p, rows)
    (g,) = torch.autograd.grad(out, t, go)
    return out.detach(), g


def _check_against_reference(tokens, pos, rows, unique_rows, gen=None):
    grad_out = torch.randn(rows.numel(), tokens.shape[2], generator=gen).to(tokens.device, tokens.dtype)
    out, g = _run(tokens, pos, rows, grad_out, unique_rows)
    ref_out, ref_g = _reference(tokens, pos, rows, grad_out)
    ex_out, ex_g = _reference(tokens, pos, rows, grad_out, fp64=True)
    _assert_2x(out, ref_out, ex_out, "forward")
    _assert_2x(g, ref_g, ex_g, "gradient")
    if pos is None or pos.dtype == tokens.dtype:
        # Same arithmetic as the reference (a copy, or one add of two T values rounded once): bit-equal.
        assert torch.equal(out, ref_out)
    if rows.unique().numel() == rows.numel():
        assert torch.equal(g, ref_g)  # the gradient is a plain copy then
    return out, g


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pos_kind", [None, "same", "fp32"])
def test_cpu_matches_reference(backend, dtype, shape, pos_kind):
    gen = torch.Generator().manual_seed(_seed(dtype, shape, pos_kind))
    B, N, D = shape
    tokens, pos = _inputs(B, N, D, dtype, pos_kind, gen=gen)
    unique = torch.randperm(B * N, generator=gen)[: max(1, B * N // 2)]
    _check_against_reference(tokens, pos, unique, True, gen)
    repeated = torch.randint(0, B * N, (2 * B * N + 3,), generator=gen)
    for unique_rows in (True, False):
        _check_against_reference(tokens, pos, repeated, unique_rows, gen)


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("unique_rows", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_repeated_rows_accumulate(backend, unique_rows, dtype):
    # Several mask configurations gather the same token: its gradient is the sum over every copy, and tokens that
    # were never gathered get exactly zero.
    B, N, D = 2, 11, 24
    tokens, pos = _inputs(B, N, D, dtype, "fp32")
    rows = torch.tensor([3, 3, 3, 14, 0, 14, 21, 3], dtype=torch.long)
    grad_out = torch.randn(rows.numel(), D).to(dtype)
    _, g = _run(tokens, pos, rows, grad_out, unique_rows)
    want = torch.zeros(B * N, D, dtype=torch.float64).index_add_(0, rows, grad_out.double())
    got = g.reshape(B * N, D)
    untouched = torch.ones(B * N, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(got[untouched], torch.zeros_like(got[untouched]))
    tol = 0 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps * want.abs().max().item()
    assert (got.double() - want).abs().max().item() <= tol + 1e-5


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
def test_empty_rows(backend):
    tokens, pos = _inputs(2, 5, 7, torch.float32, "same")
    t = tokens.clone().requires_grad_(True)
    out = masked_gather(t, pos, torch.empty(0, dtype=torch.long))
    assert out.shape == (0, 7)
    (g,) = torch.autograd.grad(out.sum() + 0 * t.sum(), t)
    assert torch.equal(g, torch.zeros_like(t))
    # The backward op itself must write zeros everywhere (it does not start from a zeroed buffer).
    for unique in (True, False):
        grad = torch.ops.vjepa_fast.masked_gather_backward(torch.empty(0, 7), torch.empty(0, dtype=torch.long),
                                                            2, 5, unique)
        assert torch.equal(grad, torch.zeros(2, 5, 7))


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
def test_out_of_range_rows_raise(backend):
    tokens, pos = _inputs(2, 5, 8, torch.float32, "same")
    for bad in (10, -1):
        rows = torch.tensor([0, bad, 3])
        with pytest.raises(IndexError, match="out of range"):
            masked_gather(tokens, pos, rows)
        # Skipping the Python check must not read out of bounds: the kernel (or index_select) raises too.
        with pytest.raises(IndexError):
            masked_gather(tokens, pos, rows, check_range=False)


def test_ops_check_range_themselves():
    if not _ext.load():
        pytest.skip("extension not built")
    tokens = torch.randn(2, 5, 8)
    with pytest.raises(IndexError, match="out of range"):
        torch.ops.vjepa_fast.masked_gather(tokens, None, torch.tensor([0, 10]))
    with pytest.raises(IndexError, match="out of range"):
        torch.ops.vjepa_fast.masked_gather_backward(torch.randn(2, 8), torch.tensor([0, -1]), 2, 5, True)
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.vjepa_fast.masked_gather(tokens.transpose(0, 1), None, torch.tensor([0]))


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
def test_bad_inputs_raise_clear_errors(backend):
    tokens, pos = _inputs(2, 5, 8, torch.bfloat16, "same")
    rows = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="tokens must be"):
        masked_gather(tokens.int(), None, rows)
    with pytest.raises(ValueError, match="tokens must be"):
        masked_gather(tokens[0], None, rows)
    with pytest.raises(ValueError, match="pos must be"):
        masked_gather(tokens, pos[:4], rows)
    with pytest.raises(ValueError, match="pos must have"):
        masked_gather(tokens, pos.half(), rows)
    with pytest.raises(ValueError, match="rows must be"):
        masked_gather(tokens, pos, rows.float())
    with pytest.raises(ValueError, match="no gradient"):
        masked_gather(tokens, pos.float().requires_grad_(True), rows)
    with torch.no_grad():  # fine when autograd is not recording
        masked_gather(tokens, pos.float().requires_grad_(True), rows)


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_non_contiguous_inputs_and_int32_rows(backend):
    B, N, D = 3, 7, 16
    base = torch.randn(N, B, D)
    tokens = base.transpose(0, 1)  # [B, N, D], not contiguous
    pos = torch.randn(D, N).t()
    rows = torch.randint(0, B * N, (9,), dtype=torch.int32)
    out, g = _check_against_reference(tokens, pos, rows, True)
    assert g.shape == tokens.shape


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_double_backward(backend):
    B, N, D = 2, 5, 6
    tokens = torch.randn(B, N, D, requires_grad=True)
    rows = torch.tensor([7, 1, 7, 4])
    grad_out = torch.randn(4, D, requires_grad=True)
    out = masked_gather(tokens, None, rows)
    (g,) = torch.autograd.grad(out, tokens, grad_out, create_graph=True)
    v = torch.randn(B, N, D)
    (gg,) = torch.autograd.grad((g * v).sum(), grad_out)
    assert torch.equal(gg, v.reshape(B * N, D)[rows])


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("with_pos", [True, False])
def test_opcheck(backend, with_pos):
    tokens = torch.randn(2, 7, 12, requires_grad=True)
    pos = torch.randn(7, 12) if with_pos else None
    rows = torch.tensor([3, 0, 13, 3, 8])
    torch.library.opcheck(torch.ops.vjepa_fast.masked_gather.default, (tokens, pos, rows, True))
    torch.library.opcheck(torch.ops.vjepa_fast.masked_gather.default, (tokens.bfloat16(), pos, rows, False))
    grad = torch.randn(5, 12, requires_grad=True)
    torch.library.opcheck(torch.ops.vjepa_fast.masked_gather_backward.default, (grad, rows, 2, 7, True))
    torch.library.opcheck(torch.ops.vjepa_fast.masked_gather_backward.default, (grad.detach(), rows, 2, 7, False))


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_torch_compile_no_graph_break(backend):
    torch._dynamo.reset()
    B, N, D = 2, 9, 16
    tokens, pos = _inputs(B, N, D, torch.float32, "same")
    rows = torch.tensor([0, 5, 17, 5, 9, 2])
    w = torch.randn(D)

    def f(t, p, r):
        return (masked_gather(t, p, r) * w).sin().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break is an error
    t1 = tokens.clone().requires_grad_(True)
    t2 = tokens.clone().requires_grad_(True)
    y1, y2 = f(t1, pos, rows), compiled(t2, pos, rows)
    y1.backward()
    y2.backward()
    torch.testing.assert_close(y2, y1)
    torch.testing.assert_close(t2.grad, t1.grad)
    torch._dynamo.reset()


# ---- GPU: the CUDA kernels, vectorised (D a multiple of 16 bytes, aligned) and general paths ----------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(4, 1568, 1024), (2, 131, 8), (2, 131, 33)])
@pytest.mark.parametrize("pos_kind", [None, "same", "fp32"])
def test_cuda_matches_reference(backend, dtype, shape, pos_kind):
    gen = torch.Generator().manual_seed(_seed(dtype, shape, pos_kind, "cuda"))
    B, N, D = shape
    tokens, pos = _inputs(B, N, D, dtype, pos_kind, device="cuda", gen=gen)
    unique = torch.randperm(B * N, generator=gen)[: max(1, B * N // 2)].cuda()
    _check_against_reference(tokens, pos, unique, True, gen)
    repeated = torch.randint(0, B * N, (2 * B * N + 3,), generator=gen).cuda()
    for unique_rows in (True, False):
        _check_against_reference(tokens, pos, repeated, unique_rows, gen)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_misaligned_storage_uses_general_path(backend, dtype):
    # D is a multiple of 8 but the tensors start one element into their storage: the 16-byte path must not be taken.
    B, N, D = 2, 37, 64
    buf = torch.randn(B * N * D + 1, device="cuda").to(dtype)
    tokens = buf[1:].view(B, N, D)
    pbuf = torch.randn(N * D + 1, device="cuda").to(dtype)
    pos = pbuf[1:].view(N, D)
    rows = torch.randint(0, B * N, (3 * N,), device="cuda")
    for unique_rows in (True, False):
        _check_against_reference(tokens, pos, rows, unique_rows)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
def test_cuda_out_of_range(backend):
    tokens, pos = _inputs(2, 5, 8, torch.float32, "same", device="cuda")
    rows = torch.tensor([0, 10, 3], device="cuda")
    with pytest.raises(IndexError, match="out of range"):
        masked_gather(tokens, pos, rows, check_range=True)
    out = masked_gather(tokens, pos, rows)  # unchecked: the bad row is poisoned, the others are right
    assert torch.isnan(out[1]).all()
    torch.testing.assert_close(out[[0, 2]], masked_gather_reference(tokens, pos, rows[[0, 2]]))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
def test_cuda_empty_and_opcheck(backend):
    tokens = torch.randn(2, 7, 16, device="cuda", requires_grad=True)
    pos = torch.randn(7, 16, device="cuda")
    assert masked_gather(tokens, pos, torch.empty(0, dtype=torch.long, device="cuda")).shape == (0, 16)
    for unique in (True, False):
        grad = torch.ops.vjepa_fast.masked_gather_backward(
            torch.empty(0, 16, device="cuda"), torch.empty(0, dtype=torch.long, device="cuda"), 2, 7, unique)
        assert torch.equal(grad, torch.zeros(2, 7, 16, device="cuda"))
    rows = torch.tensor([3, 0, 13, 3, 8], device="cuda")
    torch.library.opcheck(torch.ops.vjepa_fast.masked_gather.default, (tokens, pos, rows, True))
    torch.library.opcheck(torch.ops.vjepa_fast.masked_gather_backward.default,
                          (torch.randn(5, 16, device="cuda"), rows, 2, 7, True))


def test_fp64_goes_to_the_reference_and_forcing_a_kernel_is_an_error():
    from vjepa_fast.ops import _backend

    gen = torch.Generator().manual_seed(11)
    tokens = torch.randn(2, 7, 5, dtype=torch.float64, generator=gen)
    pos = torch.randn(7, 5, dtype=torch.float64, generator=gen)
    rows = torch.tensor([13, 0, 6, 7])
    assert torch.equal(masked_gather(tokens, pos, rows), masked_gather_reference(tokens, pos, rows))
    _backend.set_backend("gather", "cpu")
    try:
        with pytest.raises(RuntimeError, match="fp64"):
            masked_gather(tokens, pos, rows)
    finally:
        _backend.set_backend("gather", None)
