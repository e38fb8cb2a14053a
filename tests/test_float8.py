"""train.float8: which linears torchao's Float8Linear replaces, a step in emulated float8 on the CPU, the error."""
import importlib.util

import pytest
import torch
import torch.nn as nn

from vjepa_fast import float8, train
from vjepa_fast.config import ConfigError, load_config
from vjepa_fast.parallel import DistInfo

SMALL = ["train.steps=2", "train.batch_size=2", "data.num_workers=0", "data.num_frames=4", "data.crop_size=64",
         "train.progress=false", "train.log_every=1"]


def test_only_linears_with_dims_of_16_qualify():
    assert float8.convertible(nn.Linear(32, 64))
    assert not float8.convertible(nn.Linear(24, 64)) and not float8.convertible(nn.Linear(64, 40))
    assert not float8.convertible(nn.Conv1d(16, 16, 1))


def test_missing_torchao_is_a_config_error(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.float8: needs torchao \(pip install -e .\[float8\]\)"):
        load_config(None, ["train.float8=true"])
    assert train.main([f"run_dir={tmp_path}", "train.float8=true"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "config error: train.float8: needs torchao (pip install -e .[float8])"]


def test_float8_trainer_converts_the_transformer_linears_and_trains(tmp_path):
    pytest.importorskip("torchao.float8", reason="torchao (the float8 extra) is not installed")
    from torchao.float8.float8_linear import Float8Linear

    cfg = load_config(None, [f"run_dir={tmp_path}", "train.float8=true", *SMALL])
    trainer = train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    model = trainer.model
    for top in ("encoder", "predictor", "target_encoder"):
        linears = [(n, m) for n, m in getattr(model, top).named_modules() if isinstance(m, nn.Linear)]
        assert linears
        for name, m in linears:  # converted exactly where the dims allow it
            assert isinstance(m, Float8Linear) == (m.in_features % 16 == 0 and m.out_features % 16 == 0), name
    assert any(isinstance(m, Float8Linear) for m in model.predictor.modules())
    assert not isinstance(model.encoder.patch_embed.proj, Float8Linear)
    # the optimizer and the EMA still see plain parameters, paired as before
    targets, sources = model.ema_pairs()
    assert [t.shape for t in targets] == [s.shape for s in sources]
    before = [p.detach().clone() for p in trainer.params]
    rows = trainer.run()
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.params))
