"""Variable-length attention: the Triton kernels and every backend against an fp64 truth.

Rule (docs/testing.md): a fast path may be at most twice as far from the fp64 truth as the plain definition itself
computed in the same dtype, plus a small absolute slack of a few ulps of the output's scale.

Without CUDA the Triton kernels run under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before vjepa_fast
is imported; ops/_triton.py builds every kernel in that mode). With CUDA the same tests run the compiled kernels on
the GPU, plus the `gpu` tests at realistic bf16 sizes.
"""
import ctypes
import glob
import os

import numpy
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from conftest import force_backend  # noqa: E402
from kernel_hooks import attention_backward, block_sizes, poison_outputs  # noqa: E402

from vjepa_fast.ops import _backend, _triton, flash_tuning  # noqa: E402
from vjepa_fast.ops import attention as A  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
LENS = [1, 7, 64, 0, 100, 300]  # straddles the 16/32/64-row blocks; 0 is an empty sequence


def _kernels():
    return _triton.load("triton_flash_varlen")


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """The interpreter runs each tile product through numpy; on a small shared CPU, OpenBLAS threads make fp32 tiles
    several times slower. Best effort (numpy's bundled OpenBLAS only), restored after this module."""
    libs = []
    for path in glob.glob(os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs", "*openblas*")):
        lib = ctypes.CDLL(path)
        get = getattr(lib, "scipy_openblas_get_num_threads64_", None)
        put = getattr(lib, "scipy_openblas_set_num_threads64_", None)
        if get is not None and put is not None:
            libs.append((put, get()))
            put(1)
    yield
    for put, n in libs:
        put(n)


@pytest.fixture
def triton_backend(monkeypatch):
    force_backend(A.OP, "triton", monkeypatch)
    force_backend(A.DENSE_OP, "auto", monkeypatch)


def _batch(lens, H, Dh, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    lens = [lens[i] for i in torch.randperm(len(lens), generator=g)]  # a different order every seed
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    # Scale 1.5 gives peaked softmax rows (scores of a few units), not near-uniform ones.
    qkv = (1.5 * torch.randn(int(cu[-1]), 3, H, Dh, generator=g)).to(dtype)
    dout = torch.randn(int(cu[-1]), H, Dh, generator=g).to(dtype)
    return qkv.to(device), cu.to(device), max(lens), dout.to(device)


def _fwd_bwd(fn, qkv, dout):
    x = qkv.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward(dout)
    return out.detach(), x.grad


def _ref(qkv, cu, dout, dtype=None):
    """The reference (one SDPA per sequence) in `dtype` (fp64 truth when None)."""
    if dtype is None:
        qkv, dout = qkv.double(), dout.double()
    return _fwd_bwd(lambda x: A.varlen_attention_reference(x, cu), qkv, dout)


def _assert_rule(name, fast, same, truth):
    """|fast - truth| <= 2 |same - truth| + slack, over the whole tensor (max norm)."""
    assert fast.shape == truth.shape and fast.dtype == same.dtype, name
    assert torch.isfinite(fast).all(), f"{name}: non-finite (unwritten) elements"
    err = (fast.double() - truth).abs().max().item()
    err_ref = (same.double() - truth).abs().max().item()
    slack = 4 * torch.finfo(same.dtype).eps * truth.abs().max().item()
    assert err <= 2 * err_ref + slack, f"{name}: error {err:.3g} vs reference {err_ref:.3g} (+{slack:.3g})"


def _run_triton(qkv, cu, max_seqlen, dout, deterministic=False):
    """deterministic=False runs the atomic-dQ backward (backends.attention_backward=atomic), True the split one (also
    the default), so the tests that take both cover both kernels."""
    with attention_backward("split" if deterministic else "atomic"), poison_outputs():
        return _fwd_bwd(lambda x: A.varlen_attention(x, cu, max_seqlen, deterministic=deterministic), qkv, dout)


# ---------------------------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("Dh,dtype", [(24, torch.float32), (24, torch.float16), (80, torch.float32),
                                      (80, torch.float16)])
def test_forward_backward_match_fp64(triton_backend, Dh, dtype):
    qkv, cu, max_len, dout = _batch(LENS, 2, Dh, dtype, seed=Dh)
    out, dqkv = _run_triton(qkv, cu, max_len, dout)
    truth_out, truth_d = _ref(qkv, cu, dout)
    same_out, same_d = _ref(qkv, cu, dout, dtype)
    _assert_rule("out", out, same_out, truth_out)
    for i, name in enumerate("qkv"):
        _assert_rule(f"d{name}", dqkv[:, i], same_d[:, i], truth_d[:, i])


def test_default_backward_is_split(triton_backend, monkeypatch):
    """With no setting the backward takes the split (deterministic) path: bitwise equal to deterministic=True.
    A bad mode is a clear error, not a silent fallback."""
    tfv = _kernels()
    monkeypatch.setattr(_backend, "ENV", {})  # no VJEPA_FAST_FLASH_BWD
    monkeypatch.setattr(_backend, "attention_backward", _backend.attention_backward)
    _backend.set_attention_backward("auto")
    assert tfv.backward_mode() == "split" and tfv.backward_mode(True) == "split"
    qkv, cu, max_len, dout = _batch([5, 40, 0, 17], 2, 24, torch.float32, seed=11)
    _, d_default = _fwd_bwd(lambda x: A.varlen_attention(x, cu, max_len), qkv, dout)
    _, d_det = _fwd_bwd(lambda x: A.varlen_attention(x, cu, max_len, deterministic=True), qkv, dout)
    assert torch.equal(d_default, d_det)
    _backend.set_attention_backward("atomic")
    assert tfv.backward_mode() == "atomic" and tfv.backward_mode(True) == "split"
    with pytest.raises(ValueError, match="attention_backward='fast': expected one of split, atomic"):
        _backend.set_attention_backward("fast")


def test_deterministic_backward(triton_backend):
    qkv, cu, max_len, dout = _batch([1, 65, 0, 130, 7], 2, 32, torch.float32, seed=3)
    out_a, d_atomic = _run_triton(qkv, cu, max_len, dout, deterministic=False)
    out_1, d_det1 = _run_triton(qkv, cu, max_len, dout, deterministic=True)
    out_2, d_det2 = _run_triton(qkv, cu, max_len, dout, deterministic=True)
    assert torch.equal(d_det1, d_det2), "deterministic backward is not bitwise repeatable"
    assert torch.equal(out_a, out_1)
    truth_out, truth_d = _ref(qkv, cu, dout)
    same_out, same_d = _ref(qkv, cu, dout, torch.float32)
    for d in (d_atomic, d_det1):
        _assert_rule("dqkv", d, same_d, truth_d)
    # dK and dV never use atomics: both paths compute them identically.
    assert torch.equal(d_atomic[:, 1:], d_det1[:, 1:])
    torch.testing.assert_close(d_atomic, d_det1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("deterministic", [False, True])
def test_small_blocks_full_grid(triton_backend, deterministic):
    """Blocks of 16 and 32 with one program per block (the GPU's grid shape), and head dim 96 padded to 128."""
    cfg_mn = {"BLOCK_M": 16, "BLOCK_N": 32, "MAX_PROGRAMS": None}
    cfg_nm = {"BLOCK_M": 32, "BLOCK_N": 16, "MAX_PROGRAMS": None}
    qkv, cu, max_len, dout = _batch([1, 16, 17, 0, 33, 48, 5], 2, 96, torch.float32, seed=5)
    with block_sizes(fwd=cfg_mn, dkdv=cfg_nm, dq=cfg_mn, delta={"BLOCK_M": 16}):
        out, dqkv = _run_triton(qkv, cu, max_len, dout, deterministic)
    truth_out, truth_d = _ref(qkv, cu, dout)
    same_out, same_d = _ref(qkv, cu, dout, torch.float32)
    _assert_rule("out", out, same_out, truth_out)
    _assert_rule("dqkv", dqkv, same_d, truth_d)


@pytest.mark.parametrize("Dh,switch", [(24, 1), (32, 1), (48, 1), (64, 1), (24, 2), (64, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fma_exp2_forward_matches_fp64(triton_backend, Dh, switch, dtype):
    """EXP2_POLY: half (switch 1) or a quarter (2) of each whole key block's exponentials as a polynomial on the
    FMA units (degree 3 for fp16, 6 for fp32), ragged lengths with an empty sequence and tails; gradients through
    the saved logsumexp too."""
    qkv, cu, max_len, dout = _batch([1, 70, 0, 64, 33, 100], 2, Dh, dtype, seed=40 + Dh)
    block_n = 64 if Dh <= 32 or switch == 2 else 32  # parts of 16 keys or more
    fwd = {"BLOCK_M": 32, "BLOCK_N": block_n, "EXP2_POLY": switch, "MAX_PROGRAMS": 1}
    with block_sizes(fwd=fwd):
        out, dqkv = _run_triton(qkv, cu, max_len, dout, deterministic=True)
    truth_out, truth_d = _ref(qkv, cu, dout)
    same_out, same_d = _ref(qkv, cu, dout, dtype)
    _assert_rule("out", out, same_out, truth_out)
    _assert_rule("dqkv", dqkv, same_d, truth_d)


@pytest.mark.parametrize("degree,bound", [(3, 7.5e-5), (6, 3e-7)])
def test_exp2_polynomial_relative_error(degree, bound):
    import triton
    import triton.language as tl

    global _EXP2_FMA  # a jit function resolves the functions it calls among its module's globals
    _EXP2_FMA = _kernels()._exp2_fma

    @triton.jit
    def probe(X, Y, N: tl.constexpr, DEGREE: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(Y + offs, _EXP2_FMA(tl.load(X + offs), DEGREE))

    x = torch.cat([-torch.rand(4000, dtype=torch.float64) * 125, torch.tensor([0.0, -1.0, -0.5, -125.9])])
    x = torch.cat([x, torch.zeros(4096 - x.numel(), dtype=torch.float64)]).float()
    y = torch.empty_like(x)
    probe[(1,)](x, y, N=4096, DEGREE=degree)
    rel = ((y.double() - torch.exp2(x.double())) / torch.exp2(x.double())).abs().max().item()
    assert rel <= bound, rel


def test_max_seqlen_too_small_is_only_slower():
    """The kernels walk their blocks in steps of the grid, so an underestimated max_seqlen (possible on GPU, where
    the offsets are not checked by default) still writes every row."""
    tfv = _kernels()
    qkv, cu, _, dout = _batch([40, 3, 21], 1, 24, torch.float32, seed=6)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "MAX_PROGRAMS": None}
    with block_sizes(fwd=cfg, dkdv=cfg, dq=cfg), poison_outputs():
        out, dqkv = _fwd_bwd(lambda x: tfv.flash_varlen_attention(x, cu, 1, deterministic=True), qkv, dout)
    truth_out, truth_d = _ref(qkv, cu, dout)
    same_out, same_d = _ref(qkv, cu, dout, torch.float32)
    _assert_rule("out", out, same_out, truth_out)
    _assert_rule("dqkv", dqkv, same_d, truth_d)


def test_strided_qkv_from_projection(triton_backend):
    """qkv as the fused projection's output (a view, no copy) and as a column slice with odd row strides."""
    T, H, Dh, D = 150, 2, 64, 40
    qkv, cu, max_len, dout = _batch([150], H, Dh, torch.float32, seed=7)
    cu = torch.tensor([0, 50, 61, 150], dtype=torch.int32, device=DEVICE)
    x = torch.randn(T, D, device=DEVICE)
    w = torch.randn(3 * H * Dh, D, device=DEVICE) / D ** 0.5
    wide = torch.randn(T, 3, H, Dh + 5, device=DEVICE)
    for make in (lambda: (x @ w.t()).view(T, 3, H, Dh), lambda: wide[..., 2:Dh + 2]):
        view = make()
        assert view.stride(-1) == 1
        with poison_outputs():
            base = view.detach().requires_grad_(True)
            out = A.varlen_attention(base, cu, 89)
            out.backward(dout)
        truth_out, truth_d = _ref(view, cu, dout)
        same_out, same_d = _ref(view, cu, dout, torch.float32)
        _assert_rule("out", out.detach(), same_out, truth_out)
        _assert_rule("dqkv", base.grad, same_d, truth_d)


def test_empty_inputs(triton_backend):
    H, Dh = 2, 32
    # No tokens at all.
    qkv = torch.randn(0, 3, H, Dh, device=DEVICE, requires_grad=True)
    out = A.varlen_attention(qkv, torch.zeros(3, dtype=torch.int32, device=DEVICE), 0)
    assert out.shape == (0, H, Dh)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape
    # One token among empty sequences: its output is its own value row, and its q and k get no gradient (up to
    # rounding: dP and delta are the same dot product summed in different orders).
    qkv, cu, max_len, dout = _batch([0, 1, 0, 0], H, Dh, torch.float32, seed=8)
    out, dqkv = _run_triton(qkv, cu, max_len, dout)
    torch.testing.assert_close(out, qkv[:, 2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dqkv[:, :2], torch.zeros_like(dqkv[:, :2]), rtol=0, atol=1e-5)
    torch.testing.assert_close(dqkv[:, 2], dout, rtol=1e-6, atol=1e-6)


def test_sdpa_padded_matches_fp64(monkeypatch):
    qkv, cu, max_len, dout = _batch(LENS, 2, 24, torch.float32, seed=9)
    force_backend(A.OP, "sdpa_padded", monkeypatch)
    out, dqkv = _fwd_bwd(lambda x: A.varlen_attention(x, cu, max_len), qkv, dout)
    truth_out, truth_d = _ref(qkv, cu, dout)
    same_out, same_d = _ref(qkv, cu, dout, torch.float32)
    _assert_rule("out", out, same_out, truth_out)
    _assert_rule("dqkv", dqkv, same_d, truth_d)


@pytest.mark.parametrize("dense", ["sdpa", "triton"])
def test_dense_path(dense, monkeypatch):
    qkv, _, _, dout = _batch([40, 40, 40], 2, 24, torch.float32, seed=10)
    cu = torch.arange(4, dtype=torch.int32, device=DEVICE) * 40
    force_backend(A.DENSE_OP, dense, monkeypatch)
    out, dqkv = _fwd_bwd(lambda x: A.varlen_attention(x, cu, 40, uniform_len=40), qkv, dout)
    truth_out, truth_d = _ref(qkv, cu, dout)
    same_out, same_d = _ref(qkv, cu, dout, torch.float32)
    _assert_rule("out", out, same_out, truth_out)
    _assert_rule("dqkv", dqkv, same_d, truth_d)


def test_dense_sdpa_cudnn_is_forced_only(monkeypatch):
    """SDPA's cuDNN kernel for the dense pass: never the automatic choice; forced on the CPU, the reason; on a GPU
    (16-bit) the same answer as plain SDPA."""
    qkv = torch.randn(80, 3, 2, 64, device=DEVICE, dtype=torch.float16 if DEVICE == "cuda" else torch.float32)
    cu = torch.tensor([0, 40, 80], dtype=torch.int32, device=DEVICE)
    assert A.DENSE.choose(A.backend_key(qkv)).name != "sdpa_cudnn"
    force_backend(A.DENSE_OP, "sdpa_cudnn", monkeypatch)
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="sdpa_cudnn.*needs a CUDA tensor"):
            A.varlen_attention(qkv, cu, 40, uniform_len=40)
        return
    got = A.varlen_attention(qkv, cu, 40, uniform_len=40)
    torch.testing.assert_close(got, A._dense_sdpa(qkv, 40), rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------------------------- dispatch, errors


def _choice(op, qkv) -> str:
    return _backend._op(op).choose(A.backend_key(qkv)).name


def test_backend_choice(monkeypatch):
    qkv, cu, max_len, _ = _batch([3, 4], 2, 24, torch.float32, seed=11)
    assert _choice(A.OP, qkv) == ("triton" if DEVICE == "cuda" else "sdpa_padded")
    # dense: SDPA for fp32 and on the CPU; our kernel only for 16-bit CUDA tensors, where it measured faster
    assert _choice(A.DENSE_OP, qkv) == "sdpa"
    assert _choice(A.DENSE_OP, qkv.half()) == ("triton" if DEVICE == "cuda" else "sdpa")
    force_backend(A.OP, "triton", monkeypatch)
    assert _choice(A.OP, qkv) == "triton"
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="float32/float16"):  # the interpreter has no bf16 dot
            A.varlen_attention(qkv.bfloat16(), cu, max_len)
        monkeypatch.setattr(_backend, "INTERPRET", False)  # as if TRITON_INTERPRET was unset at import
        monkeypatch.setattr(_backend._op(A.OP), "chosen", {})
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            A.varlen_attention(qkv, cu, max_len)
        monkeypatch.undo()
        force_backend(A.OP, "triton", monkeypatch)
    with pytest.raises(RuntimeError, match="head dim 136"):
        A.varlen_attention(torch.randn(7, 3, 2, 136, device=DEVICE), cu, max_len)
    for name, module in (("flash_attn", "flash_attn"), ("xformers", "xformers")):
        force_backend(A.OP, name, monkeypatch)
        if not A._INSTALLED[module]:
            with pytest.raises(RuntimeError, match="not installed"):
                A.varlen_attention(qkv, cu, max_len)
    force_backend(A.OP, "torch_varlen", monkeypatch)
    with pytest.raises(RuntimeError, match="CUDA|float16|not available"):
        A.varlen_attention(qkv.cpu(), cu.cpu(), max_len)  # CPU (or fp32 on GPU): never runs
    with pytest.raises(ValueError, match="unknown backend 'nonesuch'; choose one of auto, triton, flash_attn"):
        _backend.set_backend(A.OP, "nonesuch")


def test_empty_batch_on_every_cpu_path(monkeypatch):
    """T = 0 (no tokens at all) is an empty result and an empty gradient on every backend that runs here."""
    for name in ("sdpa_padded", "reference") + (("triton",) if _backend.INTERPRET else ()):
        force_backend(A.OP, name, monkeypatch)
        qkv = torch.randn(0, 3, 2, 8, device=DEVICE, requires_grad=True)
        out = A.varlen_attention(qkv, torch.zeros(3, dtype=torch.int32, device=DEVICE), 0)
        assert out.shape == (0, 2, 8), name
        out.sum().backward()
        assert qkv.grad.shape == qkv.shape, name


def test_validation_errors():
    qkv = torch.randn(10, 3, 2, 8, device=DEVICE)

    def cu(*v):
        return torch.tensor(v, dtype=torch.int32, device=DEVICE)

    cases = [
        (ValueError, r"\[T, 3, H, Dh\]", (qkv[:, :2], cu(0, 10), 10)),
        (ValueError, "int32", (qkv, cu(0, 10).long(), 10)),
        (ValueError, "on", (qkv, cu(0, 10).to("meta"), 10)),
        (ValueError, "max_seqlen", (qkv, cu(0, 10), -1)),
        (ValueError, "max_seqlen", (qkv, cu(0, 10), True)),
        (ValueError, "floating", (qkv.long(), cu(0, 10), 10)),
        (ValueError, r"cu_seqlens\[0\]", (qkv, cu(1, 10), 10)),
        (IndexError, "T = 10", (qkv, cu(0, 4, 12), 10)),
        (IndexError, "T = 10", (qkv, cu(0, 4, 9), 10)),
        (ValueError, "non-decreasing", (qkv, cu(0, 6, 4, 10), 10)),
        (ValueError, "max_seqlen = 5", (qkv, cu(0, 3, 10), 5)),
    ]
    for exc, match, args in cases:
        with pytest.raises(exc, match=match):
            A.varlen_attention(*args, check_range=True)
    with pytest.raises(ValueError, match="does not divide"):
        A.varlen_attention(qkv, cu(0, 3, 6, 9), 3, uniform_len=3)
    with pytest.raises(ValueError, match="uniform_len = 5"):
        A.varlen_attention(qkv, cu(0, 4, 10), 6, uniform_len=5, check_range=True)


# ---------------------------------------------------------------------------------------------- torch.library


def test_opcheck():
    _kernels()  # registers the ops
    qkv, cu, max_len, _ = _batch([3, 0, 5], 2, 24, torch.float32, seed=12)
    args = (qkv.requires_grad_(True), cu, max_len, 24 ** -0.5, True)
    torch.library.opcheck(torch.ops.vjepa_fast.flash_varlen_attention.default, args)


def test_torch_compile_matches_eager(triton_backend):
    # aot_eager on CPU exercises dynamo, fake tensors and the autograd registration without inductor's slow C++
    # build; on a GPU inductor traces into the triton_op and sees the kernels.
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    qkv, cu, max_len, dout = _batch([5, 0, 19], 2, 24, torch.float32, seed=13)

    def f(x):
        return A.varlen_attention(x, cu, max_len, check_range=False) * 2.0

    compiled = torch.compile(f, backend=backend, fullgraph=True)
    got = _fwd_bwd(compiled, qkv, dout)
    want = _fwd_bwd(f, qkv, dout)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- GPU, realistic sizes


def _uniform_lens(n, lo, hi, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (n,), generator=g).tolist()


@gpu
@needs_cuda
@pytest.mark.parametrize("lens,H,Dh", [
    (_uniform_lens(8, 392, 784, 0) + [0, 1], 16, 64),   # ViT-L context encoder (short-range masks)
    (_uniform_lens(8, 1000, 1568, 1), 16, 24),          # predictor: context + targets, head dim 24
    (_uniform_lens(6, 112, 448, 2), 16, 80),            # ViT-H head dim (80 -> 128 padding)
])
@pytest.mark.parametrize("deterministic", [False, True])
def test_gpu_bf16_realistic(triton_backend, lens, H, Dh, deterministic):
    qkv, cu, max_len, dout = _batch(lens, H, Dh, torch.bfloat16, seed=len(lens) + Dh)
    out, dqkv = _run_triton(qkv, cu, max_len, dout, deterministic)
    truth_out, truth_d = _ref(qkv, cu, dout)
    same_out, same_d = _ref(qkv, cu, dout, torch.bfloat16)
    _assert_rule("out", out, same_out, truth_out)
    for i, name in enumerate("qkv"):
        _assert_rule(f"d{name}", dqkv[:, i], same_d[:, i], truth_d[:, i])
    if deterministic:
        assert torch.equal(dqkv, _run_triton(qkv, cu, max_len, dout, True)[1])


@gpu
@needs_cuda
def test_gpu_opcheck_triton_op():
    qkv, cu, max_len, _ = _batch([37, 0, 130], 4, 64, torch.bfloat16, seed=14)
    torch.library.opcheck(torch.ops.vjepa_fast.flash_varlen_attention.default,
                          (qkv.requires_grad_(True), cu, max_len, 0.125, False))


def test_tuned_block_size_table(tmp_path, monkeypatch):
    """A measured table (backends.attention_tuning or the packaged file) wins over the built-in defaults for its
    architecture and head-dim class only; bad files and bad entries warn and fall back, never crash a run."""
    import json

    tuned = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"sm_90": {"fwd": {"64": tuned, "32": {"BLOCK_M": 48, "BLOCK_N": 32}}},
                                "_meta": {"device": "x"}}))
    flash_tuning._tuned_tables.cache_clear()
    assert flash_tuning._tuned_config("fwd", 64, "sm_90", str(path)) == tuned
    assert flash_tuning._cached_config("fwd", 64, torch.bfloat16, "sm_90", False, str(path)) == tuned
    assert flash_tuning._tuned_config("fwd", 64, "sm_80", str(path)) is None  # another architecture: defaults
    assert flash_tuning._tuned_config("dq", 64, "sm_90", str(path)) is None  # another kernel
    assert flash_tuning._cached_config("dq", 64, torch.bfloat16, "sm_80", False, str(path)) == \
        flash_tuning._gpu_config("dq", 64, torch.bfloat16) == \
        flash_tuning._tuned_config("dq", 64, flash_tuning.FALLBACK_ARCH)  # the packaged fallback
    # fp32 is a correctness path: always the built-in entry
    assert flash_tuning._cached_config("fwd", 64, torch.float32, "sm_90", False, str(path)) == \
        flash_tuning._gpu_config("fwd", 64, torch.float32)
    with pytest.warns(RuntimeWarning, match="invalid entry"):  # 48 is not a power of two
        assert flash_tuning._tuned_config("fwd", 32, "sm_90", str(path)) is None

    path.write_text("{not json")
    flash_tuning._tuned_tables.cache_clear()
    with pytest.warns(RuntimeWarning, match="ignoring block-size table"):
        assert flash_tuning._tuned_config("fwd", 64, "sm_90", str(path)) is None
    with pytest.warns(RuntimeWarning, match="ignoring block-size table"):
        assert flash_tuning._tuned_config("fwd", 64, "sm_90", str(tmp_path / "missing.json")) is None
    flash_tuning._tuned_tables.cache_clear()
    flash_tuning._cached_config.cache_clear()


def test_packaged_tuned_table_is_valid():
    """Every entry of the shipped table is one the kernels accept (a typo there would silently fall back)."""
    import json

    if not flash_tuning._TUNED_FILE.exists():
        pytest.skip("no packaged table yet")
    data = json.loads(flash_tuning._TUNED_FILE.read_text())
    entries = [(k, cfg) for arch, per in data.items() if not arch.startswith("_")
               for k, per_bd in per.items() for cfg in per_bd.values()]
    assert entries
    for kernel, cfg in entries:
        assert kernel in ("fwd", "dkdv", "dq", "delta") and flash_tuning._valid_entry(kernel, cfg), (kernel, cfg)
