"""V-JEPA 2's rotary positions: the fused op against its definition, packed masked rows against dense attention,
a tiny rotary model training with the default loop, and the op's Triton kernel (forced through conftest, run by the
interpreter on the CPU) against the fp64 definition, forward and backward, into NaN-poisoned outputs."""
import math
import sys

import pytest
import torch

from conftest import force_backend
from vjepa_fast import ops, train
from vjepa_fast.config import load_config
from vjepa_fast.masks import MultiBlockMasker, pack_masks
from vjepa_fast.models.rope import grid_positions, rope_tables
from vjepa_fast.models.vit import VisionTransformer
from vjepa_fast.ops.rope import RopeTables, apply_rope_qkv, apply_rope_qkv_reference, rope_segment
from vjepa_fast.parallel import DistInfo
from vjepa_fast.run.schedules import Schedules, wsd_lr_at


@pytest.mark.parametrize("head_dim", [6, 7, 11, 16, 24, 64, 88])
def test_fused_rotation_matches_the_definition(head_dim):
    torch.manual_seed(head_dim)
    grid = (3, 5, 7)
    qkv = torch.randn(40, 3, 2, head_dim)
    index = torch.randint(0, math.prod(grid), (40,))
    out = apply_rope_qkv(qkv, rope_tables(index, grid, head_dim))
    torch.testing.assert_close(out, apply_rope_qkv_reference(qkv, grid_positions(index, grid)), rtol=0, atol=2e-6)
    assert torch.equal(out[:, 2], qkv[:, 2])  # v untouched
    d = rope_segment(head_dim)
    assert torch.equal(out[:, :2, :, 3 * d:], qkv[:, :2, :, 3 * d:])  # the unrotated tail
    # position (0, 0, 0) is the identity
    zero = apply_rope_qkv(qkv, rope_tables(torch.zeros(40, dtype=torch.long), grid, head_dim))
    torch.testing.assert_close(zero, qkv)


def test_positions_are_the_grid_index():
    grid = (2, 3, 4)
    n = torch.arange(24)
    pos = grid_positions(n, grid)
    assert pos[23].tolist() == [1, 2, 3] and pos[5].tolist() == [0, 1, 1]
    assert torch.equal(pos[:, 0] * 12 + pos[:, 1] * 4 + pos[:, 2], n.float())


def _attention_by_hand(attn, x, rows, cu, N, grid):
    """Per sequence: q, k, v from the fused projection, rotated by the definition, softmax(q k^T / sqrt(Dh)) v."""
    out = torch.empty_like(x)
    H, Dh = attn.num_heads, attn.head_dim
    for s in range(len(cu) - 1):
        a, b = int(cu[s]), int(cu[s + 1])
        qkv = attn.qkv(x[a:b]).reshape(b - a, 3, H, Dh)
        qkv = apply_rope_qkv_reference(qkv, grid_positions(rows[a:b] % N, grid))
        q, k, v = qkv.permute(1, 2, 0, 3).unbind(0)  # [H, L, Dh]
        w = (q @ k.transpose(-1, -2) / math.sqrt(Dh)).softmax(-1)
        out[a:b] = attn.proj((w @ v).transpose(0, 1).reshape(b - a, H * Dh))
    return out


def test_varlen_rotary_attention_on_packed_masked_rows_matches_dense_math():
    torch.manual_seed(1)
    enc = VisionTransformer("tiny", img_size=64, num_frames=4, pos_embed="rope").double()
    grid, N = enc.grid, enc.num_tokens
    masks = pack_masks(MultiBlockMasker(grid, seed=3).sample(0, [0, 1, 2]), N)
    x = torch.randn(masks.ctx_rows.numel(), enc.embed_dim, dtype=torch.float64)
    attn = enc.blocks[0].attn
    got = attn(x, masks.ctx_cu, masks.ctx_max, rope=enc.rope_for(masks.ctx_rows % N, grid))
    want = _attention_by_hand(attn, x, masks.ctx_rows, masks.ctx_cu.tolist(), N, grid)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_packed_full_rows_equal_the_dense_path():
    torch.manual_seed(2)
    enc = VisionTransformer("tiny", img_size=48, num_frames=4, pos_embed="rope").eval()
    assert enc.pos_embed is None and "pos_embed" not in enc.state_dict()
    clips = torch.randn(2, 3, 4, 48, 48)
    dense = enc(clips)
    N = enc.num_tokens
    # rows in a shuffled order within each clip: positions follow each row's token index, not its slot
    perm = torch.cat([torch.randperm(N), N + torch.randperm(N)])
    cu = torch.tensor([0, N, 2 * N], dtype=torch.int32)
    packed = enc(clips, rows=perm, cu_seqlens=cu, max_seqlen=N)
    torch.testing.assert_close(packed, dense.reshape(2 * N, -1)[perm], rtol=1e-4, atol=1e-5)


def test_tiny_rotary_model_trains_with_the_default_loop(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", "model.pos_embed=rope", "train.steps=6", "train.batch_size=2",
                             "train.log_every=1", "train.progress=false", "data.num_workers=0", "data.num_frames=4",
                             "data.crop_size=32", "optim.warmup_steps=1"])
    trainer = train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    assert trainer.model.predictor.predictor_pos_embed is None
    before = trainer.model.encoder.blocks[0].attn.qkv.weight.detach().clone()
    rows = trainer.run()
    assert len(rows) == 6 and all(math.isfinite(r["loss"]) for r in rows)
    assert not torch.equal(before, trainer.model.encoder.blocks[0].attn.qkv.weight)


def test_wsd_schedule_warms_up_holds_and_cools_down():
    lrs = [wsd_lr_at(k, 4, 20, 5, 0.1, 1.0, 0.0) for k in range(21)]  # k: the scheduler's count, step + 1
    assert lrs[0] == 0.1 and lrs[2] == pytest.approx(0.55)
    assert all(v == 1.0 for v in lrs[4:16])
    assert lrs[16] == pytest.approx(0.8) and lrs[20] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(lrs[15:], lrs[16:]))
    cfg = load_config(None, ["optim.lr_schedule=wsd", "optim.cooldown_steps=30", "train.steps=100"])
    sched = Schedules(cfg.optim, 100)
    assert sched(50)["lr"] == cfg.optim.lr and sched(99)["lr"] == pytest.approx(cfg.optim.final_lr)


def test_the_fused_op_traces_as_one_graph():
    # torch.compile sees the whole rotation (no graph break), so Inductor can fuse it with the qkv read
    torch.manual_seed(3)
    qkv = torch.randn(30, 3, 2, 20)
    tables = rope_tables(torch.randint(0, 18, (30,)), (2, 3, 3), 20)
    compiled = torch.compile(apply_rope_qkv, fullgraph=True, dynamic=True, backend="aot_eager")
    torch.testing.assert_close(compiled(qkv, tables), apply_rope_qkv(qkv, tables), rtol=0, atol=0)


def test_one_table_serves_every_whole_clip():
    torch.manual_seed(4)
    grid, N, Dh = (2, 2, 3), 12, 18
    qkv = torch.randn(3 * N, 3, 2, Dh)
    per_row = apply_rope_qkv(qkv, rope_tables(torch.arange(3 * N) % N, grid, Dh))
    torch.testing.assert_close(apply_rope_qkv(qkv, rope_tables(torch.arange(N), grid, Dh)), per_row, rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple"):
        apply_rope_qkv(qkv[:-1], rope_tables(torch.arange(N), grid, Dh))


TRITON_ROPE = "vjepa_fast.ops.triton_rope"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton kernel: compiled there, interpreted here


@pytest.fixture
def triton_rope(monkeypatch):
    """The rope op with its Triton backend forced for one test (interpreted on the CPU: tests/conftest.py)."""
    force_backend("rope", "triton", monkeypatch)


def _case(R, H, Dh, grid, whole_clips, dtype, seed):
    """qkv [R, 3, H, Dh] in `dtype`, the token index of each row, the tables (one per clip position when
    `whole_clips`, R a multiple of the clip's N, else one per row) and an upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    N = math.prod(grid)
    index = torch.arange(R) % N if whole_clips else torch.randint(0, N, (R,), generator=g)
    table_index = torch.arange(N) if whole_clips else index
    tables = rope_tables(table_index, grid, Dh, torch.float64 if dtype == torch.float64 else torch.float32)
    # drawn in float64, so float64 inputs use all their bits (float32 draws would hide a float32 computation)
    qkv = (torch.randn(R, 3, H, Dh, generator=g, dtype=torch.float64) * 2).to(dtype)
    grad = torch.randn(R, 3, H, Dh, generator=g, dtype=torch.float64).to(dtype)
    return qkv, index, tables, grad


def _on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


def _fast(tables, qkv, grad):
    """The forced backend's output and input gradient, computed on DEVICE and returned on the CPU."""
    cos, sin, qkv, grad = _on_device(tables.cos, tables.sin, qkv, grad)
    out, dqkv = _fwd_bwd(lambda x: apply_rope_qkv(x, RopeTables(cos, sin)), qkv, grad)
    return out.cpu(), dqkv.cpu()


def _fwd_bwd(fn, qkv, grad):
    x = qkv.detach().clone().requires_grad_(True)
    out = fn(x)
    (dx,) = torch.autograd.grad(out, x, grad)
    return out.detach(), dx


def _assert_rule(what, fast, same, truth):
    """docs/testing.md: at most twice as far from the fp64 truth as the definition in the same dtype, plus four ulps
    of the result's scale (the tables are float32, and the fast path rounds twice where the definition rounds once)."""
    assert fast.shape == truth.shape and fast.dtype == same.dtype, what
    assert torch.isfinite(fast).all(), f"{what}: non-finite (unwritten) elements"
    if truth.numel() == 0:
        return
    err = (fast.double() - truth).abs().max().item()
    err_same = (same.double() - truth).abs().max().item()
    slack = 4 * torch.finfo(same.dtype).eps * truth.abs().max().item()
    assert err <= 2 * err_same + slack, f"{what}: error {err:.3g} vs definition {err_same:.3g} (+{slack:.3g})"


# Awkward sizes: one row, primes, empty; head dims with no tail (6), a tail (20, 88), odd (7, 11: the last channel
# is its own pair partner); rows per program straddled (R not a multiple of BLOCK_R), H * Dh not a power of 2.
SHAPES = [(1, 1, 6, (1, 1, 1), False), (13, 3, 7, (2, 3, 3), False), (37, 2, 20, (3, 5, 7), False),
          (2 * 18, 5, 11, (2, 3, 3), True), (3 * 12, 4, 88, (2, 2, 3), True), (0, 2, 20, (2, 3, 3), False),
          (29, 16, 64, (3, 5, 7), False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("R,H,Dh,grid,whole_clips", SHAPES, ids=[f"R{s[0]}-H{s[1]}-Dh{s[2]}" for s in SHAPES])
def test_triton_kernel_matches_fp64_forward_and_backward(triton_rope, R, H, Dh, grid, whole_clips, dtype):
    qkv, index, tables, grad = _case(R, H, Dh, grid, whole_clips, dtype, seed=R * 31 + Dh)
    out, dqkv = _fast(tables, qkv, grad)
    assert TRITON_ROPE in sys.modules, "the forced Triton backend never imported its kernel"
    assert set(ops.chosen_backends()["rope"].values()) == {"triton"}
    positions = grid_positions(index, grid)
    truth, dtruth = _fwd_bwd(lambda x: apply_rope_qkv_reference(x, positions), qkv.double(), grad.double())
    same, dsame = _fwd_bwd(lambda x: apply_rope_qkv_reference(x, positions), qkv, grad)
    _assert_rule("out", out, same, truth)
    _assert_rule("dqkv", dqkv, dsame, dtruth)
    # v and its gradient are copies, the unrotated tail too (cos 1, sin 0: one exact product, one exact add)
    assert torch.equal(out[:, 2], qkv[:, 2]) and torch.equal(dqkv[:, 2], grad[:, 2])
    d = rope_segment(Dh)
    assert torch.equal(out[:, :2, :, 3 * d:], qkv[:, :2, :, 3 * d:])


@pytest.mark.parametrize("R,H,Dh,grid,whole_clips", SHAPES[1:5], ids=[f"R{s[0]}-Dh{s[2]}" for s in SHAPES[1:5]])
def test_triton_kernel_writes_every_element(triton_rope, R, H, Dh, grid, whole_clips):
    """Launched into NaN-filled outputs, forward and backward give exactly what the op returned: nothing is left
    unwritten."""
    qkv, _, tables, grad = _case(R, H, Dh, grid, whole_clips, torch.float32, seed=R + Dh)
    out, dqkv = _fast(tables, qkv, grad)
    kernels = sys.modules[TRITON_ROPE]
    qkv, grad, cos, sin = _on_device(qkv, grad, *kernels.working_tables(qkv, tables.cos, tables.sin))
    for x, backward, want in ((qkv, False, out), (grad, True, dqkv)):
        poisoned = torch.full_like(x, float("nan"))
        assert torch.equal(kernels.rope_qkv_into(poisoned, x, cos, sin, backward).cpu(), want)


def test_triton_kernel_copies_non_finite_v_and_keeps_q_k_rows_apart(triton_rope):
    """inf / NaN in v stay exactly where they are (a copy, not v * 1 + neighbour * 0), and one row's NaN in q
    does not reach another row or head."""
    qkv, _, tables, _ = _case(6, 2, 20, (1, 2, 3), True, torch.float32, seed=9)
    qkv[1, 2, 0, 3] = float("inf")
    qkv[2, 2, 1, 4] = float("nan")
    qkv[3, 0, 1, 5] = float("nan")
    out, _ = _fast(tables, qkv, torch.ones_like(qkv))
    torch.testing.assert_close(out[:, 2], qkv[:, 2], rtol=0, atol=0, equal_nan=True)
    bad = torch.isnan(out[:, :2])
    assert bad[3, 0, 1, 4:6].all() and int(bad.sum()) == 2  # the NaN and its pair partner, nothing else
