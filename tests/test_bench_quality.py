"""The representation-quality benchmark end to end on a tiny budget: both methods trained, three encoders probed."""
import json

import pytest

from vjepa_fast import bench_quality as bq

TINY = ["data.num_frames=4", "data.crop_size=48", "data.num_workers=0", "train.batch_size=2", "train.log_every=1",
        "optim.warmup_steps=1"]


def test_smoke_tiny_budget(tmp_path, capsys):
    args = ["--minutes", "0.02", "--out", str(tmp_path), "--seeds", "2", "--probe-epochs", "1", "--train-samples",
            "8", "--val-samples", "4", "--device", "cpu", *TINY]
    assert bq.main(args) == 0
    result = json.loads((tmp_path / "quality.json").read_text())
    assert set(result["encoders"]) == {"vjepa", "videomae", "random"}
    for name, row in result["encoders"].items():
        for label in bq.LABELS:
            cell = row[label]
            assert len(cell["accuracies"]) == 2 and 0 <= cell["mean"] <= 1 and cell["std"] >= 0, (name, label)
    for method in bq.METHODS:
        row = result["encoders"][method]
        assert row["steps"] >= 1 and row["seconds"] > 0 and (tmp_path / method / "checkpoints").is_dir()
    table = (tmp_path / "quality.md").read_text()
    assert "| vjepa |" in table and "| random |" in table and "motion" in table
    assert table in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "quality.png").stat().st_size > 1000


def test_bad_options_exit_with_one_line(tmp_path, capsys):
    assert bq.main(["--seeds", "0", "--out", str(tmp_path)]) == 2
    assert bq.main(["--out", str(tmp_path), "train.nonsense=1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 2 and err[0].startswith("config error: --seeds") and "train.nonsense" in err[1]
    assert not (tmp_path / "quality.json").exists()
