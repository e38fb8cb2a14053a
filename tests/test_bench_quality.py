"""The representation-quality benchmark: end to end on a tiny budget (every row trained and probed), the gap-closed
arithmetic and the counted-label rule, the table and the chart."""
import json
import math

import pytest

from vjepa_fast import bench_quality as bq
from vjepa_fast.config import load_config

TINY = ["data.num_frames=4", "data.crop_size=48", "data.num_workers=0", "train.batch_size=2", "train.log_every=1",
        "optim.warmup_steps=1"]


def test_smoke_tiny_budget(tmp_path, capsys, monkeypatch):
    # Fewer calibration steps than the real benchmark times: the calibration's result only sets the step counts.
    monkeypatch.setattr(bq, "CALIBRATION_STEPS", 4)
    monkeypatch.setattr(bq, "CALIBRATION_WARMUP", 2)
    monkeypatch.setattr(bq, "CALIBRATION_ROUNDS", 1)
    args = ["--minutes", "0.02", "--out", str(tmp_path), "--seeds", "2", "--probe-epochs", "1", "--train-samples",
            "8", "--val-samples", "4", "--device", "cpu", *TINY]
    assert bq.main(args) == 0
    result = json.loads((tmp_path / "quality.json").read_text())
    assert set(result["encoders"]) == {"vjepa", "vjepa_sigreg", "videomae", "supervised", "random"}
    for name, row in result["encoders"].items():
        for label in bq.LABELS:
            cell = row[label]
            assert len(cell["accuracies"]) == 2 and 0 <= cell["mean"] <= 1 and cell["std"] >= 0, (name, label)
    for name in bq.PRETRAINED:
        row = result["encoders"][name]
        assert row["steps"] >= 1 and row["seconds"] > 0 and (tmp_path / name / "checkpoints").is_dir()
    # The original objective really is off in the V-JEPA row and on in the SIGReg row.
    assert load_config(str(tmp_path / "vjepa" / "config.yaml")).loss.sigreg == 0
    assert load_config(str(tmp_path / "vjepa_sigreg" / "config.yaml")).loss.sigreg == 0.1
    for label in bq.LABELS:
        sup = result["encoders"]["supervised"][label]
        assert sup["steps"] >= 1 and (tmp_path / f"supervised_{label}.pt").is_file()
        s = result["summary"][label]
        assert s["floor"] == result["encoders"]["random"][label]["mean"]
        assert s["ceiling"] == sup["mean"] and set(s["gap_closed"]) == set(bq.PRETRAINED)
    table = (tmp_path / "quality.md").read_text()
    for name in result["encoders"]:
        assert f"| {name} |" in table
    assert "gap closed" in table and "Counted labels" in table
    assert table in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "quality.png").stat().st_size > 1000


def test_bad_options_exit_with_one_line(tmp_path, capsys):
    assert bq.main(["--seeds", "0", "--out", str(tmp_path)]) == 2
    assert bq.main(["--out", str(tmp_path), "train.nonsense=1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 2 and err[0].startswith("config error: --seeds") and "train.nonsense" in err[1]
    assert not (tmp_path / "quality.json").exists()


def test_gap_closed_arithmetic():
    assert bq.gap_closed(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert bq.gap_closed(0.2, 0.2, 0.8) == 0 and bq.gap_closed(0.8, 0.2, 0.8) == 1
    assert bq.gap_closed(0.1, 0.2, 0.8) == pytest.approx(-1 / 6)  # below the floor: negative
    assert bq.gap_closed(0.5, 0.6, 0.6) is None and bq.gap_closed(0.5, 0.6, 0.4) is None  # no gap to close


def _cell(mean, std=0.01):
    return {"mean": mean, "std": std, "accuracies": [mean - std, mean + std]}


def fake_result(floor_motion, ceiling_motion, floor_app, ceiling_app):
    vals = {"vjepa": (0.40, 0.30), "vjepa_sigreg": (0.70, 0.35), "videomae": (0.30, 0.20),
            "supervised": (ceiling_motion, ceiling_app), "random": (floor_motion, floor_app)}
    encoders = {name: {"motion": _cell(m), "appearance": _cell(a)} for name, (m, a) in vals.items()}
    for name in bq.PRETRAINED:
        encoders[name]["steps"] = 10
    for label in bq.LABELS:
        encoders["supervised"][label]["steps"] = 7
    return {"preset": "cpu", "minutes": 1.0, "seeds": 3, "val_samples": 500, "device": "cpu", "seconds": 60.0,
            "encoders": encoders, "summary": bq.summarize(encoders)}


def test_summary_counts_a_label_only_with_a_30_point_gap():
    r = fake_result(0.30, 0.90, 0.33, 0.60)
    s = r["summary"]
    assert s["motion"]["counted"] and not s["appearance"]["counted"]  # 0.60 and 0.27 above the floor
    assert s["motion"]["gap_closed"]["vjepa_sigreg"] == pytest.approx((0.70 - 0.30) / 0.60)
    assert s["motion"]["gap_closed"]["videomae"] == pytest.approx(0.0)
    assert s["appearance"]["gap_closed"]["vjepa"] == pytest.approx((0.30 - 0.33) / 0.27)
    assert bq.summarize(fake_result(0.30, 0.60, 0.0, 1.0)["encoders"])["motion"]["counted"]  # exactly 30 points
    table = bq.markdown(r)
    assert "| vjepa_sigreg | 10 | 0.700 +- 0.010 | +0.67 |" in table
    assert "| vjepa | 10 | 0.400 +- 0.010 | +0.17 | 0.300 +- 0.010 | n/c |" in table  # appearance does not count
    assert "| supervised | 7 / 7 |" in table and "Counted labels (supervised - random >= 0.30): motion;" in table
    assert all(math.isfinite(v) for label in bq.LABELS for v in s[label]["gap_closed"].values())


def test_bar_chart_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "quality.png"
    assert bq.bar_chart(fake_result(0.30, 0.90, 0.33, 0.60), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_bad_sigreg_weight_is_a_config_error(tmp_path, capsys):
    assert bq.main(["--sigreg", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("config error: --sigreg")
