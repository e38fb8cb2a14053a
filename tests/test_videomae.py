"""The VideoMAE baseline: norm-pix targets, the packed decoder and loss against per-clip loops, FLOPs, training."""
import json
import math
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import force_backend
from vjepa_fast.config import load_config
from vjepa_fast.masks import TubeMasker, pack_masks
from vjepa_fast.models.build import build_model
from vjepa_fast.models.protocol import PretrainModel
from vjepa_fast.models.videomae import (DECODER_DEFAULTS, VideoMAE, VideoMAEDecoder, build_videomae, clip_patches,
                                        patch_targets, pixel_mse_loss)
from vjepa_fast.models.vit import VisionTransformer
from vjepa_fast.parallel import block_lists

# Awkward small sizes: grid (2, 3, 5) -> N = 30 tokens, tubes of 2 x 4 x 4 x 3 = 96 values, width 24 with 3 heads.
GRID_HW = (12, 20)
FRAMES, TUBELET, PATCH = 4, 2, 4


def _model(dtype=torch.float64, seed=0, dec_dim=20, dec_depth=2, dec_heads=5):
    torch.manual_seed(seed)
    enc = VisionTransformer(size="tiny", img_size=GRID_HW, num_frames=FRAMES, patch_size=PATCH, tubelet_size=TUBELET,
                            embed_dim=24, depth=2, num_heads=3)
    dec = VideoMAEDecoder(embed_dim=24, dim=dec_dim, depth=dec_depth, num_heads=dec_heads, grid=enc.grid,
                          out_dim=3 * TUBELET * PATCH * PATCH)
    with torch.no_grad():  # a non-zero start for the parts that init at zero, so every path carries signal
        for p in dec.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return VideoMAE(enc, dec).to(dtype)


def _video(B, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    # Per-channel offsets and scales, as normalised clips have: the per-patch statistics must remove them.
    v = torch.randn(B, 3, FRAMES, *GRID_HW, generator=g) * torch.tensor([0.5, 2.0, 1.0]).reshape(1, 3, 1, 1, 1)
    return (v + torch.tensor([1.0, -3.0, 0.25]).reshape(1, 3, 1, 1, 1)).to(dtype)


def _targets_loop(video, rows, tubelet, patch, eps=1e-6):
    """One token at a time: cut its tube out of the clip, standardise each channel, flatten (frame, row, col, ch)."""
    B, C, T, H, W = video.shape
    gt, gh, gw = T // tubelet, H // patch, W // patch
    out = []
    for r in rows.tolist():
        b, n = divmod(r, gt * gh * gw)
        t, rest = divmod(n, gh * gw)
        h, w = divmod(rest, gw)
        tube = video[b, :, t * tubelet:(t + 1) * tubelet, h * patch:(h + 1) * patch, w * patch:(w + 1) * patch]
        tube = tube.double().reshape(C, -1)  # [C, P]
        mean = tube.mean(1, keepdim=True)
        std = ((tube - mean).square().sum(1, keepdim=True) / (tube.shape[1] - 1)).sqrt()
        norm = (tube - mean) / (std + eps)
        out.append(norm.reshape(C, tubelet, patch, patch).permute(1, 2, 3, 0).reshape(-1))
    return torch.stack(out) if out else torch.zeros(0, C * tubelet * patch * patch, dtype=torch.float64)


@pytest.mark.parametrize("tubelet, patch, B", [(2, 4, 3), (1, 2, 1), (4, 4, 2)])
def test_patch_targets_equal_loop(tubelet, patch, B):
    video = _video(B, torch.float32)
    N = (FRAMES // tubelet) * (GRID_HW[0] // patch) * (GRID_HW[1] // patch)
    g = torch.Generator().manual_seed(7)
    rows = torch.randperm(B * N, generator=g)[: max(1, (B * N) // 3)]  # unsorted, a subset
    got = patch_targets(video, rows, tubelet, patch)
    assert got.dtype == torch.float32 and got.shape == (rows.numel(), 3 * tubelet * patch * patch)
    torch.testing.assert_close(got.double(), _targets_loop(video, rows, tubelet, patch), rtol=1e-5, atol=1e-5)
    # each tube's channels are standardised: mean 0, unbiased std 1 (up to eps)
    per_ch = got.double().reshape(rows.numel(), -1, 3)
    torch.testing.assert_close(per_ch.mean(1), torch.zeros(rows.numel(), 3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_ch.std(1), torch.ones(rows.numel(), 3, dtype=torch.float64), atol=1e-4, rtol=0)
    assert patch_targets(video, rows[:0], tubelet, patch).shape == (0, 3 * tubelet * patch * patch)


def test_clip_patches_token_order_matches_patch_embedding():
    """Token n of clip_patches is the tube the encoder's Conv3d embeds as token n."""
    enc = _model(torch.float64).encoder
    video = _video(2)  # fp64: patchify is a plain Conv3d
    tubes = clip_patches(video, TUBELET, PATCH)  # [B * N, P, C]
    w = enc.patch_embed.proj.weight  # [D, C, tubelet, p, p]
    w_flat = w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1)  # (frame, row, col, channel), as the tubes
    expect = tubes.reshape(tubes.shape[0], -1) @ w_flat.T + enc.patch_embed.proj.bias
    torch.testing.assert_close(expect, enc.patchify(video).reshape(-1, w.shape[0]))


def _masks(B, ratio=0.8, step=3):
    masker = TubeMasker((FRAMES // TUBELET, GRID_HW[0] // PATCH, GRID_HW[1] // PATCH), mask_ratio=ratio, seed=5)
    return pack_masks(masker.sample(step, list(range(10, 10 + B))), masker.num_tokens)


def _row_weight(masks, width):
    return (1.0 / (masks.num_masks * masks.tgt_counts.clamp(min=1) * width)).double()[masks.tgt_mask_id]


def _loss_loop(model, video, masks):
    """Per clip, without the packed layout: encoder on its visible tokens, decoder on [visible ; masked], MSE."""
    enc, dec = model.encoder, model.decoder
    N = masks.num_tokens
    B = video.shape[0]
    ctx_cu, tgt_cu = masks.ctx_cu.tolist(), masks.tgt_cu.tolist()
    sq_sum, count = 0.0, 0
    for b in range(B):
        vis = masks.ctx_rows[ctx_cu[b]:ctx_cu[b + 1]] % N
        hid = masks.tgt_rows[tgt_cu[b]:tgt_cu[b + 1]] % N
        tokens = enc.patchify(video[b:b + 1])[0] + enc.pos_embed[0]
        x = tokens[vis]
        one = lambda L: torch.tensor([0, L], dtype=torch.int32)
        for blk in enc.blocks:
            x = blk(x, one(len(vis)), len(vis))
        x = dec.encoder_to_decoder(enc.norm(x)) + dec.pos_embed[vis]
        y = torch.cat([x, dec.mask_token + dec.pos_embed[hid]])
        for blk in dec.blocks:
            y = blk(y, one(y.shape[0]), y.shape[0])
        pred = dec.head(dec.norm(y[len(vis):]))
        target = _targets_loop(video, b * N + hid, TUBELET, PATCH)
        sq_sum = sq_sum + (pred.double() - target).square().sum()
        count += pred.numel()
    return sq_sum / count


def test_loss_and_gradients_equal_per_clip_loop():
    # fp32: the gather op takes fp32/bf16/fp16 only. The loop's targets are fp64, so compare at fp32 tolerance.
    model = _model(torch.float32)
    B = 3
    video, masks = _video(B, torch.float32), _masks(B)
    loss = model(video, masks, _row_weight(masks, model.decoder.out_dim).float())
    params = [p for m in model.trainable_modules() for p in m.parameters()]
    grads = torch.autograd.grad(loss, params)
    expect = _loss_loop(model, video, masks)
    expect_grads = torch.autograd.grad(expect, params)
    torch.testing.assert_close(loss.double(), expect.double(), rtol=2e-5, atol=0)
    for p, g, e in zip(params, grads, expect_grads):
        torch.testing.assert_close(g, e.to(g.dtype), rtol=1e-4, atol=1e-4 * float(e.abs().max()))
    # Gradients reach every parameter of the encoder and of the decoder.
    for name, p in model.named_parameters():
        g = grads[[id(q) for q in params].index(id(p))]
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_pixel_mse_loss_is_weighted_sum_of_squares():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    w = torch.rand(7, generator=g)
    expect = sum(float(w[r]) * float(((pred[r] - target[r]) ** 2).sum()) for r in range(7))
    assert math.isclose(float(pixel_mse_loss(pred.bfloat16(), target, w)),
                        sum(float(w[r]) * float(((pred[r].bfloat16().float() - target[r]) ** 2).sum())
                            for r in range(7)), rel_tol=1e-5)
    assert math.isclose(float(pixel_mse_loss(pred, target, w)), expect, rel_tol=1e-5)


def test_step_flops_match_flop_counter(monkeypatch):
    """The model count equals what torch's FLOP counter sees, once the patch embedding is counted as the model says.

    The step runs the Conv3d on every token (forward) and its weight gradient only (backward); the model counts
    forward + backward (3x) on the visible tubes alone.
    """
    model = _model(torch.float32)
    B = 3
    video, masks = _video(B, torch.float32), _masks(B)
    force_backend("attention", "reference", monkeypatch)  # per-sequence SDPA: no padding in the counted work
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        model(video, masks, _row_weight(masks, model.decoder.out_dim).float()).backward()
    counts = {str(k).removeprefix("aten."): v for k, v in fc.get_flop_counts()["Global"].items()}
    pe = model.encoder.patch_embed.proj
    conv_all = 2 * B * masks.num_tokens * pe.weight[0].numel() * pe.out_channels
    assert counts["convolution"] == conv_all and counts["convolution_backward"] == conv_all
    visible = 3 * 2 * masks.ctx_rows.numel() * pe.weight[0].numel() * pe.out_channels
    assert model.step_flops(masks) == fc.get_total_flops() - 2 * conv_all + visible


def test_decoder_sizes_and_block_list_names():
    for size, expect in (("tiny", (48, 2)), ("base", (384, 4)), ("large", (512, 4)), ("huge", (512, 4))):
        d = DECODER_DEFAULTS[size]
        assert (d["dim"], d["depth"]) == expect and d["dim"] % d["num_heads"] == 0
    cfg = load_config("configs/videomae_tiny.yaml", ["data.num_frames=4", "data.crop_size=64"])
    model = build_model(cfg)
    assert isinstance(model, VideoMAE) and isinstance(model, PretrainModel) and model.decoder.out_dim == 2 * 16 * 16 * 3
    assert model.decoder.dim == 48 and len(model.decoder.blocks) == 2
    assert model.ema_pairs() == ([], [])  # no target encoder
    assert model.top_modules() == [model.encoder, model.decoder]
    masks = _masks(2)
    torch.testing.assert_close(model.row_weights(masks, masks.tgt_counts.double(), 1),
                               _row_weight(masks, model.decoder.out_dim).float(), rtol=0, atol=0)
    # parallel.py finds (and so compiles / shards) the decoder's blocks
    assert any(bl is model.decoder.blocks for bl in block_lists(model.decoder))
    cfg = load_config("configs/videomae_tiny.yaml", ["model.pred_width=32", "model.pred_depth=3"])
    dec = build_videomae(cfg, build_model(load_config("configs/tiny.yaml")).encoder).decoder
    assert dec.dim == 32 and len(dec.blocks) == 3
    big = load_config("configs/videomae_vitl16.yaml")
    assert big.method == "videomae" and big.model.size == "large" and big.masks.tube_ratio == 0.9


def test_bad_input_errors():
    model = _model(torch.float32)
    video, masks = _video(2, torch.float32), _masks(2)
    rw = _row_weight(masks, model.decoder.out_dim).float()
    with pytest.raises(IndexError, match="row indices"):
        patch_targets(video, torch.tensor([0, 2 * masks.num_tokens]), TUBELET, PATCH)
    with pytest.raises(ValueError, match="not tiled"):
        patch_targets(video[:, :, :3], masks.tgt_rows, TUBELET, PATCH)
    with pytest.raises(ValueError, match="one pixel"):
        patch_targets(video, masks.tgt_rows, 1, 1)
    with pytest.raises(ValueError, match="clips"):
        model(video[:1], masks, rw)
    with pytest.raises(ValueError, match="row_weight"):
        model(video, masks, rw[:-1])
    other = pack_masks(TubeMasker((2, 2, 2), 0.5).sample(0, [0, 1]), 8)
    with pytest.raises(ValueError, match="tokens per clip"):
        model.decoder(torch.zeros(other.ctx_rows.numel(), 24), other)
    with pytest.raises(ValueError, match="divisible"):
        VideoMAEDecoder(24, 20, 1, 3, (2, 3, 5), 96)
    with pytest.raises(ValueError, match="predicts"):
        VideoMAE(model.encoder, VideoMAEDecoder(24, 20, 1, 5, (2, 3, 5), 95))


def test_training_runs_end_to_end(tmp_path, subprocess_env):
    args = [sys.executable, "-m", "vjepa_fast.train", "--config", "videomae_tiny", "train.steps=6", "train.batch_size=2",
            "data.num_frames=4", "data.crop_size=64", "data.num_workers=0", "train.log_every=1",
            "train.progress=false", "optim.warmup_steps=1", f"run_dir={tmp_path}"]
    proc = subprocess.run(args, capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(v) for v in losses), losses
    # Predictions start near zero and the targets are standardised tubes: the first loss is the targets' mean
    # square, (P - 1) / P = 0.99 per value. A wrong averaging (rows, width) would be far from it.
    assert 0.85 < losses[0] < 1.15, losses
    assert min(losses[1:]) < losses[0], losses
    assert (tmp_path / "checkpoints" / "step_00000006").is_dir()
