"""What a run tells its user: start block, checkpoint lines, end summary, timed metrics rows, warnings, TensorBoard
event files (read back with tensorboard's own reader) and the plots."""
import importlib.util
import json
import logging
import re

import pytest
import torch

from vjepa_fast import plots as plots_cli
from vjepa_fast import train
from vjepa_fast.run import plots, preflight
from vjepa_fast.config import load_config
from vjepa_fast.parallel import DistInfo

TINY = ["train.steps=4", "train.batch_size=2", "train.log_every=1", "train.ckpt_every=2", "train.progress=false",
        "data.num_workers=0", "data.num_frames=4", "data.crop_size=64", "optim.warmup_steps=1"]


def run(run_dir, extra=()):
    cfg = load_config(None, [f"run_dir={run_dir}", *TINY, *extra])
    return train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu"))).run()


def messages(caplog, logger="vjepa_fast.run"):
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_start_block_checkpoint_lines_summary_timed_rows_and_tensorboard(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run(tmp_path, ["train.tensorboard=auto", "train.plots=false"])
    logged = messages(caplog)
    start = next(m for m in logged if m.startswith("run start"))
    for word in ("device", "cpu", "model", "encoder 0.", "data", "synthetic", "clip", "3 x 4 x 64 x 64",
                 "32 tokens", "masks", "short 8 x 0.15", "batch", "2 clips per step", "steps", "run dir",
                 str(tmp_path), "resumed from", "backends", "gather=auto"):
        assert word in start, word
    saved = [m for m in logged if m.startswith("checkpoint step")]
    assert [m.split()[2] for m in saved] == ["2", "4"] and all(" s" in m and "step_0000000" in m for m in saved)
    end = next(m for m in logged if m.startswith("run end"))
    for word in ("4 this start", "wall time", "clips/s", "MFU", "final loss", "data errors", "metrics.jsonl",
                 f"vjepa_fast.eval --checkpoint {tmp_path}"):
        assert word in end, word
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["time"] > 1.7e9 and r["elapsed_s"] >= 0 for r in rows)
    assert [r["elapsed_s"] for r in rows] == sorted(r["elapsed_s"] for r in rows)
    assert json.loads((tmp_path / "starts.jsonl").read_text())["world_size"] == 1
    check_tensorboard(tmp_path, rows)


def test_warnings_short_run_and_deliberate_change_on_resume(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run(tmp_path, ["train.tensorboard=false", "train.plots=false", "optim.warmup_steps=10"])
    assert any("never leaves warm-up" in m for m in messages(caplog))
    caplog.clear()
    run(tmp_path, ["train.tensorboard=false", "train.plots=false", "optim.warmup_steps=10", "train.steps=6"])
    notes = [m for m in messages(caplog) if m.startswith("deliberate change on resume")]
    assert notes == ["deliberate change on resume: train.steps 4 -> 6 (the lr, weight-decay and EMA schedules are "
                     "rescaled to the new length)"]
    assert any(re.search(r"resumed from +step 4 ", m) for m in messages(caplog))
    assert len((tmp_path / "starts.jsonl").read_text().splitlines()) == 2


def test_each_data_error_is_logged_once(tmp_path, caplog, monkeypatch):
    real_open = preflight.open_dataset

    class OneBroken(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return 64

        def __getitem__(self, i):
            if i % 2 == 1:
                raise OSError("broken file")
            return self.inner[i]

    monkeypatch.setattr(preflight, "open_dataset", lambda cfg: OneBroken(real_open(cfg)))
    caplog.set_level(logging.INFO)
    run(tmp_path, ["train.tensorboard=false", "train.plots=false"])
    hits = [r for r in caplog.records if "broken file" in r.getMessage()]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["data_errors"] >= 1 and len(hits) == rows[-1]["data_errors"]


def check_tensorboard(run_dir, rows):
    """Scalars and mask images read back with tensorboard's own reader."""
    if importlib.util.find_spec("tensorboard") is None:
        return  # the run above logged that it wrote none; test_tensorboard_missing_* covers that case
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for key in ("loss", "lr", "wd", "ema_momentum", "grad_norm", "clips_per_s", "elapsed_s", "data_errors"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [r["step"] for r in rows], key
        assert events[-1].value == pytest.approx(rows[-1][key], rel=1e-6), key
    assert len([t for t in tags["images"] if t.startswith("masks/")]) == 2  # short- and long-range


def test_tensorboard_missing_is_one_line_when_asked_for(tmp_path, monkeypatch):
    from vjepa_fast.run import tb_log

    monkeypatch.setattr(tb_log, "tensorboard_available", lambda: "the tensorboard package is not installed")
    with pytest.raises(preflight.RunError, match="train.tensorboard=true but the tensorboard package"):
        tb_log.TensorBoardLog.open(tmp_path, "true", 0)
    assert tb_log.TensorBoardLog.open(tmp_path, "auto", 0) is None  # auto: the run goes on without it
    assert tb_log.TensorBoardLog.open(tmp_path, "false", 0) is None and not (tmp_path / "tb").exists()


@pytest.mark.parametrize("method", ["vjepa", "videomae"])
def test_plots_of_a_finished_run(tmp_path, method, capsys):
    pytest.importorskip("matplotlib")
    run(tmp_path, ["train.tensorboard=false", f"method={method}"])  # a finished run draws its own plots
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["curves.png", "masks.png"]
    for p in (tmp_path / "plots").iterdir():
        p.unlink()
    assert plots_cli.main([str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["curves.png", "masks.png"]
    for name in ("curves.png", "masks.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_overlay_tints_exactly_the_target_tokens():
    frames = torch.rand(4, 32, 48, 3).numpy()
    grid, tubelet = (2, 2, 3), 2  # 16-pixel tokens
    tgt, ctx = [1, 8], [0, 2, 3, 4, 5, 6, 7, 9, 10]  # token 11 in neither set
    pics = plots.overlay(frames, ctx, tgt, grid, tubelet)
    assert pics.shape == (2, 32, 48, 3)
    changed = (abs(pics - frames[::2]) > 1e-9).any(-1)
    tokens = changed.reshape(2, 2, 16, 3, 16).any((2, 4)).reshape(-1)
    assert sorted(tokens.nonzero()[0].tolist()) == [1, 8, 11]


def test_overlay_hatches_targets_in_black_and_white_and_dims_the_rest():
    frames = (0.2 + 0.6 * torch.rand(2, 16, 16, 3)).numpy()  # no pixel is already pure black or white
    pics = plots.overlay(frames, ctx=[0], tgt=[1], grid=(1, 2, 2), tubelet=2)[0]  # 8-pixel tokens; 2, 3 in neither
    target, context, neither = pics[:8, 8:], pics[:8, :8], pics[8:]
    assert (target == 1.0).all(-1).any() and (target == 0.0).all(-1).any()  # both stripe colours
    kept = ~((target == 1.0).all(-1) | (target == 0.0).all(-1))
    assert kept.mean() > 0.4 and (target[kept] == frames[0, :8, 8:][kept]).all()  # the frame shows between stripes
    assert (context == frames[0, :8, :8]).all()
    assert abs(neither - plots.DIM * frames[0, 8:]).max() < 1e-6


def _metrics_rows(n, **extra):
    return [{"step": s, "loss": 1.0 / (s + 1), "lr": 1e-3, "ema_momentum": 0.996, "clips_per_s": 20.0 + s,
             "mfu": None, "target_std": 0.5 - 0.01 * s, "pred_std": 0.4, **extra} for s in range(n)]


def test_curves_draw_the_collapse_signals_and_leave_out_panels_without_data():
    pytest.importorskip("matplotlib")
    fig = plots.curves_figure(_metrics_rows(6), collapse_std=0.05)
    panels = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in fig.axes}
    assert "MFU" not in panels  # null on a CPU: no empty panel
    assert not any("rank" in title for title in panels)  # not logged by this run
    spread = next(labels for title, labels in panels.items() if "spread" in title)
    assert spread == ["target_std", "pred_std", "train.collapse_std=0.05"]
    assert {"loss", "learning rate", "EMA momentum", "clips/s"} <= set(panels)

    fig = plots.curves_figure(_metrics_rows(6, mfu=0.3, target_rank=5.0, context_rank=7.5))
    panels = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in fig.axes}
    assert "MFU" in panels
    assert next(labels for title, labels in panels.items() if "rank" in title) == ["target_rank", "context_rank"]
    with pytest.raises(plots.PlotError):
        plots.curves_figure([])


def test_plots_command_errors_are_one_line(tmp_path, capsys):
    assert plots_cli.main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run directory" in err[0]
