"""V-JEPA 2's rotary positions: the fused op against its definition, packed masked rows against dense attention,
and a tiny rotary model training with the default loop."""
import math

import pytest
import torch

from vjepa_fast import train
from vjepa_fast.config import load_config
from vjepa_fast.masks import MultiBlockMasker, pack_masks
from vjepa_fast.models.rope import apply_rope_qkv, apply_rope_qkv_reference, grid_positions, rope_segment, \
    rope_tables
from vjepa_fast.models.vit import VisionTransformer
from vjepa_fast.parallel import DistInfo
from vjepa_fast.schedules import Schedules, wsd_lr_at


@pytest.mark.parametrize("head_dim", [6, 16, 24, 64, 88])
def test_fused_rotation_matches_the_definition(head_dim):
    torch.manual_seed(head_dim)
    grid = (3, 5, 7)
    qkv = torch.randn(40, 3, 2, head_dim)
    index = torch.randint(0, math.prod(grid), (40,))
    out = apply_rope_qkv(qkv, rope_tables(index, grid, head_dim))
    torch.testing.assert_close(out, apply_rope_qkv_reference(qkv, index, grid), rtol=0, atol=2e-6)
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
        qkv = apply_rope_qkv_reference(qkv, rows[a:b] % N, grid)
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


def test_triton_kernel_matches_the_torch_op_forward_and_backward(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(5)
    grid, Dh = (2, 3, 3), 20  # rotary segments of 6 and a 2-channel tail
    qkv = torch.randn(2 * 18, 3, 2, Dh, requires_grad=True)
    for index in (torch.arange(18), torch.randint(0, 18, (36,))):  # one table for whole clips / one row each
        tables = rope_tables(index, grid, Dh)
        grad = torch.randn(36, 3, 2, Dh)
        monkeypatch.setenv("VJEPA_FAST_ROPE_BACKEND", "torch")
        want = apply_rope_qkv(qkv, tables)
        (want_grad,) = torch.autograd.grad(want, qkv, grad)
        monkeypatch.setenv("VJEPA_FAST_ROPE_BACKEND", "triton")
        got = apply_rope_qkv(qkv, tables)
        (got_grad,) = torch.autograd.grad(got, qkv, grad)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-6)
