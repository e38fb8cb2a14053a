"""benchmarks/step_anatomy.py on the tiny config: every phase present, rows adding up to the step, outputs written."""
import importlib.util
import json
from pathlib import Path

import torch

from vjepa_fast import profiling
from vjepa_fast.config import load_config
from vjepa_fast.data.loader import MaskCollate, build_dataset, make_loader
from vjepa_fast.parallel import DistInfo
from vjepa_fast.train import Trainer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SMALL = ["data.num_frames=4", "data.crop_size=64", "train.batch_size=2"]
PHASES = {"data", "target", "context", "predictor", "loss", "backward: loss", "backward: predictor",
          "backward: context encoder", "optimizer", "ema"}


def _anatomy():
    spec = importlib.util.spec_from_file_location("bench_step_anatomy", BENCH / "step_anatomy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_anatomy_rows_cover_the_step(tmp_path, monkeypatch):
    roofline = tmp_path / "roofline.json"  # skip measuring the CPU's copy rate again
    roofline.write_text(json.dumps({"device": "cpu", "copy_gb_per_s": 10.0, "matmul_tflops": None}))
    monkeypatch.setenv("VJEPA_FAST_ROOFLINE_JSON", str(roofline))
    out = tmp_path / "out"
    assert _anatomy().main(["--out", str(out), "--tag", "before", "--steps", "2", "--warmup", "1", *SMALL]) == 0
    result = json.loads((out / "anatomy_before.json").read_text())
    assert (out / "anatomy_before.md").read_text().count("\n| ") == len(result["rows"]) + 1  # header + rows
    rows = {r["phase"]: r for r in result["rows"]}
    assert PHASES <= set(rows), set(rows)
    assert "backward" not in rows  # replaced by its per-module split
    total = sum(r["ms"] for r in result["rows"])
    assert abs(total - result["step_ms"]) <= 1e-6 * result["step_ms"]
    assert abs(sum(r["share"] for r in result["rows"]) - 1.0) < 1e-6
    assert all(r["ms"] >= 0 for r in result["rows"])
    for name in ("target", "context", "predictor", "backward: predictor", "backward: context encoder"):
        assert rows[name]["tflop_per_s"] > 0
    assert rows["optimizer"]["gb_per_s"] > 0 and rows["optimizer"]["of_roofline"] > 0
    assert result["gpu_busy_ms"] is None  # CPU: no device timeline
    assert profiling._OBSERVER is None  # the observer is removed afterwards


def test_phase_work_adds_up_to_the_step_flops(tmp_path):
    cfg = load_config(None, [*SMALL, f"run_dir={tmp_path}", "data.num_workers=0"])
    trainer = Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    collate = MaskCollate(trainer.masker, trainer.num_tokens)
    batch = next(iter(make_loader(build_dataset(cfg.data, 0), collate, 2, 0, 1, 0, 1, 0, 0, pin_memory=False)))
    work = _anatomy().phase_work(trainer, batch)
    fwd = sum(work[k]["flops"] for k in ("target", "context", "predictor", "backward"))
    assert abs(fwd - trainer.step_flops(batch)) <= 1e-9 * fwd
    split = work["backward: predictor"]["flops"] + work["backward: context encoder"]["flops"]
    assert work["backward"]["flops"] == split
