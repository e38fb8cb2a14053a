"""The README's main job on its built-in default: the bare command trains the tiny model and the loss falls."""
import json
import subprocess
import sys
from pathlib import Path

from vjepa_fast import train


def test_bare_command_trains_and_the_loss_falls(tmp_path, subprocess_env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(Path(train.__file__)), f"run_dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 299
    tenth = max(1, len(rows) // 10)
    first = sum(r["loss"] for r in rows[:tenth]) / tenth
    last = sum(r["loss"] for r in rows[-tenth:]) / tenth
    assert last <= 0.8 * first, (first, last)
    assert (tmp_path / "checkpoints" / "step_00000300").is_dir()
