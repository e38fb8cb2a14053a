"""Weights that load right or not at all: a sin-cos file of any clip size is read at its own token grid (resized only
when the caller asks for another size, with a warning), the predictor's mask-token count is read, a rotary file that
carries a stray table stays rotary. Each file is written by the project's own writers from a tiny model with random
weights; features are compared with the model that wrote them (fp32, max abs difference <= 1e-5)."""
import dataclasses
import logging
import os

import numpy as np
import pytest
import torch

from vjepa_fast.config import load_config
from vjepa_fast.export import export, main as export_main
from vjepa_fast.masks import pack_masks
from vjepa_fast.models.build import build_model
from vjepa_fast.models.pos_embed import interpolate_pos, sincos_3d
from vjepa_fast.weights import CheckpointFormatError, load_encoder, load_into, read_weights
from vjepa_fast.models.arch import build_predictor_from
from vjepa_fast.weights.detect import detect_arch, position_kind, table_grid
from vjepa_fast.weights.load import load_part
from vjepa_fast.weights.reference import export_reference

TOL = 1e-5


def tiny(frames, crop, *extra, seed=0):
    """A tiny training model for frames x crop clips (patch 16, tubelet 2), every weight random."""
    cfg = load_config(None, [f"data.num_frames={frames}", f"data.crop_size={crop}", *extra])
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return cfg, model


def clips(frames, crop, B=2, seed=1):
    return torch.randn(B, 3, frames, crop, crop, generator=torch.Generator().manual_seed(seed))


def assert_same_features(enc, model, frames, crop):
    x = clips(frames, crop)
    with torch.no_grad():
        diff = (enc(x) - model.target_encoder(x)).abs().max().item()
    assert diff <= TOL, diff


@pytest.mark.parametrize("frames,crop", [(4, 48), (4, 64), (2, 80), (6, 32)])
def test_a_sincos_file_of_any_clip_size_loads_at_its_own_grid(tmp_path, frames, crop, caplog):
    _, model = tiny(frames, crop)
    export_reference(model, tmp_path / "v1.pth.tar")
    with caplog.at_level(logging.INFO, logger="vjepa_fast"):
        enc = load_encoder(tmp_path / "v1.pth.tar")  # nothing said about the clip: the table tells it
    assert enc.grid == model.target_encoder.grid
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert_same_features(enc, model, frames, crop)


def test_the_grid_is_read_from_the_values_when_token_counts_collide():
    # 32 tokens: (2, 4, 4), (8, 2, 2) and (32, 1, 1) are all square grids; only one rebuilds the table
    for grid in ((2, 4, 4), (8, 2, 2), (32, 1, 1)):
        table = sincos_3d(grid, 96)[None]
        assert table_grid(table, "sincos", [(2, 4, 4)]) == grid
    # a table that is no sin-cos table (trained values) takes the first candidate with its token count, else None
    table = torch.randn(1, 32, 96)
    assert table_grid(table, "sincos", [None, (3, 3, 3), (8, 2, 2), (2, 4, 4)]) == (8, 2, 2)
    assert table_grid(table, "sincos", [(3, 3, 3)]) is None


def test_a_table_that_cannot_tell_its_clip_takes_the_published_sizes_or_asks(tmp_path):
    _, model = tiny(4, 48)
    state = dict(model.target_encoder.state_dict())
    for tokens, want in ((8 * 14 * 14, (16, 224)), (8 * 24 * 24, (16, 384))):  # V-JEPA's published clips
        state["pos_embed"] = torch.randn(1, tokens, 96)
        arch = detect_arch(state, None, "test")
        assert (arch.num_frames, arch.crop_size) == want
    state["pos_embed"] = torch.randn(1, 18, 96)  # not sin-cos, not a published size: the error asks for the clip
    torch.save({"target_encoder": state}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointFormatError) as e:
        load_encoder(tmp_path / "odd.pt")
    msg = str(e.value)
    assert "\n" not in msg and "18 tokens" in msg and "num_frames" in msg and "crop_size" in msg
    enc = load_encoder(tmp_path / "odd.pt", num_frames=4, crop_size=48)  # told: its own size, loaded as is
    assert enc.grid == (2, 3, 3) and torch.equal(enc.pos_embed, state["pos_embed"])


def test_asking_for_another_clip_size_interpolates_with_a_warning(tmp_path, caplog):
    cfg, model = tiny(4, 48)
    export_reference(model, tmp_path / "v1.pth.tar")
    with caplog.at_level(logging.WARNING, logger="vjepa_fast"):
        enc = load_encoder(tmp_path / "v1.pth.tar", num_frames=8, crop_size=64)
    assert enc.grid == (4, 4, 4)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "(2, 3, 3)" in warned[0] and "(4, 4, 4)" in warned[0] and "interpolated" in warned[0]
    want = interpolate_pos(model.target_encoder.pos_embed[0], (2, 3, 3), (4, 4, 4))
    torch.testing.assert_close(enc.pos_embed[0], want, rtol=0, atol=0)
    # the model that wrote the file resizes its own table the same way for clips of that size
    assert_same_features(enc, model, 8, 64)
    # a training model of another clip size initialised from the file (train.init_from) does the same, predictor
    # table included
    _, other = tiny(8, 64, seed=3)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vjepa_fast"):
        load_into(other, tmp_path / "v1.pth.tar")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3 and sum("predictor_pos_embed" in m for m in warned) == 1
    torch.testing.assert_close(other.encoder.pos_embed, enc.pos_embed, rtol=0, atol=0)
    want = interpolate_pos(model.predictor.predictor_pos_embed[0], (2, 3, 3), (4, 4, 4))
    torch.testing.assert_close(other.predictor.predictor_pos_embed[0], want, rtol=0, atol=0)


def predictions(pred, encoder, frames, crop, num_masks):
    """The predictor's output rows for `num_masks` mask configurations (one mask token each) on random masks."""
    x = clips(frames, crop)
    B = x.shape[0]
    N = encoder.num_tokens
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(num_masks):
        ctx = [np.sort(rng.choice(N, N // 2, replace=False)) for _ in range(B)]
        masks.append([(c, np.sort(np.setdiff1d(np.arange(N), c))[: N // 3]) for c in ctx])
    packed = pack_masks(masks, N)
    with torch.no_grad():
        feats = encoder(x).reshape(B * N, -1)
        return pred(feats[packed.ctx_rows], packed)


@pytest.mark.parametrize("pos", ["sincos", "rope"])
def test_the_mask_token_count_is_read_and_the_predictor_loads(tmp_path, pos):
    _, model = tiny(4, 48, f"model.pos_embed={pos}", "model.pred_mask_tokens=3")
    export_reference(model, tmp_path / "ref.pt")
    w = read_weights(tmp_path / "ref.pt")
    arch = detect_arch(w.parts["target_encoder"], w.parts["predictor"], "test", {"pred_num_heads": 4})
    assert arch.pred_mask_tokens == 3
    assert arch.grid == ((2, 3, 3) if pos == "sincos" else (32, 16, 16))  # rotary: V-JEPA 2's clip, any fits
    arch = dataclasses.replace(arch, num_frames=4, crop_size=48)  # the predictor's grid: the clip it will see
    pred = build_predictor_from(arch).eval()
    load_part(pred, "predictor", w.parts["predictor"], "test")
    want = predictions(model.predictor, model.target_encoder, 4, 48, 3)
    assert (predictions(pred, model.target_encoder, 4, 48, 3) - want).abs().max().item() <= TOL
    # the safetensors export states the count; its predictor loads back as written
    line = export(str(tmp_path / "ref.pt"), "safetensors", str(tmp_path / "m.safetensors"), predictor=True,
                  overrides={"pred_num_heads": 4, "num_frames": 4, "crop_size": 48})
    assert "predictor" in line
    back = read_weights(tmp_path / "m.safetensors")
    assert back.arch.pred_mask_tokens == 3 and back.arch.pos_embed == pos
    again = build_predictor_from(back.arch).eval()
    load_part(again, "predictor", back.parts["predictor"], "test", back.arch.pos_embed)
    assert (predictions(again, model.target_encoder, 4, 48, 3) - want).abs().max().item() <= TOL


def test_a_rotary_file_exported_to_hugging_face_is_what_transformers_loads(tmp_path):
    transformers = pytest.importorskip("transformers", reason="needs transformers (the test extra)")
    _, model = tiny(4, 48, "model.pos_embed=rope", "model.pred_mask_tokens=3")
    export_reference(model, tmp_path / "ref.pt")
    # transformers places rotary tokens by its config's crop_size: a reference file does not state one (V-JEPA 2's
    # 256 px is assumed), so the clip is given
    export(str(tmp_path / "ref.pt"), "hf", str(tmp_path / "hf"), overrides={"num_frames": 4, "crop_size": 48})
    theirs = transformers.VJEPA2Model.from_pretrained(tmp_path / "hf").eval()  # refused a wrong token count
    assert theirs.config.pred_num_mask_tokens == 3
    for i in range(3):
        assert torch.equal(theirs.predictor.embeddings.mask_tokens[i], model.predictor.mask_tokens[i])
    x = clips(4, 48)
    with torch.no_grad():
        got = theirs(pixel_values_videos=x.permute(0, 2, 1, 3, 4), skip_predictor=True).last_hidden_state
        assert (got - model.target_encoder(x)).abs().max().item() <= TOL


def test_a_rotary_file_with_a_stray_table_stays_rotary(tmp_path, caplog):
    _, model = tiny(4, 48, "model.pos_embed=rope")
    export_reference(model, tmp_path / "v2.pt")
    payload = torch.load(tmp_path / "v2.pt", weights_only=True)
    table = sincos_3d((2, 3, 3), 96)[None]
    for part in ("encoder", "target_encoder"):
        payload[part]["module.backbone.pos_embed"] = table
    torch.save(payload, tmp_path / "v2.pt")
    with caplog.at_level(logging.WARNING, logger="vjepa_fast"):
        w = read_weights(tmp_path / "v2.pt")
        enc = load_encoder(tmp_path / "v2.pt")
    assert w.format == "V-JEPA 2 reference file (rotary positions)" and enc.pos_kind == "rope"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all("its pos_embed ignored" in m for m in warned)  # one per read_weights
    assert_same_features(enc, model, 4, 48)
    # exported, the stray table stays out: an encoder-only export reads back as rotary on its own
    export(str(tmp_path / "v2.pt"), "reference", str(tmp_path / "enc.pt"))
    assert "pos_embed" not in str(torch.load(tmp_path / "enc.pt", weights_only=True))
    assert_same_features(load_encoder(tmp_path / "enc.pt"), model, 4, 48)
    # an encoder-only file with a table cannot show it is rotary: read as sin-cos unless told
    torch.save({"encoder": payload["target_encoder"]}, tmp_path / "enc_table.pt")
    assert read_weights(tmp_path / "enc_table.pt").format == "V-JEPA reference file (sin-cos positions)"
    assert_same_features(load_encoder(tmp_path / "enc_table.pt", pos_embed="rope"), model, 4, 48)


def test_position_kind_knows_the_published_vjepa2_predictor():
    enc = {"pos_embed": sincos_3d((2, 3, 3), 96)[None]}

    def predictor(width, blocks, tokens, table=True):
        p = {"predictor_embed.weight": torch.zeros(width, 96)}
        p.update({f"predictor_blocks.{i}.norm1.weight": torch.zeros(width) for i in range(blocks)})
        p.update({f"mask_tokens.{i}": torch.zeros(1, 1, width) for i in range(tokens)})
        return {**p, "predictor_pos_embed": torch.zeros(1, 18, width)} if table else p

    assert position_kind({}, None)[0] == "rope"
    assert position_kind(enc, None)[0] == "sincos"
    assert position_kind(enc, predictor(384, 12, 10))[0] == "rope"  # V-JEPA 2's, even with its own stray table
    assert position_kind(enc, predictor(384, 12, 2))[0] == "sincos"  # V-JEPA's
    assert position_kind(enc, predictor(48, 2, 2, table=False))[0] == "rope"  # a sin-cos predictor has its table


def test_export_cli_takes_overrides_anywhere_and_writes_usual_modes(tmp_path, capsys):
    _, model = tiny(4, 48, "model.pos_embed=rope")
    # no model_config and a width / depth of no known size: the heads must come from an override
    state = {k: v for k, v in model.target_encoder.state_dict().items() if not k.startswith("blocks.3.")}
    torch.save({"target_encoder": state}, tmp_path / "odd.pt")
    umask = os.umask(0)
    os.umask(umask)
    for i, argv in enumerate((["--format", "safetensors", "--out", "{out}", "num_heads=4"],
                              ["num_heads=4", "--format", "safetensors", "--out", "{out}"],
                              ["--format", "hf", "num_heads=4", "--out", "{out}"])):
        out = tmp_path / (f"out{i}" + (".safetensors" if "safetensors" in argv else ""))
        assert export_main([str(tmp_path / "odd.pt"), *[a.format(out=out) for a in argv]]) == 0, capsys.readouterr()
        files = [out / "model.safetensors", out / "config.json"] if out.is_dir() else [out]
        for f in files:
            assert os.stat(f).st_mode & 0o777 == 0o666 & ~umask, (f, oct(os.stat(f).st_mode))
        assert load_encoder(out).num_heads == 4
    # a safetensors file is told by its name: one that could not be read back is refused before any work
    rc = export_main([str(tmp_path / "odd.pt"), "--format", "safetensors", "--out", str(tmp_path / "x.pt")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 1 and len(err) == 1 and ".safetensors" in err[0] and not (tmp_path / "x.pt").exists()


def test_a_sincos_model_to_hugging_face_is_one_line_saying_what_to_do(tmp_path, capsys):
    _, model = tiny(4, 48)
    export_reference(model, tmp_path / "v1.pth.tar")
    rc = export_main([str(tmp_path / "v1.pth.tar"), "--format", "hf", "--out", str(tmp_path / "hf")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 1 and len(err) == 1 and err[0].startswith("error:") and "model.pos_embed=rope" in err[0]
    assert "--format safetensors" in err[0] and not (tmp_path / "hf").exists()
