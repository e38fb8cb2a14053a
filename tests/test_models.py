"""The encoder and predictor: sizes, names, initialisation, packed == per-sequence, compile, bad input."""
import math

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from vjepa_fast.masks import PackedMasks
from vjepa_fast.models.vit import INIT_TRUNC
from vjepa_fast.models import (PREDICTOR_DEFAULTS, VIT_SIZES, Block, Predictor, VisionTransformer, interpolate_pos,
                               sincos_3d)

# A small model with awkward sizes: grid (2, 2, 3) -> N = 12 tokens, width 24, 3 heads of 8.
SMALL = dict(size="tiny", img_size=(8, 12), num_frames=4, patch_size=4, tubelet_size=2, embed_dim=24, depth=2,
             num_heads=3)


def _small_vit(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(**SMALL).to(dtype)


def _pack(sets, B, N):
    """PackedMasks from sets[m][b] = (ctx indices, tgt indices), written out independently of masks.py."""
    M = len(sets)
    ctx_rows, tgt_rows, mask_id, ctx_len, tgt_len = [], [], [], [], []
    for m in range(M):
        for b in range(B):
            c, t = sorted(sets[m][b][0]), sorted(sets[m][b][1])
            ctx_rows += [b * N + n for n in c]
            tgt_rows += [b * N + n for n in t]
            mask_id += [m] * len(t)
            ctx_len.append(len(c))
            tgt_len.append(len(t))
    cu = lambda lens: torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], dtype=torch.int32)
    ctx_cu, tgt_cu = cu(ctx_len), cu(tgt_len)
    pred_cu = ctx_cu + tgt_cu
    ctx_slots, tgt_slots = [], []
    for s in range(M * B):
        start = int(pred_cu[s])
        ctx_slots += range(start, start + ctx_len[s])
        tgt_slots += range(start + ctx_len[s], start + ctx_len[s] + tgt_len[s])
    tgt_counts = [sum(tgt_len[m * B:(m + 1) * B]) for m in range(M)]
    # The predictor's gather, slot by slot: a context slot reads context row j, a target slot mask token Rc + m;
    # the position is the token n either way.
    Rc = len(ctx_rows)
    src_rows, pos_rows = [0] * (Rc + len(tgt_rows)), [0] * (Rc + len(tgt_rows))
    for j, (slot, row) in enumerate(zip(ctx_slots, ctx_rows)):
        src_rows[slot], pos_rows[slot] = j, row % N
    for slot, row, m in zip(tgt_slots, tgt_rows, mask_id):
        src_rows[slot], pos_rows[slot] = Rc + m, row % N
    i64 = lambda v: torch.tensor(v, dtype=torch.int64)
    return PackedMasks(num_tokens=N, batch_size=B, num_masks=M, ctx_rows=i64(ctx_rows), ctx_cu=ctx_cu,
                       ctx_max=max(ctx_len), tgt_rows=i64(tgt_rows), tgt_cu=tgt_cu, tgt_max=max(tgt_len),
                       tgt_mask_id=i64(mask_id), tgt_counts=i64(tgt_counts), pred_cu=pred_cu,
                       pred_max=int((pred_cu[1:] - pred_cu[:-1]).max()), pred_ctx_slots=i64(ctx_slots),
                       pred_tgt_slots=i64(tgt_slots), pred_src_rows=i64(src_rows), pred_pos_rows=i64(pos_rows))


def _random_sets(B, M, N, gen, ctx_lens):
    """Random disjoint context / target sets; ctx_lens[s] is the context length of sequence s = m * B + b."""
    sets = [[None] * B for _ in range(M)]
    for m in range(M):
        for b in range(B):
            perm = torch.randperm(N, generator=gen).tolist()
            lc = ctx_lens[m * B + b]
            lt = int(torch.randint(1, N - lc + 1, (1,), generator=gen))
            sets[m][b] = (perm[:lc], perm[lc:lc + lt])
    return sets


def _seq_forward(model, tokens, pos, idx, b):
    """One sequence through the blocks on the dense path (B = 1, uniform_len = L)."""
    x = tokens[b, idx] + pos[idx]
    L = len(idx)
    cu = torch.tensor([0, L], dtype=torch.int32)
    return model.run_blocks(x, cu, L, uniform_len=L)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- sizes, names, init


def test_parameter_counts_vitl():
    with torch.device("meta"):
        enc = VisionTransformer("large")
        pred = Predictor(enc.embed_dim, grid=enc.grid, **PREDICTOR_DEFAULTS["large"])
    n_enc = sum(p.numel() for p in enc.parameters())
    n_pred = sum(p.numel() for p in pred.parameters())
    assert abs(n_enc - 304e6) / 304e6 < 0.01, n_enc
    assert abs(n_pred - 22e6) / 22e6 < 0.05, n_pred
    assert enc.grid == (8, 14, 14) and enc.num_tokens == 1568 and tuple(enc.pos_embed.shape) == (1, 1568, 1024)
    assert tuple(pred.predictor_pos_embed.shape) == (1, 1568, 384) and pred.num_heads == 16


@pytest.mark.parametrize("size", sorted(VIT_SIZES))
def test_every_size_builds(size):
    with torch.device("meta"):
        enc = VisionTransformer(size)
        pred = Predictor(enc.embed_dim, grid=enc.grid, **PREDICTOR_DEFAULTS[size])
    cfg = VIT_SIZES[size]
    assert len(enc.blocks) == cfg["depth"] and enc.blocks[0].attn.num_heads == cfg["num_heads"]
    assert len(pred.predictor_blocks) == PREDICTOR_DEFAULTS[size]["depth"]
    if size == "giant":
        assert enc.blocks[0].mlp.fc1.out_features == 6144


def test_state_dict_names_match_reference():
    enc, pred = _small_vit(), Predictor(24, pred_dim=12, depth=2, num_heads=3, grid=(2, 2, 3))
    per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    expect = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    expect |= {f"blocks.{i}.{m}.{p}" for i in range(2) for m in per_block for p in ("weight", "bias")}
    assert set(enc.state_dict()) == expect
    expect = {"predictor_embed.weight", "predictor_embed.bias", "mask_tokens.0", "mask_tokens.1",
              "predictor_pos_embed", "predictor_norm.weight", "predictor_norm.bias", "predictor_proj.weight",
              "predictor_proj.bias"}
    expect |= {f"predictor_blocks.{i}.{m}.{p}" for i in range(2) for m in per_block for p in ("weight", "bias")}
    assert set(pred.state_dict()) == expect
    assert tuple(enc.state_dict()["patch_embed.proj.weight"].shape) == (24, 3, 2, 4, 4)
    # pos_embed is a fixed buffer, not a parameter.
    assert "pos_embed" not in dict(enc.named_parameters())


def _trunc_std(std=0.02, k=INIT_TRUNC):
    """Standard deviation of N(0, std^2) truncated at +-k std."""
    phi = math.exp(-k * k / 2) / math.sqrt(2 * math.pi)
    z = math.erf(k / math.sqrt(2))
    return std * math.sqrt(1 - 2 * k * phi / z)


def _check_trunc(w, scale):
    w = w.detach().double()
    assert abs(w.mean().item()) < 0.05 * 0.02 * scale
    assert abs(w.std().item() / (_trunc_std() * scale) - 1) < 0.06, (w.std().item(), _trunc_std() * scale)
    assert w.abs().max().item() <= INIT_TRUNC * 0.02 * scale * (1 + 1e-6)


@pytest.mark.parametrize("scheme", ["reference", "depth_scaled"])
def test_init_statistics(scheme):
    # reference: every Linear / Conv3d weight at std 0.02 (the original training script re-draws every Linear after
    # building the models); depth_scaled: block i's attn.proj / mlp.fc2 at 0.02 / sqrt(2 i), the constructors' init.
    torch.manual_seed(1)
    enc = VisionTransformer("tiny", img_size=32, num_frames=4, init=scheme)
    pred = Predictor(96, pred_dim=96, depth=3, num_heads=4, grid=enc.grid, init=scheme)
    for blocks in (enc.blocks, pred.predictor_blocks):
        for i, blk in enumerate(blocks, start=1):
            down = 1 / math.sqrt(2 * i) if scheme == "depth_scaled" else 1.0
            _check_trunc(blk.attn.qkv.weight, 1.0)
            _check_trunc(blk.mlp.fc1.weight, 1.0)
            _check_trunc(blk.attn.proj.weight, down)
            _check_trunc(blk.mlp.fc2.weight, down)
    _check_trunc(enc.patch_embed.proj.weight, 1.0)
    _check_trunc(pred.predictor_embed.weight, 1.0)
    _check_trunc(pred.predictor_proj.weight, 1.0)
    for model in (enc, pred):
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                assert torch.count_nonzero(p) == 0, name
            if "norm" in name and name.endswith("weight"):
                assert torch.equal(p, torch.ones_like(p)), name
    for tok in pred.mask_tokens:
        assert tuple(tok.shape) == (1, 1, 96) and torch.count_nonzero(tok) == 0 and tok.requires_grad
    assert torch.equal(enc.pos_embed[0], sincos_3d(enc.grid, 96))
    assert torch.equal(pred.predictor_pos_embed[0], sincos_3d(enc.grid, 96))


def test_default_init_is_the_reference_one_and_the_config_key_selects():
    from vjepa_fast.config import ConfigError, load_config
    from vjepa_fast.models.build import build_model

    small = ["data.num_frames=4", "data.crop_size=32"]
    for scheme in ("reference", "depth_scaled"):
        torch.manual_seed(0)
        model = build_model(load_config(None, small + ([f"model.init={scheme}"] if scheme != "reference" else [])))
        # Block i (from 1) is down-scaled by sqrt(2 i) under depth_scaled only.
        down = (lambda i: 1 / math.sqrt(2 * i)) if scheme == "depth_scaled" else (lambda i: 1.0)
        for w in (model.encoder.blocks[3].attn.proj.weight, model.encoder.blocks[3].mlp.fc2.weight):
            _check_trunc(w, down(4))
        _check_trunc(model.predictor.predictor_blocks[1].mlp.fc2.weight, down(2))
    with pytest.raises(ConfigError, match="model.init"):
        load_config(None, ["model.init=xavier"])
    with pytest.raises(ValueError, match="init scheme"):
        VisionTransformer("tiny", img_size=32, num_frames=4, init="xavier")


# The original V-JEPA code's ViT definitions (width, depth, heads, MLP ratio) and its pretraining predictor (width
# 384, depth 12, the encoder's head count), written out here independently of VIT_SIZES.
ORIGINAL_SIZES = {
    "small": (384, 12, 6, 4.0), "base": (768, 12, 12, 4.0), "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0), "giant": (1408, 40, 16, 48 / 11),
}


@pytest.mark.parametrize("size", sorted(ORIGINAL_SIZES))
def test_size_tables_match_the_original(size):
    width, depth, heads, ratio = ORIGINAL_SIZES[size]
    with torch.device("meta"):
        enc = VisionTransformer(size)
        pred = Predictor(enc.embed_dim, grid=enc.grid, **PREDICTOR_DEFAULTS[size])
    assert (enc.embed_dim, len(enc.blocks), enc.num_heads) == (width, depth, heads)
    assert enc.blocks[0].attn.head_dim * heads == width
    assert enc.blocks[0].mlp.fc1.out_features == round(width * ratio)
    assert (pred.pred_dim, len(pred.predictor_blocks), pred.num_heads) == (384, 12, heads)
    assert pred.predictor_blocks[0].attn.head_dim == 384 // heads
    assert pred.predictor_blocks[0].mlp.fc1.out_features == 4 * 384


def test_giant_has_16_heads_and_head_counts_can_be_set():
    from vjepa_fast.config import ConfigError, load_config
    from vjepa_fast.models.build import build_model

    assert VIT_SIZES["giant"]["num_heads"] == 16 and 1408 // 16 == 88
    with torch.device("meta"):
        model = build_model(load_config(None, ["model.size=giant"]))
    assert model.encoder.blocks[0].attn.head_dim == 88 and model.predictor.num_heads == 16
    # V-JEPA 2's ViT-g checkpoints were trained with 22 encoder heads and a 12-head predictor.
    with torch.device("meta"):
        model = build_model(load_config(None, ["model.size=giant", "model.num_heads=22", "model.pred_num_heads=12"]))
    assert model.encoder.num_heads == 22 and model.predictor.num_heads == 12
    with pytest.raises(ConfigError, match="model.pred_num_heads: width 48 is not a positive multiple of the 7 heads"):
        load_config(None, ["model.pred_num_heads=7"])
    with pytest.raises(ConfigError, match="model.num_heads"):
        load_config(None, ["model.num_heads=5"])


# ---------------------------------------------------------------- encoder: packed == per-sequence


def test_packed_encoder_equals_per_sequence():
    model = _small_vit()
    B, M, N = 3, 2, model.num_tokens
    gen = torch.Generator().manual_seed(2)
    sets = _random_sets(B, M, N, gen, ctx_lens=[1, 7, 11, 5, 2, 9])  # 1 and N-1 among them
    pm = _pack(sets, B, N)
    clips = torch.randn(B, 3, 4, 8, 12, dtype=torch.float64, generator=gen)
    weight = torch.randn(pm.ctx_rows.numel(), 24, dtype=torch.float64, generator=gen)

    out = model(clips, pm.ctx_rows, pm.ctx_cu, pm.ctx_max)
    assert out.shape == (pm.ctx_rows.numel(), 24)
    (out * weight).sum().backward()
    packed_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    tokens, pos = model.patchify(clips), model.pos_embed[0]
    ref = []
    for m in range(M):
        for b in range(B):
            ref.append(_seq_forward(model, tokens, pos, torch.tensor(sorted(sets[m][b][0])), b))
    ref = torch.cat(ref)
    (ref * weight).sum().backward()
    ref_grads = _grads(model)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    assert set(packed_grads) == set(ref_grads) and len(ref_grads) == len(list(model.parameters()))
    for name in ref_grads:
        torch.testing.assert_close(packed_grads[name], ref_grads[name], atol=1e-10, rtol=1e-10, msg=name)


def test_dense_equals_packed_full_rows():
    # The dense path (batched SDPA) and the packed path over every token of every clip are the same computation.
    model = _small_vit()
    B, N = 2, model.num_tokens
    clips = torch.randn(B, 3, 4, 8, 12, dtype=torch.float64)
    dense = model(clips)
    assert dense.shape == (B, N, 24)
    rows = torch.arange(B * N)
    cu = torch.arange(B + 1, dtype=torch.int32) * N
    packed = model(clips, rows, cu, N)
    torch.testing.assert_close(dense.reshape(B * N, 24), packed, atol=1e-10, rtol=0)
    # A sample's output does not depend on the other samples of the batch.
    torch.testing.assert_close(model(clips[1:]), dense[1:], atol=1e-10, rtol=0)


def test_other_clip_size_uses_interpolated_positions():
    model = _small_vit()
    clips = torch.randn(2, 3, 8, 16, 12, dtype=torch.float64)  # grid (4, 4, 3) instead of (2, 2, 3)
    out = model(clips)
    assert out.shape == (2, 48, 24)
    pos = interpolate_pos(model.pos_embed[0], (2, 2, 3), (4, 4, 3))
    x = (model.patchify(clips) + pos).reshape(96, 24)
    ref = model.run_blocks(x, torch.tensor([0, 48, 96], dtype=torch.int32), 48, uniform_len=48)
    torch.testing.assert_close(out, ref.reshape(2, 48, 24), atol=1e-10, rtol=0)
    # Cached per grid; a new buffer value (e.g. a loaded checkpoint) is not served stale.
    assert model.pos_table((4, 4, 3)) is model.pos_table((4, 4, 3))
    sd = model.state_dict()
    sd["pos_embed"] = torch.randn_like(sd["pos_embed"])
    model.load_state_dict(sd)
    torch.testing.assert_close(model.pos_table((4, 4, 3)), interpolate_pos(sd["pos_embed"][0], (2, 2, 3), (4, 4, 3)))


# ---------------------------------------------------------------- predictor


def _predictor_loop(pred, ctx, sets, B, N):
    """Per-sequence predictor: [embed(ctx) + pos ; mask token + pos], dense blocks, norm, project targets."""
    pos = pred.predictor_pos_embed[0]
    out, r = [], 0
    for m in range(len(sets)):
        for b in range(B):
            c, t = sorted(sets[m][b][0]), sorted(sets[m][b][1])
            x = pred.predictor_embed(ctx[r:r + len(c)]) + pos[c]
            r += len(c)
            y = pred.mask_tokens[m].reshape(1, -1) + pos[t]
            seq = torch.cat([x, y])
            L = seq.shape[0]
            cu = torch.tensor([0, L], dtype=torch.int32)
            for blk in pred.predictor_blocks:
                seq = blk(seq, cu, L, uniform_len=L)
            out.append(pred.predictor_proj(pred.predictor_norm(seq[len(c):])))
    return torch.cat(out)


def test_predictor_equals_per_sequence_loop():
    torch.manual_seed(3)
    B, M, N, D = 2, 3, 12, 24
    pred = Predictor(D, pred_dim=20, depth=2, num_heads=4, grid=(2, 2, 3), num_mask_tokens=3).double()
    with torch.no_grad():  # never test on zeros: give the mask tokens distinct values
        for tok in pred.mask_tokens:
            tok.normal_()
    gen = torch.Generator().manual_seed(4)
    sets = _random_sets(B, M, N, gen, ctx_lens=[1, 11, 6, 3, 10, 5])
    pm = _pack(sets, B, N)
    ctx = torch.randn(pm.ctx_rows.numel(), D, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(pm.tgt_rows.numel(), D, dtype=torch.float64, generator=gen)

    z = pred(ctx, pm)
    assert z.shape == (pm.tgt_rows.numel(), D)
    (z * weight).sum().backward()
    packed_grads, packed_dctx = _grads(pred), ctx.grad.clone()
    pred.zero_grad(set_to_none=True)
    ctx.grad = None

    ref = _predictor_loop(pred, ctx, sets, B, N)
    (ref * weight).sum().backward()
    ref_grads = _grads(pred)
    torch.testing.assert_close(z, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(packed_dctx, ctx.grad, atol=1e-10, rtol=1e-10)
    assert set(packed_grads) == set(ref_grads) and len(ref_grads) == len(list(pred.parameters()))
    for name in ref_grads:
        torch.testing.assert_close(packed_grads[name], ref_grads[name], atol=1e-10, rtol=1e-10, msg=name)


def test_predictor_uses_fewer_masks_than_tokens():
    # Two mask tokens, one configuration this batch: mask token 1 gets no gradient contribution.
    torch.manual_seed(5)
    pred = Predictor(16, pred_dim=8, depth=1, num_heads=2, grid=(1, 2, 3)).double()
    gen = torch.Generator().manual_seed(6)
    sets = _random_sets(2, 1, 6, gen, ctx_lens=[2, 5])
    pm = _pack(sets, 2, 6)
    z = pred(torch.randn(pm.ctx_rows.numel(), 16, dtype=torch.float64), pm)
    z.square().sum().backward()
    assert pred.mask_tokens[0].grad.abs().sum() > 0
    assert pred.mask_tokens[1].grad is None or torch.count_nonzero(pred.mask_tokens[1].grad) == 0


# ---------------------------------------------------------------- torch.compile of one block


class Recompiled(AssertionError):
    pass


def _compiled_block_run(grad: bool, backend: str):
    torch.manual_seed(7)
    block = Block(32, 4)
    with torch.no_grad():  # non-trivial LayerNorm affine so every parameter matters
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(block, dynamic=True, fullgraph=True, backend=counter)
    frames = []
    for lens in ([5, 1, 7], [13, 2, 17, 3]):  # different token counts, sequence counts and max lengths
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
        x = torch.randn(sum(lens), 32, requires_grad=grad)
        with torch.set_grad_enabled(grad):
            out = compiled(x, cu, max(lens))
            ref = block(x, cu, max(lens))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        if grad:
            w = torch.randn_like(ref)
            got = torch.autograd.grad((out * w).sum(), [x, *block.parameters()])
            want = torch.autograd.grad((ref * w).sum(), [x, *block.parameters()])
            for g, r in zip(got, want):
                torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
        frames.append(counter.frame_count)
    assert frames[0] >= 1
    if frames[1] != frames[0]:
        raise Recompiled(f"the second token count recompiled the block ({frames[0]} -> {frames[1]} compilations)")


def test_compiled_block_inference_no_recompile():
    # One compile thread: on a small shared CPU, starting inductor's worker pool costs more than the compile.
    with torch._inductor.config.patch(compile_threads=1):
        _compiled_block_run(grad=False, backend="inductor")


def test_compiled_block_training_no_recompile():
    # aot_eager traces the same joint forward/backward graph as inductor without its (slow on CPU) code generation.
    _compiled_block_run(grad=True, backend="aot_eager")


# ---------------------------------------------------------------- bad input


def test_bad_input_errors():
    model = _small_vit(torch.float32)
    with pytest.raises(ValueError, match="frames"):
        model(torch.randn(1, 3, 5, 8, 12))  # 5 frames, tubelet 2
    with pytest.raises(ValueError, match="patches"):
        model(torch.randn(1, 3, 4, 10, 12))  # height 10, patch 4
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model(torch.randn(1, 1, 4, 8, 12))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model(torch.randn(3, 4, 8, 12))
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(torch.randn(1, 3, 4, 8, 12), rows=torch.arange(3))
    with pytest.raises(IndexError, match="out of range"):
        model(torch.randn(1, 3, 4, 8, 12), torch.tensor([0, 12]), torch.tensor([0, 2], dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="unknown ViT size"):
        VisionTransformer("enormous")
    with pytest.raises(ValueError, match="overrides"):
        VisionTransformer("tiny", embed_dims=10)
    with pytest.raises(ValueError, match="tiled"):
        VisionTransformer("tiny", img_size=30)
    with pytest.raises(ValueError, match="divisible"):
        VisionTransformer("tiny", num_heads=5)

    pred = Predictor(24, pred_dim=12, depth=1, num_heads=3, grid=(2, 2, 3))
    pm = _pack(_random_sets(2, 2, 12, torch.Generator().manual_seed(0), ctx_lens=[3, 4, 5, 6]), 2, 12)
    ctx = torch.randn(pm.ctx_rows.numel(), 24)
    with pytest.raises(ValueError, match="tokens per clip"):
        Predictor(24, pred_dim=12, depth=1, num_heads=3, grid=(2, 2, 2))(ctx, pm)
    with pytest.raises(ValueError, match="mask tokens"):
        Predictor(24, pred_dim=12, depth=1, num_heads=3, grid=(2, 2, 3), num_mask_tokens=1)(ctx, pm)
    with pytest.raises(ValueError, match="rows"):
        pred(ctx[1:], pm)
    with pytest.raises(ValueError, match=r"\[Rc, 24\]"):
        pred(torch.randn(pm.ctx_rows.numel(), 23), pm)


def test_vjepa_implements_the_trainer_protocol():
    from vjepa_fast.config import load_config
    from vjepa_fast.masks import MultiBlockMasker, pack_masks
    from vjepa_fast.models.build import build_model
    from vjepa_fast.models.protocol import PretrainModel

    model = build_model(load_config(None, ["data.num_frames=4", "data.crop_size=64"]))
    assert isinstance(model, PretrainModel)
    assert model.top_modules() == [model.encoder, model.predictor, model.target_encoder]
    assert model.trainable_modules() == [model.encoder, model.predictor]
    targets, sources = model.ema_pairs()
    assert len(targets) == len(sources) == len(list(model.encoder.parameters())) > 0
    masks = pack_masks(MultiBlockMasker(model.grid, seed=1).sample(0, [0, 1, 2]), math.prod(model.grid))
    counts = torch.tensor([40.0, 25.0], dtype=torch.float64)  # target rows per mask over all processes
    w = model.row_weights(masks, counts, world_size=2)
    want = torch.tensor([2 / (2 * 40 * model.encoder.embed_dim), 2 / (2 * 25 * model.encoder.embed_dim)])
    assert w.dtype == torch.float32 and torch.equal(w, want.float()[masks.tgt_mask_id])
    assert model.step_flops(masks) > 0
