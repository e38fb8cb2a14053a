"""The model is the only door (models/protocol.py): what the trainer, parallel.py, float8.py, the run log and
weights.load_into ask of a model, answered by VJEPA and VideoMAE themselves, matching their modules."""
import math

import pytest
import torch

from vjepa_fast.config import load_config
from vjepa_fast.models.flops import vjepa_step_flops
from vjepa_fast.masks import pack_masks
from vjepa_fast.models.build import build_masker, build_model
from vjepa_fast.models.protocol import StepStats
from vjepa_fast.models.vit import Block, stack_dims
from vjepa_fast.parallel import block_lists

SMALL = ["data.num_frames=4", "data.crop_size=64"]
MODELS = {"vjepa": (None, ["encoder", "predictor", "target_encoder"]),
          "videomae": ("configs/videomae_tiny.yaml", ["encoder", "decoder"])}


@pytest.fixture(params=sorted(MODELS), scope="module")
def model(request):
    torch.manual_seed(0)
    cfg = load_config(MODELS[request.param][0], SMALL)
    return request.param, build_model(cfg), cfg


def _masks(m, cfg, B=2):
    return pack_masks(build_masker(cfg, m.grid).sample(0, list(range(B))), math.prod(m.grid))


def test_parts_are_the_models_children_by_role(model):
    name, m, cfg = model
    parts = m.parts()
    assert list(parts) == MODELS[name][1]
    assert all(parts[role] is getattr(m, role) for role in parts)
    assert m.top_modules() == list(parts.values())
    # every parameter of the model lives in exactly one part
    owned = [id(p) for part in parts.values() for p in part.parameters()]
    assert len(owned) == len(set(owned)) == len(list(m.parameters()))


def test_repeated_blocks_are_every_block_of_each_part(model):
    _, m, cfg = model
    blocks = m.repeated_blocks()
    assert list(blocks) == list(m.parts())
    for role, part in m.parts().items():
        found = [mod for mod in part.modules() if isinstance(mod, Block)]
        assert list(blocks[role]) == found and len(found) > 0, role
        assert block_lists(part) == [blocks[role]]


def test_step_stats_name_the_last_forward(model):
    name, m, cfg = model
    g = torch.Generator().manual_seed(3)
    B = 2
    masks = _masks(m, cfg, B)
    video = torch.randn(B, 3, 4, 64, 64, generator=g)
    w = m.row_weights(masks, masks.tgt_counts.double(), 1)
    m(video, masks, w)
    stats = m.step_stats()
    assert isinstance(stats, StepStats)
    if name == "vjepa":
        assert stats.feature_stats is m.feature_stats and stats.feature_stats.shape == (2,)
        assert stats.rank_rows is m.rank_rows and stats.loss_terms is None  # loss.sigreg = 0
    else:
        assert stats == StepStats()


def test_step_flops_match_the_modules_sizes(model):
    name, m, cfg = model
    masks = _masks(m, cfg)
    for role, blocks in m.repeated_blocks().items():
        fc1 = blocks[0].mlp.fc1
        assert stack_dims(blocks) == (fc1.in_features, len(blocks), fc1.out_features), role
    if name != "vjepa":
        return  # VideoMAE's formula: tests/test_videomae.py
    enc, pred = m.encoder, m.predictor
    ctx = (masks.ctx_cu[1:] - masks.ctx_cu[:-1]).tolist()
    prd = (masks.pred_cu[1:] - masks.pred_cu[:-1]).tolist()
    e = (enc.embed_dim, len(enc.blocks), enc.blocks[0].mlp.fc1.out_features)
    p = (pred.pred_dim, len(pred.predictor_blocks), pred.predictor_blocks[0].mlp.fc1.out_features)
    patch = enc.patch_embed.proj.weight[0].numel()
    want = vjepa_step_flops(masks.batch_size, masks.num_tokens, patch, e, p, ctx, prd, int(masks.tgt_rows.numel()))
    assert m.step_flops(masks) == want > 0
