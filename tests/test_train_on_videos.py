"""End to end on real files: pretraining on a folder of mp4 videos that holds a corrupt and an empty file."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("av")

from vjepa_fast import train  # noqa: E402
from vjepa_fast.data.export_synthetic import export_synthetic  # noqa: E402


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    export_synthetic(str(root), num=6, num_frames=20, size=64, fps=10, seed=3)
    (root / "index.txt").unlink()  # a plain folder of videos, no index
    good = sorted(root.glob("*.mp4"))[0].read_bytes()
    (root / "corrupt.mp4").write_bytes(good[: len(good) // 3][::-1])  # reversed bytes: no container to find
    (root / "empty.mp4").write_bytes(b"")
    return root


def test_torchrun_on_a_folder_with_broken_files(tmp_path, video_folder, subprocess_env):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(Path(train.__file__)), f"run_dir={run_dir}", f"data.path={video_folder}", "train.steps=12",
           "train.batch_size=4", "data.num_frames=8", "data.crop_size=64", "data.num_workers=1",
           "train.progress=false", "train.log_every=1", "data.max_error_fraction=0.5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(12))
    assert all(r["loss"] == r["loss"] for r in rows)  # finite training went on
    errors = rows[-1]["data_errors"]
    assert errors >= 1
    assert sorted(r["data_errors"] for r in rows) == [r["data_errors"] for r in rows]  # a running count
    # every broken file is logged with its path, once (the loader's one worker is one process), however often drawn
    logged = [line for line in proc.stderr.splitlines() if "skipping unreadable sample" in line]
    names = [name for name in ("corrupt.mp4", "empty.mp4") for line in logged if name in line]
    assert 1 <= len(logged) <= errors and sorted(names) == sorted(set(names)) and len(names) == len(logged)


def test_error_limit_stops_the_run_with_a_clear_message(tmp_path, subprocess_env):
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(4):
        (root / f"broken_{i}.mp4").write_bytes(b"not a video" * (i + 1))
    cmd = [sys.executable, "-m", "vjepa_fast.train", f"run_dir={tmp_path / 'run'}", f"data.path={root}",
           "train.steps=50", "train.batch_size=4", "data.num_frames=4", "data.crop_size=32", "data.num_workers=0",
           "train.progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env, timeout=600)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "failed to load" in last and "broken_" in last
