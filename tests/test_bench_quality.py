"""The representation-quality benchmark: end to end on a tiny budget (every row trained and probed), the wall-clock
budget (calibration arithmetic), the gap-closed arithmetic and the counted-label rule, the table and the chart."""
import json
import math
import random
import types

import pytest

from vjepa_fast import bench_quality as bq
from vjepa_fast import supervised
from vjepa_fast.config import ConfigError, load_config
from vjepa_fast.wall_budget import RunCost

TINY = ["data.num_frames=4", "data.crop_size=48", "data.num_workers=0", "train.batch_size=2", "train.log_every=1",
        "optim.warmup_steps=1"]


def test_smoke_tiny_budget(tmp_path, capsys, monkeypatch):
    # Fewer calibration steps than the real benchmark times: the calibration's result only sets the step counts.
    monkeypatch.setattr(bq, "CALIBRATION_STEADY", 2)
    monkeypatch.setattr(bq, "CALIBRATION_WARMUP", 1)
    monkeypatch.setattr(bq, "CALIBRATION_ROUNDS", 1)
    monkeypatch.setattr(supervised, "HEAD_CLIPS", 4)  # the ceiling's head phase: 2 batches of 2, 2 epochs
    monkeypatch.setattr(supervised, "HEAD_EPOCHS", 2)
    args = ["--minutes", "0.02", "--out", str(tmp_path), "--seeds", "2", "--probe-epochs", "1", "--train-samples",
            "8", "--val-samples", "4", "--device", "cpu", *TINY]
    assert bq.main(args) == 0
    result = json.loads((tmp_path / "quality.json").read_text())
    assert set(result["encoders"]) == {"vjepa", "vjepa_sigreg", "videomae", "supervised", "random"}
    for name, row in result["encoders"].items():
        for label in bq.LABELS:
            cell = row[label]
            assert len(cell["accuracies"]) == 2 and 0 <= cell["mean"] <= 1 and cell["std"] >= 0, (name, label)
            assert cell["seeds"] == [0, 1] and all(isinstance(p, bool) for p in cell["plateau"]), (name, label)
    trained = [*(result["encoders"][name] for name in bq.PRETRAINED),
               *(result["encoders"]["supervised"][label] for label in bq.LABELS)]
    for row in trained:  # every trained row: its own training time next to the same budget, and what sized it
        assert row["steps"] >= 1 and row["train_seconds"] > 0 and row["budget_seconds"] == pytest.approx(0.02 * 60)
        assert row["calibration"]["step"] > 0 and row["calibration"]["fixed"] >= 0
    for name in bq.PRETRAINED:
        assert (tmp_path / name / "checkpoints").is_dir()
    # The original objective really is off in the V-JEPA row and on in the SIGReg row.
    assert load_config(str(tmp_path / "vjepa" / "config.yaml")).loss.sigreg == 0
    # without --sigreg the SIGReg row trains the quick start's objective: the built-in default's weight
    assert load_config(str(tmp_path / "vjepa_sigreg" / "config.yaml")).loss.sigreg == load_config("tiny").loss.sigreg
    assert result["sigreg"] == load_config("tiny").loss.sigreg > 0
    for label in bq.LABELS:
        sup = result["encoders"]["supervised"][label]
        assert sup["steps"] >= 1 and (tmp_path / f"supervised_{label}.pt").is_file()
        assert sup["head_clips"] == 4 and sup["head_epochs"] == 2 and sup["head_seconds"] > 0
        assert 0 <= sup["head_train_accuracy"] <= 1
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


def _cell(mean, std=0.01, plateau=(False, False)):
    return {"mean": mean, "std": std, "accuracies": [mean - std, mean + std], "seeds": [0, 1], "plateau": list(plateau)}


def fake_result(floor_motion, ceiling_motion, floor_app, ceiling_app):
    vals = {"vjepa": (0.40, 0.30), "vjepa_sigreg": (0.70, 0.35), "videomae": (0.30, 0.20),
            "supervised": (ceiling_motion, ceiling_app), "random": (floor_motion, floor_app)}
    encoders = {name: {"motion": _cell(m), "appearance": _cell(a)} for name, (m, a) in vals.items()}
    for name in bq.PRETRAINED:
        encoders[name].update(steps=10, train_seconds=59.6)
    for label, seconds in zip(bq.LABELS, (61.2, 57.0)):
        encoders["supervised"][label].update(steps=7, train_seconds=seconds, seconds=3.0)  # seconds: the probe's
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
    assert "| vjepa_sigreg | 10 | 60 | 0.700 +- 0.010 | +0.67 |" in table
    assert "| vjepa | 10 | 60 | 0.400 +- 0.010 | +0.17 | 0.300 +- 0.010 | n/c |" in table  # appearance does not count
    assert "| supervised | 7 / 7 | 61 / 57 |" in table and "| random | - | - |" in table
    assert "training 1 min (60 s) per method" in table
    assert "Counted labels (supervised - random >= 0.30): motion;" in table
    assert all(math.isfinite(v) for label in bq.LABELS for v in s[label]["gap_closed"].values())


def test_table_marks_means_that_include_plateau_seeds():
    r = fake_result(0.30, 0.90, 0.33, 0.60)
    assert "*" not in bq.markdown(r) and "plateau" not in bq.markdown(r)  # no probe on its plateau: no mark
    r["encoders"]["random"]["motion"] = _cell(0.20, 0.08, plateau=(False, True))
    r["encoders"]["vjepa"]["appearance"] = _cell(0.06, plateau=(True, True))
    table = bq.markdown(r)
    assert "| random | - | - | 0.200 +- 0.080* |" in table
    assert "| vjepa | 10 | 60 | 0.400 +- 0.010 | +0.17 | 0.060 +- 0.010* |" in table
    assert table.count("*") == 3  # the two cells and the line that explains the mark
    note = next(line for line in table.splitlines() if line.startswith("`*`"))
    assert "within 5% of the chance loss" in note
    assert note.endswith(": vjepa appearance (seeds 0, 1); random motion (seed 1).")


def test_bar_chart_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "quality.png"
    assert bq.bar_chart(fake_result(0.30, 0.90, 0.33, 0.60), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_bad_sigreg_weight_is_a_config_error(tmp_path, capsys):
    assert bq.main(["--sigreg", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("config error: --sigreg")


def simulated_run(steps, cost_of_step, fixed, rng):
    """Step times and the wall time of a run whose step i costs cost_of_step(i) (+-5% noise), plus `fixed` seconds
    of set-up and end and a slow start-up step."""
    times = [cost_of_step(i) * rng.uniform(0.95, 1.05) + (2.0 if i == 0 else 0.0) for i in range(steps)]
    return times, fixed + sum(times)


def test_calibration_recovers_the_cost_and_fits_the_budget():
    rng = random.Random(0)
    for _ in range(20):
        fixed, step = rng.uniform(0.5, 5.0), rng.uniform(0.01, 0.5)
        n = bq.calibration_steps()
        cal = RunCost.measure(*simulated_run(n, lambda i: step, fixed, rng), warmup=4)
        assert cal.step == pytest.approx(step, rel=0.05) and cal.fixed == pytest.approx(fixed + 2.0, rel=0.1)
        budget = rng.uniform(30.0, 600.0)
        steps = cal.steps_within(budget)
        assert cal.seconds(steps) <= budget < cal.seconds(steps + 1)  # the most steps that fit
        _, wall = simulated_run(steps, lambda i: step, fixed, rng)
        assert wall == pytest.approx(budget, rel=0.06)  # the run it sized takes its budget


@pytest.mark.parametrize("seed", range(5))
def test_ceiling_calibration_counts_its_full_head_phase_once_as_fixed_cost(monkeypatch, tmp_path, seed):
    # A simulated ceiling: set-up `fixed`, a head phase that costs `head` s in full (tiny when shortened) whatever the
    # step count, then end-to-end steps of `step` s. The calibration runs the full head phase once only, and the run
    # it sizes (full head phase + its steps) takes its budget, however large the head phase is next to it.
    rng = random.Random(seed)
    fixed, step, head = rng.uniform(0.5, 5.0), rng.uniform(0.01, 0.5), rng.uniform(10.0, 60.0)
    budget, calls = rng.uniform(80.0, 600.0), []

    def fake_train(cfg, label, steps, out_file, device, head_clips=None, head_epochs=None):
        calls.append((steps, head_clips, head_epochs))
        head_s = (head if head_clips is None else 0.05) * rng.uniform(0.98, 1.02)
        times, wall = simulated_run(steps, lambda i: step, fixed, rng)
        return {"step_seconds": times, "head_seconds": head_s, "wall": wall + head_s, "train_accuracy": 0.5,
                "last_loss": 1.0, "checkpoint": str(out_file), "head_clips": 8, "head_epochs": 1,
                "head_train_accuracy": 0.9}

    monkeypatch.setattr(supervised, "train_supervised", fake_train)
    monkeypatch.setattr(bq, "timed", lambda fn, *args: (lambda r: (r, r["wall"]))(fn(*args)))
    row = bq.supervise("motion", budget, tmp_path, [], types.SimpleNamespace(device=None))
    n, batch = bq.calibration_steps(), load_config(None, []).train.batch_size
    assert calls[:bq.CALIBRATION_ROUNDS] == [(n, None, None)] + [(n, batch, 1)] * (bq.CALIBRATION_ROUNDS - 1)
    assert calls[-1] == (row["steps"], None, None) and len(calls) == bq.CALIBRATION_ROUNDS + 1
    cal = RunCost(**row["calibration"])
    assert cal.fixed == pytest.approx(fixed + 2.0 + head, rel=0.1) and cal.step == pytest.approx(step, rel=0.05)
    assert row["steps"] == cal.steps_within(budget)
    assert row["steps"] == pytest.approx((budget - cal.fixed) / step, rel=0.1)
    assert row["train_seconds"] == pytest.approx(budget, rel=0.06)


def test_mean_not_median_and_fixed_costs_count():
    # A slow step every fifth (a log write, a late batch) is paid by the run: the mean counts it, a median would not.
    times = [1.0] * 4 + [0.1, 0.1, 0.1, 0.1, 0.6] * 4
    cal = RunCost.measure(times, wall=sum(times) + 3.0, warmup=4)
    assert cal.step == pytest.approx(0.2) and cal.fixed == pytest.approx(3.0 + 4 * 0.8)
    assert cal.steps_within(20.0) == int((20.0 - cal.fixed) / 0.2 + 1e-9)
    assert RunCost(fixed=100.0, step=1.0).steps_within(10.0) == 1  # a run has at least one step


def test_calibration_too_short_or_bad_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="calibration needs more than 4 steps"):
        RunCost.measure([0.1] * 4, wall=1.0, warmup=4)
    with pytest.raises(ConfigError, match="budget"):
        RunCost(fixed=0.0, step=0.1).steps_within(0.0)
