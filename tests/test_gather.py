"""indexed_gather_add, the one gather op: the C++ CPU kernel (and on a GPU the CUDA kernel) against the plain
definition and an fp64 truth, forward and gradient, in its two uses (the context encoder's masked tokens with the
unique-rows backward, the predictor's layout with the accumulating backward) and on its own."""
import zlib

import pytest
from conftest import force_backend
import torch

from vjepa_fast import _ext
from vjepa_fast.ops.gather import indexed_gather_add, indexed_gather_add_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, N, D): a single sample, primes, D = 1, odd D (general path), D a multiple of 8 (vectorised path), D = 1000.
SHAPES = [(1, 7, 1), (2, 13, 7), (3, 11, 64), (2, 17, 96), (1, 5, 1000)]


@pytest.fixture
def backend(request, monkeypatch):
    """Force the gather backend named by the test's parameter (the extension must be built unless opted out)."""
    return force_backend("gather", request.param, monkeypatch)


def masked_gather(tokens, pos, rows, check_range=None, unique_rows=True):
    """The context encoder's use (models/vit.py): token rows b * N + n of tokens [B, N, D] plus position rows n."""
    B, N, D = tokens.shape
    return indexed_gather_add(tokens.reshape(B * N, D), rows, pos, rows % N, check_range, unique_rows)


def masked_gather_reference(tokens, pos, rows):
    B, N, D = tokens.shape
    return indexed_gather_add_reference(tokens.reshape(B * N, D), rows, pos, None if pos is None else rows % N)


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
    """The fast path at most twice as far from the fp64 result as the reference in the same dtype, plus four ulps of
    the result's scale (docs/testing.md): summed gradients (a shared position row) are added in a different order, and a
    reference that happens to land within an ulp must not make one ulp of the fast path a failure."""
    assert fast.shape == ref.shape and fast.dtype == ref.dtype
    assert torch.isfinite(fast).all(), f"{what}: non-finite values"
    e_fast, e_ref = _err(fast, exact), _err(ref, exact)
    slack = 4 * torch.finfo(fast.dtype).eps * (exact.abs().max().item() if exact.numel() else 0.0)
    assert e_fast <= 2 * e_ref + slack + 1e-12, f"{what}: fast error {e_fast} > 2 x reference error {e_ref} + {slack}"


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
    if backend == "cpu":
        for unique in (True, False):
            grad = torch.ops.vjepa_fast.indexed_gather_add_backward(torch.empty(0, 7), torch.empty(0, dtype=torch.long),
                                                                    10, unique)
            assert torch.equal(grad, torch.zeros(10, 7))


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
    src = torch.randn(10, 8)
    op, bwd = torch.ops.vjepa_fast.indexed_gather_add, torch.ops.vjepa_fast.indexed_gather_add_backward
    with pytest.raises(IndexError, match="out of range"):
        op(src, torch.tensor([0, 10]), None, torch.tensor([0, 10]), True)
    for unique in (True, False):
        with pytest.raises(IndexError, match="out of range"):
            bwd(torch.randn(2, 8), torch.tensor([0, -1]), 10, unique)
    with pytest.raises(ValueError, match="contiguous"):
        op(torch.randn(8, 10).t(), torch.tensor([0]), None, torch.tensor([0]), True)


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
    tokens = torch.randn(14, 12, requires_grad=True)
    pos = torch.randn(7, 12) if with_pos else None
    rows = torch.tensor([3, 0, 13, 3, 8])
    op = torch.ops.vjepa_fast.indexed_gather_add.default
    torch.library.opcheck(op, (tokens, rows, pos, rows % 7, True))
    torch.library.opcheck(op, (tokens.detach().bfloat16().requires_grad_(True), rows, pos, rows % 7, True))
    grad = torch.randn(5, 12, requires_grad=True)
    torch.library.opcheck(torch.ops.vjepa_fast.indexed_gather_add_backward.default, (grad, rows, 14, True))


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
        grad = torch.ops.vjepa_fast.indexed_gather_add_backward(
            torch.empty(0, 16, device="cuda"), torch.empty(0, dtype=torch.long, device="cuda"), 14, unique)
        assert torch.equal(grad, torch.zeros(14, 16, device="cuda"))
    rows = torch.tensor([3, 0, 13, 3, 8], device="cuda")
    flat = tokens.detach().reshape(14, 16).requires_grad_(True)
    torch.library.opcheck(torch.ops.vjepa_fast.indexed_gather_add.default, (flat, rows, pos, rows % 7, True))
    torch.library.opcheck(torch.ops.vjepa_fast.indexed_gather_add_backward.default,
                          (torch.randn(5, 16, device="cuda"), rows, 14, True))


def test_fp64_goes_to_the_reference_and_forcing_a_kernel_is_an_error(monkeypatch):
    gen = torch.Generator().manual_seed(11)
    tokens = torch.randn(2, 7, 5, dtype=torch.float64, generator=gen)
    pos = torch.randn(7, 5, dtype=torch.float64, generator=gen)
    rows = torch.tensor([13, 0, 6, 7])
    assert torch.equal(masked_gather(tokens, pos, rows), masked_gather_reference(tokens, pos, rows))
    force_backend("gather", "cpu", monkeypatch)
    with pytest.raises(RuntimeError, match="forced but cannot run.*float64"):
        masked_gather(tokens, pos, rows)


# ---- the op on its own: out[r] = src[src_rows[r]] + pos[pos_rows[r]] (and the predictor's layout step) ------------

# (S, P, R, D): one row, primes, D = 1, odd D (general path), D a multiple of 8 (vectorised path), R = 0, large D.
IG_SHAPES = [(1, 1, 1, 1), (7, 5, 13, 7), (11, 13, 37, 64), (3, 17, 50, 96), (4, 3, 0, 8), (5, 2, 9, 1000)]


def _ig_inputs(S, P, R, D, dtype, pos_kind, gen, device="cpu"):
    src = torch.randn(S, D, generator=gen).to(device=device, dtype=dtype)
    src_rows = torch.randint(0, S, (R,), generator=gen).to(device)
    pos = pos_rows = None
    if pos_kind is not None:
        pos = torch.randn(P, D, generator=gen).to(device=device, dtype=dtype if pos_kind == "same" else torch.float32)
        pos_rows = torch.randint(0, P, (R,), generator=gen).to(device)
    return src, src_rows, pos, pos_rows


def _ig_run(src, src_rows, pos, pos_rows, grad_out, fn=indexed_gather_add):
    s = src.detach().clone().requires_grad_(True)
    out = fn(s, src_rows, pos, pos_rows)
    (g,) = torch.autograd.grad(out, s, grad_out)
    return out.detach(), g


def _ig_check(src, src_rows, pos, pos_rows, gen):
    """Fast path vs the reference in the same dtype and in fp64 (2x rule), forward and d(src)."""
    grad_out = torch.randn(src_rows.numel(), src.shape[1], generator=gen).to(src.device, src.dtype)
    out, g = _ig_run(src, src_rows, pos, pos_rows, grad_out)
    ref_out, ref_g = _ig_run(src, src_rows, pos, pos_rows, grad_out, indexed_gather_add_reference)
    p64 = None if pos is None else pos.double()
    ex_out, ex_g = _ig_run(src.double(), src_rows, p64, pos_rows, grad_out.double(), indexed_gather_add_reference)
    _assert_2x(out, ref_out, ex_out, "forward")
    _assert_2x(g, ref_g, ex_g, "gradient")
    if pos is None or pos.dtype == src.dtype:
        assert torch.equal(out, ref_out)  # a copy, or one add of two T values rounded once
    if src_rows.unique().numel() == src_rows.numel():
        assert torch.equal(g, ref_g)  # every source row gathered at most once: the gradient is a copy
    return out, g


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", IG_SHAPES)
@pytest.mark.parametrize("pos_kind", [None, "same", "fp32"])
def test_indexed_cpu_matches_reference(backend, dtype, shape, pos_kind):
    gen = torch.Generator().manual_seed(_seed("indexed", dtype, shape, pos_kind))
    _ig_check(*_ig_inputs(*shape, dtype, pos_kind, gen), gen)


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_indexed_cpu_output_fully_written(backend, dtype):
    # The output comes from at::empty: fill the allocator's memory with NaN first, then every element must be finite.
    gen = torch.Generator().manual_seed(_seed("poison", dtype))
    for _ in range(3):
        torch.full((41, 24), float("nan"), dtype=dtype).sum()  # a NaN block the next allocation may reuse
        src, src_rows, pos, pos_rows = _ig_inputs(9, 6, 41, 24, dtype, "fp32", gen)
        out = indexed_gather_add(src, src_rows, pos, pos_rows)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_indexed_heavily_repeated_rows(backend, dtype):
    # The predictor's pattern: Rc context rows gathered once each, then M mask-token rows gathered ~hundreds of
    # times each, interleaved by sequence. d(mask token m) = sum over its copies, computed in fp32; rows never
    # gathered get exactly zero.
    gen = torch.Generator().manual_seed(_seed("repeat", dtype))
    Rc, M, D, per_seq = 23, 3, 40, 97
    src = torch.randn(Rc + M + 2, D, generator=gen).to(dtype)  # two trailing rows nobody gathers
    parts = []
    ctx = torch.randperm(Rc, generator=gen)
    for s, chunk in enumerate(ctx.chunk(6)):
        parts += [chunk, torch.full((per_seq,), Rc + s % M)]
    src_rows = torch.cat(parts)
    pos = torch.randn(50, D, generator=gen)
    pos_rows = torch.randint(0, 50, (src_rows.numel(),), generator=gen)
    out, g = _ig_check(src, src_rows, pos, pos_rows, gen)
    grad_out = torch.randn(src_rows.numel(), D, generator=gen).to(dtype)
    _, g = _ig_run(src, src_rows, pos, pos_rows, grad_out)
    want = torch.zeros(src.shape[0], D, dtype=torch.float64).index_add_(0, src_rows, grad_out.double())
    assert torch.equal(g[-2:], torch.zeros_like(g[-2:]))
    assert torch.equal(g[:Rc], grad_out[torch.argsort(src_rows)[:Rc]])  # context rows: plain copies
    # fp32 accumulation, one rounding: within a few ulps of the exact sum (bf16 index_add_ would be far worse).
    rel = 2 * torch.finfo(dtype).eps + 2 * per_seq * torch.finfo(torch.float32).eps
    tol = rel * torch.zeros_like(want).index_add_(0, src_rows, grad_out.double().abs())
    assert ((g.double() - want).abs() <= tol + 1e-30).all()


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_indexed_backward_is_deterministic(backend):
    gen = torch.Generator().manual_seed(_seed("det"))
    grad = torch.randn(3000, 130, generator=gen)
    rows = torch.randint(0, 4, (3000,), generator=gen)
    a = torch.ops.vjepa_fast.indexed_gather_add_backward(grad, rows, 6, False)
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            assert torch.equal(torch.ops.vjepa_fast.indexed_gather_add_backward(grad, rows, 6, False), a)
            assert torch.equal(torch.ops.vjepa_fast.indexed_gather_add_backward(grad, rows, 6, True), a)
        finally:
            torch.set_num_threads(old)
    assert torch.equal(a[4:], torch.zeros(2, 130))


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_indexed_non_contiguous_and_int32(backend):
    gen = torch.Generator().manual_seed(_seed("noncontig"))
    src = torch.randn(16, 9, generator=gen).t()  # [9, 16], not contiguous
    pos = torch.randn(16, 7, generator=gen).t()
    src_rows = torch.randint(0, 9, (21,), generator=gen, dtype=torch.int32)
    pos_rows = torch.randint(0, 7, (21,), generator=gen, dtype=torch.int32)
    out, g = _ig_check(src, src_rows, pos, pos_rows, gen)
    assert g.shape == src.shape


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
def test_indexed_empty(backend):
    src = torch.randn(4, 6, requires_grad=True)
    pos = torch.randn(3, 6)
    empty = torch.empty(0, dtype=torch.long)
    out = indexed_gather_add(src, empty, pos, empty)
    assert out.shape == (0, 6)
    (g,) = torch.autograd.grad(out.sum() + 0 * src.sum(), src)
    assert torch.equal(g, torch.zeros_like(src))
    # An empty src with no rows is fine too; the backward op writes zeros for every source row.
    assert indexed_gather_add(torch.randn(0, 6), empty, None, None).shape == (0, 6)
    if backend == "cpu":
        for unique in (True, False):
            grad = torch.ops.vjepa_fast.indexed_gather_add_backward(torch.empty(0, 6), empty, 4, unique)
            assert torch.equal(grad, torch.zeros(4, 6))


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
def test_indexed_out_of_range_raises(backend):
    src, pos = torch.randn(5, 8), torch.randn(3, 8)
    ok = torch.tensor([0, 1, 2])
    for name, bad_src, bad_pos in (("src_rows", torch.tensor([0, 5, 1]), ok), ("src_rows", torch.tensor([-1, 0, 1]), ok),
                                   ("pos_rows", ok, torch.tensor([0, 3, 1])), ("pos_rows", ok, torch.tensor([0, 0, -2]))):
        with pytest.raises(IndexError, match=f"{name}.*out of range"):
            indexed_gather_add(src, bad_src, pos, bad_pos)
        with pytest.raises(IndexError):  # unchecked in Python: the kernel (or index_select) raises too
            indexed_gather_add(src, bad_src, pos, bad_pos, check_range=False)


def test_indexed_ops_check_arguments_themselves():
    if not _ext.has_op("indexed_gather_add"):
        pytest.skip("extension not built")
    src, pos = torch.randn(5, 8), torch.randn(3, 8)
    rows = torch.tensor([0, 4])
    op, bwd = torch.ops.vjepa_fast.indexed_gather_add, torch.ops.vjepa_fast.indexed_gather_add_backward
    with pytest.raises(IndexError, match="src_rows index 5 at position 1 is out of range"):
        op(src, torch.tensor([0, 5]), pos, rows)
    with pytest.raises(IndexError, match="pos_rows index 4 at position 1 is out of range"):
        op(src, rows, pos, rows)
    with pytest.raises(IndexError, match="out of range"):
        bwd(torch.randn(2, 8), torch.tensor([0, 5]), 5, False)
    with pytest.raises(ValueError, match="contiguous"):
        op(torch.randn(8, 5).t(), rows, None, rows)
    with pytest.raises(ValueError, match="pos_rows"):
        op(src, rows, pos, torch.tensor([0]))
    with pytest.raises(ValueError, match="num_src_rows"):
        bwd(torch.randn(2, 8), rows, -1, False)
    with pytest.raises(ValueError, match="grad has"):
        bwd(torch.randn(3, 8), rows, 5, False)


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
def test_indexed_bad_inputs_raise_clear_errors(backend):
    src, pos = torch.randn(5, 8).bfloat16(), torch.randn(3, 8).bfloat16()
    rows = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="src must be"):
        indexed_gather_add(src.int(), rows, None, None)
    with pytest.raises(ValueError, match="src must be"):
        indexed_gather_add(src[0], rows, None, None)
    with pytest.raises(ValueError, match="src_rows must be"):
        indexed_gather_add(src, rows.float(), pos, rows)
    with pytest.raises(ValueError, match="src_rows must be"):
        indexed_gather_add(src, rows[None], pos, rows)
    with pytest.raises(ValueError, match="pos_rows must be"):
        indexed_gather_add(src, rows, pos, rows.float())
    with pytest.raises(ValueError, match="pos_rows is None"):
        indexed_gather_add(src, rows, pos, None)
    with pytest.raises(ValueError, match="one position per output row"):
        indexed_gather_add(src, rows, pos, rows[:1])
    with pytest.raises(ValueError, match="pos must be"):
        indexed_gather_add(src, rows, pos[:, :4], rows)
    with pytest.raises(ValueError, match="pos must have"):
        indexed_gather_add(src, rows, pos.half(), rows)
    with pytest.raises(ValueError, match="fp64 pos"):
        indexed_gather_add(src.double(), rows, pos.float(), rows)
    with pytest.raises(ValueError, match="no gradient"):
        indexed_gather_add(src, rows, pos.float().requires_grad_(True), rows)
    with torch.no_grad():  # fine when autograd is not recording
        indexed_gather_add(src, rows, pos.float().requires_grad_(True), rows)


def test_indexed_fp64_goes_to_the_reference_and_forcing_a_kernel_is_an_error(monkeypatch):
    gen = torch.Generator().manual_seed(12)
    src = torch.randn(6, 5, dtype=torch.float64, generator=gen)
    pos = torch.randn(4, 5, dtype=torch.float64, generator=gen)
    src_rows, pos_rows = torch.tensor([5, 0, 5, 2]), torch.tensor([3, 3, 0, 1])
    assert torch.equal(indexed_gather_add(src, src_rows, pos, pos_rows),
                       indexed_gather_add_reference(src, src_rows, pos, pos_rows))
    force_backend("gather", "cpu", monkeypatch)
    with pytest.raises(RuntimeError, match="forced but cannot run.*float64"):
        indexed_gather_add(src, src_rows, pos, pos_rows)


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_indexed_double_backward(backend):
    src = torch.randn(5, 6, requires_grad=True)
    rows = torch.tensor([4, 1, 4, 4, 0])
    grad_out = torch.randn(5, 6, requires_grad=True)
    out = indexed_gather_add(src, rows, torch.randn(2, 6), torch.tensor([0, 1, 1, 0, 1]))
    (g,) = torch.autograd.grad(out, src, grad_out, create_graph=True)
    v = torch.randn(5, 6)
    (gg,) = torch.autograd.grad((g * v).sum(), grad_out)
    assert torch.equal(gg, v[rows])


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("with_pos", [True, False])
def test_indexed_opcheck(backend, with_pos):
    src = torch.randn(6, 12, requires_grad=True)
    pos = torch.randn(4, 12) if with_pos else None
    src_rows, pos_rows = torch.tensor([3, 0, 5, 3, 3]), torch.tensor([1, 0, 3, 3, 2])
    op = torch.ops.vjepa_fast.indexed_gather_add.default
    torch.library.opcheck(op, (src, src_rows, pos, pos_rows))
    torch.library.opcheck(op, (src.detach().bfloat16().requires_grad_(True), src_rows, pos, pos_rows))
    grad = torch.randn(5, 12, requires_grad=True)
    for unique in (True, False):
        torch.library.opcheck(torch.ops.vjepa_fast.indexed_gather_add_backward.default, (grad, src_rows, 6, unique))


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_indexed_torch_compile_no_graph_break(backend):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(_seed("compile"))
    src, src_rows, pos, pos_rows = _ig_inputs(7, 5, 19, 16, torch.float32, "same", gen)
    w = torch.randn(16, generator=gen)

    def f(s, sr, p, pr):
        return (indexed_gather_add(s, sr, p, pr) * w).sin().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break is an error
    s1, s2 = src.clone().requires_grad_(True), src.clone().requires_grad_(True)
    y1, y2 = f(s1, src_rows, pos, pos_rows), compiled(s2, src_rows, pos, pos_rows)
    y1.backward()
    y2.backward()
    torch.testing.assert_close(y2, y1)
    torch.testing.assert_close(s2.grad, s1.grad)
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", IG_SHAPES + [(3000, 1568, 40000, 384), (9, 7, 131, 33)])
@pytest.mark.parametrize("pos_kind", [None, "same", "fp32"])
def test_indexed_cuda_matches_reference(backend, dtype, shape, pos_kind):
    gen = torch.Generator().manual_seed(_seed("indexed-cuda", dtype, shape, pos_kind))
    _ig_check(*_ig_inputs(*shape, dtype, pos_kind, gen, device="cuda"), gen)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_indexed_cuda_predictor_pattern_and_misaligned(backend, dtype):
    # Runs of one mask token per sequence (the atomics are aggregated per run), plus views one element into their
    # storage so the 16-byte path must not be taken.
    gen = torch.Generator().manual_seed(_seed("cuda-runs", dtype))
    Rc, M, D = 500, 2, 64
    parts = []
    for s, chunk in enumerate(torch.randperm(Rc, generator=gen).chunk(8)):
        parts += [chunk, torch.full((int(torch.randint(1, 300, (1,), generator=gen)),), Rc + s % M)]
    src_rows = torch.cat(parts).cuda()
    pos_rows = torch.randint(0, 100, (src_rows.numel(),), generator=gen).cuda()
    for offset in (0, 1):
        sbuf = torch.randn((Rc + M) * D + offset, generator=gen).to("cuda", dtype)
        pbuf = torch.randn(100 * D + offset, generator=gen).to("cuda", dtype)
        src, pos = sbuf[offset:].view(Rc + M, D), pbuf[offset:].view(100, D)
        _ig_check(src, src_rows, pos, pos_rows, gen)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
def test_indexed_cuda_out_of_range_empty_and_opcheck(backend):
    src, pos = torch.randn(5, 8, device="cuda"), torch.randn(3, 8, device="cuda")
    src_rows, pos_rows = torch.tensor([0, 5, 3, 1], device="cuda"), torch.tensor([0, 1, 3, 2], device="cuda")
    with pytest.raises(IndexError, match="out of range"):
        indexed_gather_add(src, src_rows, pos, pos_rows, check_range=True)
    out = indexed_gather_add(src, src_rows, pos, pos_rows)  # unchecked: bad rows are poisoned, the others right
    assert torch.isnan(out[1]).all() and torch.isnan(out[2]).all()
    good = torch.tensor([0, 3], device="cuda")
    torch.testing.assert_close(out[good], indexed_gather_add_reference(src, src_rows[good], pos, pos_rows[good]))
    empty = torch.empty(0, dtype=torch.long, device="cuda")
    assert indexed_gather_add(src, empty, pos, empty).shape == (0, 8)
    assert torch.equal(torch.ops.vjepa_fast.indexed_gather_add_backward(torch.empty(0, 8, device="cuda"), empty, 5,
                                                                        False), torch.zeros(5, 8, device="cuda"))
    s = src.clone().requires_grad_(True)
    rows = torch.tensor([3, 0, 4, 3, 3], device="cuda")
    torch.library.opcheck(torch.ops.vjepa_fast.indexed_gather_add.default, (s, rows, pos, rows % 3))
    torch.library.opcheck(torch.ops.vjepa_fast.indexed_gather_add_backward.default,
                          (torch.randn(5, 8, device="cuda"), rows, 5, False))


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_indexed_builds_the_predictor_layout(backend, dtype):
    # pack_masks' pred_src_rows / pred_pos_rows through the op give the buffer the predictor used to build with
    # index_copy of [x + pos ; mask token + pos]: bit-equal in fp32 (same adds), and the same gradients.
    import numpy as np

    from vjepa_fast.masks import pack_masks

    gen = torch.Generator().manual_seed(_seed("layout", dtype))
    rng = np.random.default_rng(_seed("layout-np", dtype))
    M, B, N, Dp = 2, 3, 29, 24
    masks = []
    for _ in range(M):
        per = []
        for _ in range(B):
            perm, nc = rng.permutation(N), int(rng.integers(1, N))
            per.append((np.sort(perm[:nc]), np.sort(perm[nc:nc + int(rng.integers(0, N - nc + 1))])))
        masks.append(per)
    pm = pack_masks(masks, N)
    Rc = pm.ctx_rows.numel()
    x = torch.randn(Rc, Dp, generator=gen).to(dtype).requires_grad_(True)
    tokens = torch.randn(M, Dp, generator=gen).requires_grad_(True)  # fp32 parameters, as in the predictor
    pos = torch.randn(N, Dp, generator=gen)
    grad_out = torch.randn(pm.pred_src_rows.numel(), Dp, generator=gen).to(dtype)

    buf = indexed_gather_add(torch.cat([x, tokens.to(dtype)]), pm.pred_src_rows, pos, pm.pred_pos_rows)
    gx, gt = torch.autograd.grad(buf, (x, tokens), grad_out)
    old_x = x + pos[pm.ctx_rows % N].to(dtype)
    old_t = (tokens.to(dtype)[pm.tgt_mask_id].float() + pos[pm.tgt_rows % N]).to(dtype)
    slots = torch.cat([pm.pred_ctx_slots, pm.pred_tgt_slots])
    old = torch.full_like(buf, float("nan")).index_copy(0, slots, torch.cat([old_x, old_t]))
    ogx, ogt = torch.autograd.grad(old, (x, tokens), grad_out)
    assert torch.isfinite(buf).all()
    if dtype == torch.float32:
        assert torch.equal(buf, old)
    else:  # the op adds the fp32 pos without rounding it to bf16 first: the exact sum rounded once to bf16
        src64 = torch.cat([x, tokens.to(dtype)]).double()
        exact = src64[pm.pred_src_rows] + pos.double()[pm.pred_pos_rows]
        assert ((buf.double() - exact).abs() <= torch.finfo(dtype).eps * exact.abs()).all()
    assert torch.equal(gx, ogx)  # every context row is gathered once: its gradient is a copy
    # Mask tokens: the sum over all their target slots, in fp32 and rounded once to bf16 (index_select's backward
    # on the old path summed in bf16 instead, which is why it is not the yardstick here).
    g_t = grad_out[pm.pred_tgt_slots].double()
    exact = torch.zeros(M, Dp, dtype=torch.float64).index_add_(0, pm.tgt_mask_id, g_t)
    bound = torch.zeros(M, Dp, dtype=torch.float64).index_add_(0, pm.tgt_mask_id, g_t.abs())
    n = pm.tgt_rows.numel()
    assert ((gt.double() - exact).abs() <= torch.finfo(dtype).eps * exact.abs() + n * 2**-23 * bound).all()
    if dtype == torch.float32:
        torch.testing.assert_close(gt, ogt, rtol=1e-5, atol=1e-5)
