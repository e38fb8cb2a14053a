"""The training loop: config errors, non-finite guard, resume equality, data-parallel equality."""
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from vjepa_fast import train
from vjepa_fast.config import load_config
from vjepa_fast.parallel import DistInfo

SMALL = ["train.steps=8", "train.batch_size=2", "train.log_every=1", "train.ckpt_every=4", "train.progress=false",
         "data.num_workers=0", "data.num_frames=4", "data.crop_size=64", "optim.warmup_steps=2", "train.plots=false"]


def make_trainer(run_dir, extra=()):
    cfg = load_config(None, [f"run_dir={run_dir}", *SMALL, *extra])
    return train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")))


def losses(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.parametrize("override, field", [
    ("data.crop_size=100", "data.crop_size"),
    ("data.num_frames=7", "data.num_frames"),
    ("train.stepz=3", "train.stepz"),
    ("train.batch_size=0", "train.batch_size"),
])
def test_invalid_config_exits_with_one_line(tmp_path, subprocess_env, override, field):
    proc = subprocess.run([sys.executable, "-m", "vjepa_fast.train", f"run_dir={tmp_path}", override],
                          capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert field in lines[0]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_run_writes_config_metrics_and_checkpoints(tmp_path):
    rows = make_trainer(tmp_path).run()
    assert [r["step"] for r in rows] == list(range(8))
    keys = {"step", "loss", "lr", "wd", "ema_momentum", "clips_per_s", "tokens_per_s", "mfu", "max_mem_gb",
            "data_errors"}
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert keys <= set(row)
        assert row["mfu"] is None  # CPU: no known peak
    assert load_config(str(tmp_path / "config.yaml")).train.steps == 8
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000004", "step_00000008"]
    # the EMA momentum follows the linear schedule and the target encoder moved towards the online one
    assert rows[0]["ema_momentum"] < rows[-1]["ema_momentum"] < 1.0


def test_nonfinite_loss_skips_then_stops(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, ["train.max_nonfinite=3"])
    real = trainer.compute_loss
    bad_steps = {2, 5, 6, 7}

    def flaky(batch, row_weight):
        loss = real(batch, row_weight)
        return loss * float("nan") if batch.step in bad_steps else loss

    monkeypatch.setattr(trainer, "compute_loss", flaky)
    before = [p.detach().clone() for p in trainer.params]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(train.NonFiniteLossError, match="3 consecutive"):
            trainer.run()
    messages = [str(w.message) for w in caught if "update skipped" in str(w.message)]
    assert len(messages) == 4 and messages[0].startswith("step 2")
    logged = losses(tmp_path)
    assert 2 not in logged and 3 in logged and 4 in logged  # the bad step was skipped and training went on
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.params))


def test_resume_gives_the_same_losses(tmp_path, monkeypatch):
    ref = make_trainer(tmp_path / "a")
    ref.run()
    expected = losses(tmp_path / "a")

    crashing = make_trainer(tmp_path / "b")
    real = crashing.train_step

    def crash_at_6(batch, step):
        if step == 6:
            raise KeyboardInterrupt("simulated kill")
        return real(batch, step)

    monkeypatch.setattr(crashing, "train_step", crash_at_6)
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    resumed = make_trainer(tmp_path / "b")
    resumed.run()
    got = losses(tmp_path / "b")
    assert sorted(got) == list(range(8))
    for step in range(8):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step


def _torchrun(nproc, run_dir, extra, env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(Path(train.__file__)), f"run_dir={run_dir}", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return losses(run_dir)


def assert_two_processes_match_one(tmp_path, steps: int, extra: list[str], env) -> None:
    """`steps` steps on 2 processes (batch 2 each) give the losses of 1 process (batch 4) within 1e-4 relative:
    the same global batch, so only the reductions' order differs."""
    common = [s for s in SMALL if not s.startswith("train.batch_size")] + [f"train.steps={steps}", *extra]
    one = _torchrun(1, tmp_path / "one", common + ["train.batch_size=4"], env)
    two = _torchrun(2, tmp_path / "two", common + ["train.batch_size=2"], env)
    assert sorted(one) == sorted(two) == list(range(steps))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), step


def test_two_processes_match_one(tmp_path, subprocess_env):
    assert_two_processes_match_one(tmp_path, 6, [], subprocess_env)


def test_compiled_blocks_do_not_recompile_as_token_counts_change(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    trainer = make_trainer(tmp_path, ["train.compile=true", "train.compile_backend=aot_eager"])
    real = trainer.train_step
    graphs, ctx_tokens = [], []

    def counting(batch, step):
        out = real(batch, step)
        graphs.append(counters["stats"]["unique_graphs"])
        ctx_tokens.append(int(batch.masks.ctx_rows.numel()))
        return out

    monkeypatch.setattr(trainer, "train_step", counting)
    rows = trainer.run()
    assert all(r["loss"] == r["loss"] for r in rows)
    assert len(set(ctx_tokens[2:])) > 1  # the packed token count really changed between steps
    assert graphs[1] > 0 and graphs[-1] == graphs[1], graphs  # compiled once (per block kind), then reused


def test_checkpoint_of_two_processes_resumes_in_one(tmp_path, subprocess_env):
    common = [s for s in SMALL if not s.startswith("train.batch_size")]
    two = _torchrun(2, tmp_path, common + ["train.batch_size=2"], subprocess_env)
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000008")  # as if killed after the step-4 checkpoint
    one = _torchrun(1, tmp_path, common + ["train.batch_size=4"], subprocess_env)  # same global batch
    assert sorted(one) == list(range(8))
    for step in range(4, 8):
        assert one[step] == pytest.approx(two[step], rel=1e-4), step
