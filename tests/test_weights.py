"""Weights in and out: parity with transformers' VJEPA2Model through the importers, export -> import round trips,
format detection and its one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import vjepa_fast
from vjepa_fast.config import load_config
from vjepa_fast.export import export
from vjepa_fast.masks import pack_masks
from vjepa_fast.models.build import build_model
from vjepa_fast.weights import CheckpointFormatError, load_encoder, load_into, model_config, read_weights
from vjepa_fast.models.arch import build_predictor_from
from vjepa_fast.weights.load import load_part
from vjepa_fast.weights.reference import export_reference

transformers = pytest.importorskip("transformers", reason="the parity tests need transformers (the test extra)")

FRAMES, CROP = 4, 48  # grid (2, 3, 3): 18 tokens


def hf_model(seed=0, heads=3, hidden=60):
    """A tiny VJEPA2Model with random weights everywhere (head dim 20: rotary segments of 6 and a 2-channel tail)."""
    cfg = transformers.VJEPA2Config(crop_size=CROP, frames_per_clip=FRAMES, hidden_size=hidden,
                                    num_attention_heads=heads, num_hidden_layers=2, pred_hidden_size=24,
                                    pred_num_attention_heads=2, pred_num_hidden_layers=2, pred_num_mask_tokens=3)
    torch.manual_seed(seed)
    model = transformers.VJEPA2Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "vjepa2"
    model = hf_model()
    model.save_pretrained(d)
    return d, model


def clips(B=2, seed=1):
    return torch.randn(B, 3, FRAMES, CROP, CROP, generator=torch.Generator().manual_seed(seed))


def test_encoder_matches_transformers(hf_dir):
    d, model = hf_dir
    enc = load_encoder(d)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    x = clips()
    with torch.no_grad():
        want = model(pixel_values_videos=x.permute(0, 2, 1, 3, 4), skip_predictor=True).last_hidden_state
        got = enc(x)
    assert got.shape == want.shape == (2, 18, 60)
    assert (got - want).abs().max().item() <= 1e-5
    assert vjepa_fast.load_encoder is load_encoder


def test_predictor_matches_transformers_on_masked_rows(hf_dir):
    d, model = hf_dir
    w = read_weights(d)
    assert w.format == "Hugging Face VJEPA2Model" and w.arch.pos_embed == "rope"
    pred = build_predictor_from(w.arch).eval()
    load_part(pred, "predictor", w.parts["predictor"], "test")
    enc = load_encoder(d)
    B, N = 2, 18
    rng = np.random.default_rng(0)
    ctx = [np.sort(rng.choice(N, 7, replace=False)) for _ in range(B)]
    tgt = [np.sort(rng.choice(np.setdiff1d(np.arange(N), c), 5, replace=False)) for c in ctx]
    # mask configuration 1 is the one compared: transformers' predictor uses mask token 1 by default
    dummy = [(np.arange(3), np.arange(3, 6)) for _ in range(B)]
    masks = pack_masks([dummy, list(zip(ctx, tgt))], N)
    x = clips()
    with torch.no_grad():
        out = model(pixel_values_videos=x.permute(0, 2, 1, 3, 4), context_mask=[torch.tensor(np.stack(ctx))],
                    target_mask=[torch.tensor(np.stack(tgt))])
        want = out.predictor_output.last_hidden_state  # [B, 5, 60]
        feats = enc(x).reshape(B * N, -1)
        got = pred(feats[masks.ctx_rows], masks)[masks.tgt_mask_id == 1].reshape(B, 5, -1)
    assert (got - want).abs().max().item() <= 1e-5


def test_pytorch_model_bin_and_the_weights_file_itself(hf_dir, tmp_path):
    d, model = hf_dir
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((d / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ref = load_encoder(d).state_dict()
    for source in (tmp_path / "bin", tmp_path / "bin" / "pytorch_model.bin", d / "model.safetensors"):
        for k, v in load_encoder(source).state_dict().items():
            assert torch.equal(v, ref[k]), (source, k)


def test_mismatched_size_is_one_line_naming_it(hf_dir):
    d, _ = hf_dir
    cfg = load_config(None, ["model.pos_embed=rope", f"data.num_frames={FRAMES}", f"data.crop_size={CROP}"])
    with pytest.raises(CheckpointFormatError) as e:
        load_encoder(d, config=cfg)  # the tiny size is 96 wide, the file 60
    msg = str(e.value)
    assert "\n" not in msg and "Hugging Face VJEPA2Model" in msg and "(60,) vs model (96,)" in msg
    with pytest.raises(CheckpointFormatError, match="set model.pos_embed=rope"):
        load_encoder(d, pos_embed="sincos")


def test_export_import_round_trips_are_exact(hf_dir, tmp_path):
    d, _ = hf_dir
    src = load_encoder(d)
    for fmt, out in (("safetensors", tmp_path / "m.safetensors"), ("reference", tmp_path / "m.pt"),
                     ("hf", tmp_path / "hf_out")):
        line = export(str(d), fmt, str(out), predictor=fmt != "hf")
        assert fmt in line and "predictor" in line
        again = load_encoder(out, num_heads=3) if fmt == "reference" else load_encoder(out)
        for (k, a), (k2, b) in zip(src.state_dict().items(), again.state_dict().items()):
            assert k == k2 and torch.equal(a, b), (fmt, k)
        assert read_weights(out).parts["predictor"].keys() == read_weights(d).parts["predictor"].keys()
    # the hf export is what transformers loads, bit for bit
    back = transformers.VJEPA2Model.from_pretrained(tmp_path / "hf_out").eval()
    theirs = transformers.VJEPA2Model.from_pretrained(d).eval()
    for (k, a), (_, b) in zip(theirs.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_training_model_round_trip_and_init_from(tmp_path):
    cfg = load_config(None, ["model.pos_embed=rope", f"data.num_frames={FRAMES}", f"data.crop_size={CROP}"])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.add_(torch.randn_like(p))
    torch.save({"model": model.state_dict(), "model_config": model_config(cfg), "step": 3}, tmp_path / "ck.pt")
    enc = load_encoder(tmp_path / "ck.pt")  # the target encoder, architecture from model_config
    for k, v in enc.state_dict().items():
        assert torch.equal(v, model.target_encoder.state_dict()[k])
    assert torch.equal(load_encoder(tmp_path / "ck.pt", online=True).blocks[0].attn.qkv.weight,
                       model.encoder.blocks[0].attn.qkv.weight)
    export(str(tmp_path / "ck.pt"), "reference", str(tmp_path / "ref.pt"), predictor=True)
    raw = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert "module.backbone.blocks.0.attn.qkv.weight" in raw["target_encoder"] and "pos_embed" not in str(raw)
    w = read_weights(tmp_path / "ref.pt")
    assert w.format == "V-JEPA 2 reference file (rotary positions)"
    fresh = build_model(cfg)
    assert load_into(fresh, tmp_path / "ref.pt") == ["encoder", "predictor", "target_encoder"]  # both from target
    assert torch.equal(fresh.encoder.blocks[0].attn.qkv.weight, model.target_encoder.blocks[0].attn.qkv.weight)
    assert torch.equal(fresh.target_encoder.blocks[1].mlp.fc2.weight, model.target_encoder.blocks[1].mlp.fc2.weight)
    assert torch.equal(fresh.predictor.mask_tokens[1], model.predictor.mask_tokens[1])


def test_v1_reference_files_keep_loading_and_detect_sizes(tmp_path):
    cfg = load_config(None, [f"data.num_frames={FRAMES}", f"data.crop_size={CROP}"])
    torch.manual_seed(1)
    model = build_model(cfg)
    export_reference(model, tmp_path / "v1.pth.tar")
    w = read_weights(tmp_path / "v1.pth.tar")
    assert w.format == "V-JEPA reference file (sin-cos positions)"
    enc = load_encoder(tmp_path / "v1.pth.tar", num_frames=FRAMES, crop_size=CROP)  # tiny: heads from the table
    assert enc.num_heads == 4 and enc.pos_kind == "sincos"
    x = clips(1)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), model.target_encoder.eval()(x))
    # an encoder of no known size: the file cannot tell its heads, the error names the key
    state = {k: v for k, v in model.encoder.state_dict().items() if not k.startswith("blocks.3.")}
    torch.save({"encoder": state}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointFormatError, match="set model.num_heads"):
        load_encoder(tmp_path / "odd.pt")
    assert load_encoder(tmp_path / "odd.pt", num_heads=2).depth == 3


def test_unknown_files_fail_in_one_line(tmp_path, subprocess_env):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointFormatError, match="type 'bert'"):
        read_weights(tmp_path / "cfg")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointFormatError, match="without this project's metadata"):
        read_weights(tmp_path / "foreign.safetensors")
    proc = subprocess.run([sys.executable, "-m", "vjepa_fast.export", str(tmp_path / "nope"), "--format", "hf",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, env=subprocess_env,
                          timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]


def test_a_rotary_run_dir_loads_and_exports_to_transformers(tmp_path):
    from vjepa_fast import train
    from vjepa_fast.parallel import DistInfo

    run = tmp_path / "run"
    cfg = load_config(None, [f"run_dir={run}", "model.pos_embed=rope", "train.steps=2", "train.batch_size=2",
                             "train.progress=false", "data.num_workers=0", f"data.num_frames={FRAMES}",
                             f"data.crop_size={CROP}", "optim.warmup_steps=1"])
    trainer = train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    trainer.run()
    from vjepa_fast.run import checkpoint

    saved = checkpoint.load_payload(checkpoint.list_checkpoints(run)[-1][1], keys={"model"})
    assert saved["model_config"] == model_config(cfg)
    (run / "config.yaml").unlink()  # the checkpoint alone describes the model
    enc = load_encoder(run)
    x = clips()
    with torch.no_grad():
        want = trainer.model.target_encoder.eval()(x)
        torch.testing.assert_close(enc(x), want, rtol=0, atol=0)
    export(str(run), "hf", str(tmp_path / "hf"))
    theirs = transformers.VJEPA2Model.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        got = theirs(pixel_values_videos=x.permute(0, 2, 1, 3, 4), skip_predictor=True).last_hidden_state
    assert (got - want).abs().max().item() <= 1e-5


def test_eval_probes_a_hugging_face_directory(hf_dir, tmp_path, capsys):
    from vjepa_fast import eval as ev

    d, _ = hf_dir
    out = tmp_path / "probe.json"
    rc = ev.main(["--checkpoint", str(d), "--epochs", "1", "--train-samples", "8", "--val-samples", "4",
                  "--batch-size", "4", "--out", str(out), f"data.num_frames={FRAMES}", f"data.crop_size={CROP}",
                  "data.num_workers=0"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["model"]["pos_embed"] == "rope" and res["model"]["embed_dim"] == 60 and res["encoder"] == "online"
