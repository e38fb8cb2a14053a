"""Reference-format checkpoints: export, import without prefix surgery, safe loading, clear errors."""
import pickle

import pytest
import torch

from vjepa_fast.config import load_config
from vjepa_fast.models.build import build_model
from vjepa_fast.weights import CheckpointFormatError, load_into, read_weights
from vjepa_fast.weights.reference import export_reference


def tiny_model(seed):
    torch.manual_seed(seed)
    return build_model(load_config(None, ["data.num_frames=4", "data.crop_size=32"]))


def test_export_then_import_restores_every_tensor(tmp_path):
    src, dst = tiny_model(0), tiny_model(1)
    with torch.no_grad():  # make the target differ from the encoder so that a swap would show
        for p in src.target_encoder.parameters():
            p.add_(torch.randn_like(p))
    path = export_reference(src, tmp_path / "ref.pth.tar", extra={"epoch": 3})
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3
    assert "module.backbone.pos_embed" in raw["encoder"]
    assert "module.backbone.patch_embed.proj.weight" in raw["encoder"]
    assert "module.backbone.mask_tokens.0" in raw["predictor"]
    assert sorted(load_into(dst, path)) == ["encoder", "predictor", "target_encoder"]
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)


def test_other_prefixes_are_stripped(tmp_path):
    model = tiny_model(2)
    state = {f"module.{k}": v.clone() for k, v in model.encoder.state_dict().items()}
    torch.save({"encoder": state, "opt": {"state": {}, "param_groups": []}, "epoch": 1}, tmp_path / "a.pt")
    parts = read_weights(tmp_path / "a.pt").parts
    assert set(parts) == {"encoder"}
    assert set(parts["encoder"]) == set(model.encoder.state_dict())


def test_mismatched_checkpoint_names_the_problem(tmp_path):
    model = tiny_model(3)
    state = dict(model.encoder.state_dict())
    state.pop("norm.weight")
    state["blocks.0.attn.qkv.weight"] = torch.zeros(5, 5)
    torch.save({"encoder": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointFormatError, match=r"missing \['norm.weight'\].*blocks.0.attn.qkv.weight"):
        load_into(model, tmp_path / "bad.pt")


class NotAllowed:
    pass


def test_files_are_loaded_weights_only(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"encoder": NotAllowed()}, f)
    with pytest.raises(CheckpointFormatError, match="weights-only"):
        read_weights(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError):
        read_weights(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointFormatError, match="not a known weights layout"):
        read_weights(tmp_path / "empty.pt")


def test_training_can_start_from_a_reference_checkpoint(tmp_path, subprocess_env):
    import subprocess
    import sys

    args = ["data.num_frames=4", "data.crop_size=32", "train.steps=1", "train.progress=false",
            "data.num_workers=0"]
    src = tiny_model(4)
    path = export_reference(src, tmp_path / "ref.pt")
    def run(run_dir, init_from):
        cmd = [sys.executable, "-m", "vjepa_fast.train", f"run_dir={run_dir}", *args, f"train.init_from={init_from}"]
        return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env, timeout=300)

    ok = run(tmp_path / "run", path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "initialised encoder, predictor, target_encoder" in ok.stderr
    bad = run(tmp_path / "run2", tmp_path / "nope.pt")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error:") and "nope.pt" in bad.stderr
