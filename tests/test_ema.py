"""ema_update_: the C++ CPU kernel (and on a GPU the CUDA multi-tensor kernel) against the reference."""
import zlib

import pytest
from conftest import force_backend
import torch

from vjepa_fast import _ext
from vjepa_fast.ops.ema import ema_update_, ema_update_reference

# Empty, one element, odd sizes, sizes straddling the CPU chunk (2**15) and the CUDA chunk (2**14), a 2-D one.
SIZES = [(0,), (1,), (3,), (1023,), (4097,), (16385,), (32769,), (33, 31)]
MOMENTA = [0.0, 1.0, 0.998, 0.5]


@pytest.fixture
def backend(request, monkeypatch):
    return force_backend("ema", request.param, monkeypatch)


def _lists(source_dtypes, device="cpu", gen=None, sizes=SIZES):
    targets = [torch.randn(s, generator=gen).to(device) for s in sizes]
    sources = [torch.randn(s, generator=gen).to(device=device, dtype=source_dtypes[i % len(source_dtypes)])
               for i, s in enumerate(sizes)]
    return targets, sources


def _seed(*key):
    return zlib.crc32(repr(key).encode())  # stable across runs (hash() of a dtype is not)


def _check(targets, sources, momentum):
    """Fast path vs the reference in fp32 and an fp64 reference: at most twice the reference's error over the whole
    list (per tensor, a 3-element tensor can have zero reference error by luck). A skipped element would be off by
    (1 - m) |s - t|, far above either error, so the max also proves every element was written."""
    before = [t.clone() for t in targets]
    ref = [t.clone() for t in targets]
    ema_update_reference(ref, sources, momentum)
    exact = [t.double() for t in before]
    ema_update_reference(exact, [s.double() for s in sources], momentum)
    ema_update_(targets, sources, momentum)
    e_fast = e_ref = 0.0
    for i, (t, r, e, s, b) in enumerate(zip(targets, ref, exact, sources, before)):
        assert t.dtype == torch.float32 and t.shape == b.shape
        if t.numel() == 0:
            continue
        assert torch.isfinite(t).all()
        if momentum == 1.0:
            assert torch.equal(t, b), f"tensor {i}: momentum 1 must leave the target unchanged"
        elif momentum == 0.0:
            assert torch.equal(t, s.float()), f"tensor {i}: momentum 0 must copy the source"
        e_fast = max(e_fast, (t.double() - e).abs().max().item())
        e_ref = max(e_ref, (r.double() - e).abs().max().item())
    assert e_fast <= 2 * e_ref + 1e-12, f"error {e_fast} > 2 x reference error {e_ref}"


@pytest.mark.parametrize("backend", ["cpu", "foreach"], indirect=True)
@pytest.mark.parametrize("source_dtypes", [(torch.float32,), (torch.bfloat16,), (torch.float32, torch.bfloat16)],
                         ids=["fp32", "bf16", "mixed"])
@pytest.mark.parametrize("momentum", MOMENTA)
def test_matches_reference(backend, source_dtypes, momentum):
    gen = torch.Generator().manual_seed(_seed(source_dtypes, momentum))
    targets, sources = _lists(source_dtypes, gen=gen)
    _check(targets, sources, momentum)


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_many_small_tensors_and_parameters(backend):
    # A model's worth of biases and norms plus a few weights, as nn.Parameters (what the training loop passes).
    sizes = [(7,)] * 150 + [(64, 65), (3, 1000, 11)]
    targets, sources = _lists((torch.float32, torch.bfloat16), sizes=sizes)
    targets = [torch.nn.Parameter(t, requires_grad=False) for t in targets]
    sources = [torch.nn.Parameter(s, requires_grad=s.is_floating_point()) for s in sources]
    _check(targets, sources, 0.996)


def test_unsupported_dtypes_fall_back_or_fail_clearly(monkeypatch):
    gen = torch.Generator().manual_seed(_seed("fallback"))
    targets = [torch.randn(5, generator=gen).bfloat16(), torch.randn(4, generator=gen)]
    sources = [torch.randn(5, generator=gen).bfloat16(), torch.randn(4, generator=gen).half()]
    ref = [t.clone() for t in targets]
    ema_update_reference(ref, sources, 0.9)
    ema_update_(targets, sources, 0.9)  # automatic choice: foreach
    for t, r in zip(targets, ref):
        # lerp and multiply-then-add round differently: in bf16 that is up to a couple of ulps at the operands'
        # magnitude (~1 here), which can be a large relative error for a result near zero.
        atol = 2 * torch.finfo(t.dtype).eps
        torch.testing.assert_close(t, r, atol=atol, rtol=atol)
    if _ext.load():
        force_backend("ema", "cpu", monkeypatch)
        with pytest.raises(RuntimeError, match="fp32 targets"):
            ema_update_(targets, sources, 0.9)
        with pytest.raises(ValueError, match="targets must be fp32"):
            torch.ops.vjepa_fast.ema_update_(targets, sources, 0.9)


@pytest.mark.parametrize("backend", ["cpu", "reference"], indirect=True)
def test_bad_inputs_raise_clear_errors(backend):
    t, s = [torch.randn(3)], [torch.randn(3)]
    with pytest.raises(ValueError, match="targets but"):
        ema_update_(t, s + s, 0.9)
    with pytest.raises(ValueError, match="shape"):
        ema_update_(t, [torch.randn(4)], 0.9)
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(t, s, 1.5)
    with pytest.raises(ValueError, match="floating point"):
        ema_update_([torch.zeros(3, dtype=torch.long)], [torch.zeros(3, dtype=torch.long)], 0.9)
    ema_update_([], [], 0.9)  # nothing to do


def test_non_contiguous_target_falls_back():
    base = torch.randn(6, 5)
    t = base.t()  # a non-contiguous view: the update must land in `base`
    s = torch.randn(5, 6)
    want = t.clone()
    ema_update_reference([want], [s], 0.9)
    ema_update_([t], [s], 0.9)
    torch.testing.assert_close(base.t(), want)


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_opcheck(backend):
    targets, sources = _lists((torch.float32, torch.bfloat16), sizes=[(5,), (3, 4), (17,)])
    torch.library.opcheck(torch.ops.vjepa_fast.ema_update_.default, (targets, sources, 0.9))


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_dtensor_local_shards(backend):
    # FSDP2 keeps parameters as DTensors; ema_update_ must update their local shards in place.
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        full_t, full_s = torch.randn(8, 3), torch.randn(8, 3).bfloat16()
        t = distribute_tensor(full_t.clone(), mesh, [Shard(0)])
        s = distribute_tensor(full_s, mesh, [Shard(0)])
        want = [full_t.clone()]
        ema_update_reference(want, [full_s], 0.99)
        ema_update_([t], [s], 0.99)
        torch.testing.assert_close(t.full_tensor(), want[0], rtol=0, atol=1e-6)
    finally:
        if created:
            dist.destroy_process_group()


# ---- GPU: the CUDA multi-tensor kernel, vectorised (aligned) and general (misaligned) paths -----------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
@pytest.mark.parametrize("source_dtypes", [(torch.float32,), (torch.bfloat16,), (torch.float32, torch.bfloat16)],
                         ids=["fp32", "bf16", "mixed"])
@pytest.mark.parametrize("momentum", MOMENTA)
def test_cuda_matches_reference(backend, source_dtypes, momentum):
    gen = torch.Generator().manual_seed(_seed(source_dtypes, momentum, "cuda"))
    targets, sources = _lists(source_dtypes, device="cuda", gen=gen, sizes=SIZES + [(1000003,)])
    _check(targets, sources, momentum)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_cuda_misaligned_storage(backend, offset):
    # Views that start `offset` elements into their storage: offset 0 takes the 16-byte path, others the general one.
    sizes = [(1,), (37,), (4099,), (16384 * 3 + 5,)]
    targets, sources = [], []
    for n in sizes:
        tb, sb = torch.randn(n[0] + offset, device="cuda"), torch.randn(n[0] + offset, device="cuda")
        targets.append(tb[offset:])
        sources.append(sb[offset:] if len(sources) % 2 else sb.bfloat16()[offset:])
    _check(targets, sources, 0.998)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
def test_cuda_many_tensors_one_call(backend):
    sizes = [(int(n),) for n in torch.randint(1, 5000, (400,))] + [(1024, 1024)]
    targets, sources = _lists((torch.float32, torch.bfloat16), device="cuda", sizes=sizes)
    _check(targets, sources, 0.9995)
    torch.library.opcheck(torch.ops.vjepa_fast.ema_update_.default, (targets[:5], sources[:5], 0.9))


@pytest.mark.parametrize("backend", ["cpu", "foreach", "reference"], indirect=True)
def test_target_aliasing_its_source_keeps_it(backend):
    """A target that is its own source (the EMA of a tensor with itself) stays as it was, on every backend."""
    gen = torch.Generator().manual_seed(3)
    t = torch.randn(257, generator=gen)
    want = t.clone()
    ema_update_([t], [t], 0.9)
    torch.testing.assert_close(t, want, rtol=2 * torch.finfo(t.dtype).eps, atol=0)


# ---- the device-side flag `apply`: true = the unflagged result to the bit, false = the targets untouched ----------

def _flag_results(targets, sources, momentum, device="cpu"):
    """(unflagged, apply=True, apply=False) results of ema_update_ on copies of `targets`."""
    out = []
    for apply in (None, True, False):
        got = [t.clone() for t in targets]
        flag = None if apply is None else torch.tensor(apply, device=device)
        ema_update_(got, sources, momentum, apply=flag)
        out.append(got)
    return out


def _assert_flag_semantics(targets, sources, momentum, device="cpu"):
    plain, applied, skipped = _flag_results(targets, sources, momentum, device)
    for i, (t, p, a, s) in enumerate(zip(targets, plain, applied, skipped)):
        assert torch.equal(a, p), f"tensor {i}: apply=True differs from the unflagged call"
        assert torch.equal(s, t), f"tensor {i}: apply=False changed the target"
    changed = [not torch.equal(p, t) for p, t in zip(plain, targets)]
    assert sum(changed) >= len(targets) // 2, "the update changed little: apply=False leaving it would prove nothing"


@pytest.mark.parametrize("backend", ["cpu", "foreach", "reference"], indirect=True)
@pytest.mark.parametrize("source_dtypes", [(torch.float32,), (torch.bfloat16,), (torch.float32, torch.bfloat16)],
                         ids=["fp32", "bf16", "mixed"])
@pytest.mark.parametrize("momentum", [0.998, 0.3])
def test_apply_flag_is_bit_identical_or_a_no_op(backend, source_dtypes, momentum):
    gen = torch.Generator().manual_seed(_seed(source_dtypes, momentum, "apply"))
    targets, sources = _lists(source_dtypes, gen=gen)
    _assert_flag_semantics(targets, sources, momentum)


@pytest.mark.parametrize("backend", ["foreach", "reference"], indirect=True)
@pytest.mark.parametrize("target_dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_apply_flag_on_other_target_dtypes(backend, target_dtype):
    # The fallbacks' other paths: lerp with a tensor weight where it rounds like a float one (fp64), torch.where
    # where it would not (bf16/fp16 targets compute in fp32 with a float weight).
    gen = torch.Generator().manual_seed(_seed(target_dtype, "apply-dtypes"))
    targets = [torch.randn(n, generator=gen).to(target_dtype) for n in (1, 37, 4099)]
    sources = [torch.randn(n, generator=gen).to(src) for n, src in zip((1, 37, 4099), (target_dtype, torch.float32,
                                                                                       torch.bfloat16))]
    _assert_flag_semantics(targets, sources, 0.9)


@pytest.mark.parametrize("backend", ["cpu", "foreach", "reference"], indirect=True)
def test_bad_apply_flag_is_a_clear_error(backend):
    t, s = [torch.randn(3)], [torch.randn(3)]
    for bad, what in [(torch.tensor([True]), "shape"), (torch.tensor(1.0), "float32"), (True, "class"),
                      (torch.tensor(True, device="meta"), "on meta but the targets on cpu")]:
        with pytest.raises(ValueError, match=f"apply.*{what}"):
            ema_update_(t, s, 0.9, apply=bad)
    with pytest.raises(ValueError, match="0-d bool"):
        ema_update_([], [], 0.9, apply=torch.ones(2, dtype=torch.bool))  # checked even with nothing to update
    with pytest.raises(ValueError, match="on cpu but the targets on meta .tensor 1"):  # a list on two devices
        ema_update_(t + [torch.randn(2, device="meta")], s + [torch.randn(2, device="meta")], 0.9,
                    apply=torch.tensor(True))


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_op_checks_the_flag_itself(backend):
    # Direct torch.ops calls skip the Python checks; the C++ side must still refuse a flag it would misread.
    t, s = [torch.randn(3)], [torch.randn(3)]
    with pytest.raises(ValueError, match="0-d bool"):
        torch.ops.vjepa_fast.ema_update_(t, s, 0.9, torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="0-d bool"):
        torch.ops.vjepa_fast.ema_update_(t, s, 0.9, torch.tensor(1.0))


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("apply", [True, False])
def test_opcheck_with_flag(backend, apply):
    targets, sources = _lists((torch.float32, torch.bfloat16), sizes=[(5,), (3, 4), (17,)])
    torch.library.opcheck(torch.ops.vjepa_fast.ema_update_.default, (targets, sources, 0.9, torch.tensor(apply)))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
@pytest.mark.parametrize("apply", [True, False])
def test_cuda_apply_flag(backend, apply):
    """Both flag values on the CUDA kernel (aligned and misaligned tensors, both dtype groups), with no host sync."""
    gen = torch.Generator().manual_seed(_seed("cuda-apply", apply))
    targets, sources = _lists((torch.float32, torch.bfloat16), device="cuda", gen=gen, sizes=SIZES + [(1000003,)])
    targets.append(torch.randn(4099 + 1, device="cuda")[1:])  # a misaligned view: the scalar path
    sources.append(torch.randn(4099, device="cuda").bfloat16())
    _assert_flag_semantics(targets, sources, 0.998, device="cuda")
    flag = torch.tensor(apply, device="cuda")
    got = [t.clone() for t in targets]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ema_update_(got, sources, 0.998, apply=flag)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    want = _flag_results(targets, sources, 0.998, "cuda")[1 if apply else 2]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    torch.library.opcheck(torch.ops.vjepa_fast.ema_update_.default, (targets[:5], sources[:5], 0.9, flag))
    with pytest.raises(ValueError, match="apply on cpu"):
        ema_update_(targets, sources, 0.9, apply=torch.tensor(apply))
