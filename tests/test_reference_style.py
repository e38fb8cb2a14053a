"""The original-code-style V-JEPA step (benchmarks/reference_style.py): same parameters, same loss and gradients as
VJEPA on truncated masks."""
import pytest
import torch

from benchmarks.reference_style import ReferenceStyleVJEPA, per_mask_indices
from vjepa_fast.config import load_config
from vjepa_fast.masks import pack_masks
from vjepa_fast.models.build import build_masker, build_model
from vjepa_fast.models.protocol import PretrainModel
from vjepa_fast.ops.ema import ema_update_

# grid (2, 5, 5): N = 50 tokens, odd spatial sides; three short-range blocks so the context sizes vary per sample.
OVERRIDES = ["data.num_frames=4", "data.crop_size=80", "masks.short_blocks=3", "masks.short_scale=0.2"]


def _setup(B, seed=0, step=2, **kw):
    cfg = load_config(None, OVERRIDES + [f"train.seed={seed}"])
    torch.manual_seed(seed)
    model = build_model(cfg)
    masker = build_masker(cfg, model.encoder.grid)
    sets = masker.sample(step, list(range(100, 100 + B)))
    g = torch.Generator().manual_seed(seed + 1)
    video = torch.randn(B, 3, cfg.data.num_frames, cfg.data.crop_size, cfg.data.crop_size, generator=g)
    return model, sets, video


def _row_weight(masks, width):
    """The trainer's per-row weights (one process): each mask configuration's mean, averaged over configurations."""
    return (1.0 / (masks.num_masks * masks.tgt_counts.clamp(min=1) * width)).float()[masks.tgt_mask_id]


@pytest.mark.parametrize("B", [1, 3])
def test_loss_and_gradients_equal_vjepa_on_truncated_masks(B):
    model, sets, video = _setup(B, seed=B)
    with torch.no_grad():  # a trained-looking predictor: non-zero mask tokens, so every input path matters
        for t in model.predictor.mask_tokens:
            t.normal_(0.0, 0.5)
    masks = pack_masks(sets, model.encoder.num_tokens, truncate_to_batch_min=True)
    ref = ReferenceStyleVJEPA(model)
    params = [p for m in model.trainable_modules() for p in m.parameters()]
    fast = model(video, masks, _row_weight(masks, model.encoder.embed_dim))
    slow = ref(video, masks)
    torch.testing.assert_close(slow, fast, rtol=1e-5, atol=1e-7)
    g_fast = torch.autograd.grad(fast, params)
    g_slow = torch.autograd.grad(ref(video, masks), params)
    for p, a, b in zip(params, g_fast, g_slow):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()) + 1e-12)
    assert sum(float(g.abs().sum()) for g in g_slow) > 0


def test_it_truncates_nothing_itself_and_rejects_untruncated_masks():
    model, sets, video = _setup(4, seed=7)
    masks = pack_masks(sets, model.encoder.num_tokens)
    lens = (masks.ctx_cu[1:] - masks.ctx_cu[:-1]).tolist()
    assert len(set(lens[:4])) > 1 or len(set(lens[4:])) > 1  # these samples' context sizes do differ
    with pytest.raises(ValueError, match="truncate_to_batch_min"):
        ReferenceStyleVJEPA(model)(video, masks)
    cut = pack_masks(sets, model.encoder.num_tokens, truncate_to_batch_min=True)
    for m, (ctx, tgt) in enumerate(per_mask_indices(cut)):
        assert ctx.shape == (4, min(lens[m * 4:(m + 1) * 4]))
        # the lowest indices of each sample's context survive, sorted, as the reference keeps them
        for b in range(4):
            full = torch.from_numpy(sets[m][b][0])
            assert torch.equal(ctx[b], full[:ctx.shape[1]])
        assert tgt.shape[1] == min(len(sets[m][b][1]) for b in range(4))


def test_same_parameters_and_python_ema_loop():
    model, _, _ = _setup(2)
    ref = ReferenceStyleVJEPA(model)
    assert [id(p) for p in ref.parameters()] == [id(p) for p in model.parameters()]
    assert isinstance(ref, PretrainModel) and isinstance(model, PretrainModel)
    assert ref.grid == model.grid and ref.trainable_modules() == model.trainable_modules()
    assert ref.top_modules() == model.top_modules() == [model.encoder, model.predictor, model.target_encoder]
    masks = pack_masks(_setup(2)[1], model.encoder.num_tokens)
    counts = masks.tgt_counts.double()
    torch.testing.assert_close(ref.row_weights(masks, counts, 1), _row_weight(masks, model.encoder.embed_dim))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    targets, sources = ref.ema_pairs()
    expect = [0.9 * t + 0.1 * s for t, s in zip(targets, sources)]
    twin = [t.clone() for t in targets]
    ref.ema_step(0.9)
    ema_update_(twin, [s.detach() for s in sources], 0.9)
    for t, e, w in zip(targets, expect, twin):
        torch.testing.assert_close(t, e)
        torch.testing.assert_close(w, e)


def test_bad_input_errors():
    model, sets, video = _setup(2)
    masks = pack_masks(sets, model.encoder.num_tokens, truncate_to_batch_min=True)
    with pytest.raises(ValueError, match="clips"):
        ReferenceStyleVJEPA(model)(video[:1], masks)
    with pytest.raises(ValueError, match="wraps a VJEPA"):
        ReferenceStyleVJEPA(model.encoder)
