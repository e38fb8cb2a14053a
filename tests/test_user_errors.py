"""Failures a user can cause: one line on stderr, a non-zero exit, no traceback, and an existing run left as it was."""
import errno
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vjepa_fast import train
from vjepa_fast.run import checkpoint

TINY = ["train.steps=2", "train.batch_size=2", "train.log_every=1", "train.ckpt_every=1", "train.progress=false",
        "train.plots=false", "train.tensorboard=false", "data.num_workers=0", "data.num_frames=4",
        "data.crop_size=64", "optim.warmup_steps=1"]


def snapshot(run_dir: Path) -> dict:
    """Every file of the run dir, except the lock file that names the last launch to hold the dir (rundir.py)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    assert train.main([f"run_dir={run_dir}", *TINY]) == 0
    return run_dir


def one_error_line(capsys, argv) -> str:
    code = train.main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0
    assert len(err) == 1, err
    assert err[0].startswith(("error: ", "config error: ")), err
    return err[0]


@pytest.mark.parametrize("change, words", [
    (["model.size=small"], "model.size tiny -> small"),
    (["method=videomae", "loss.sigreg=0"], "method vjepa -> videomae"),
    (["train.batch_size=4"], "global batch 2 -> 4"),
    (["data.crop_size=96"], "data.crop_size 64 -> 96"),
])
def test_incompatible_resume_is_refused_and_the_run_kept(finished_run, capsys, change, words):
    before = snapshot(finished_run)
    line = one_error_line(capsys, [f"run_dir={finished_run}", *TINY, *change])
    assert words in line and "another run_dir" in line
    assert snapshot(finished_run) == before


def test_checkpoint_that_does_not_fit_is_one_line(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "no_config"  # no config.yaml to compare with: the checkpoint itself is refused
    shutil.copytree(finished_run / "checkpoints", run_dir / "checkpoints")
    before = snapshot(run_dir)
    line = one_error_line(capsys, [f"run_dir={run_dir}", *TINY, "model.size=small"])
    assert "does not fit this model" in line
    assert snapshot(run_dir) == before


def test_bad_inputs_before_the_run_dir_is_touched(finished_run, tmp_path, capsys):
    before = snapshot(finished_run)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    bad_index = tmp_path / "train.txt"
    bad_index.write_text("a.mp4 0\nb.mp4\n")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    cases = [
        (["data.path=/nonexistent/videos"], "neither a folder nor an index file"),
        ([f"data.path={bad_index}"], f"{bad_index}:2"),
        ([f"train.init_from={empty}"], "empty file"),
        ([f"train.init_from={tmp_path / 'missing.pt'}"], "no such file"),
        (["backends.gather=cuda"], "backends.gather=cuda cannot run here"),
        (["backends.attention=flash_attn"], "backends.attention=flash_attn cannot run here"),
    ]
    if importlib.util.find_spec("decord") is None:
        cases.append(([f"data.path={bad_index}", "data.decoder=decord"], "decord"))
    for change, words in cases:
        line = one_error_line(capsys, [f"run_dir={finished_run}", *TINY, *change])
        assert words in line, line
        assert snapshot(finished_run) == before, change
    line = one_error_line(capsys, [f"run_dir={not_a_dir / 'run'}", *TINY])
    assert "not writable" in line
    new_dir = tmp_path / "new"
    one_error_line(capsys, [f"run_dir={new_dir}", *TINY, "data.path=/nonexistent/videos"])
    assert not new_dir.exists()  # the data path is checked before the run dir is created


def test_disk_full_while_saving_is_one_line(tmp_path, capsys, monkeypatch):
    real_write = checkpoint._write_synced

    def full_after_first(path, data):  # the disk fills up while the second checkpoint is written
        if "step_00000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(checkpoint, "_write_synced", full_after_first)
    line = one_error_line(capsys, [f"run_dir={tmp_path}", *TINY])
    assert "no space left" in line.lower() and "intact" in line
    assert checkpoint.list_checkpoints(tmp_path)[-1][0] == 1  # the first checkpoint is there, complete
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # the failed save cleaned up after itself


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="neither a folder"):
        train.main(["--debug", f"run_dir={tmp_path}", *TINY, "data.path=/nonexistent/videos"])


def test_the_whole_stderr_is_one_line(finished_run, subprocess_env):
    """Through a real process: nothing but the error line on stderr (no traceback, no log noise)."""
    before = snapshot(finished_run)
    proc = subprocess.run([sys.executable, "-m", "vjepa_fast.train", f"run_dir={finished_run}", *TINY,
                           "model.size=small"], capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if "Traceback" in ln or ln.startswith("error:")]
    assert errors == [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] and len(errors) == 1, \
        proc.stderr
    assert snapshot(finished_run) == before
