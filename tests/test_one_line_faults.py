"""Faults outside the step loop that must end in one line, not a traceback or a hang: a full disk under
metrics.jsonl, an unknown torch.compile backend, and a process group whose peers never come."""
import errno
import io
import os
import socket
import subprocess
import sys
import time

import pytest

from vjepa_fast import train
from vjepa_fast.run import checkpoint, metrics
from vjepa_fast.config import ConfigError, load_config
from vjepa_fast.parallel import CREATION_DEADLINE_FACTOR

from test_train import losses
from test_user_errors import TINY, one_error_line


class FillsUp(io.RawIOBase):
    """A file on a disk with room for `writes` more writes: then every write fails with ENOSPC, as on a full disk."""

    def __init__(self, path, writes):
        self.f, self.writes = open(path, "ab", buffering=0), writes

    def writable(self):
        return True

    def write(self, b):
        if self.writes == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.writes -= 1
        return self.f.write(b)

    def close(self):
        self.f.close()
        super().close()


def test_a_full_disk_under_metrics_jsonl_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    real_open = open

    def full_after_one_row(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and "a" in mode:  # the log the rows are appended to
            return io.TextIOWrapper(io.BufferedWriter(FillsUp(path, writes=1)), line_buffering=True)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(metrics, "open", full_after_one_row, raising=False)
    argv = [f"run_dir={tmp_path}", *TINY]  # a checkpoint after every step
    line = one_error_line(capsys, argv)
    assert line.startswith(f"error: writing {tmp_path / 'metrics.jsonl'} failed: no space left"), line
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [1]  # saved before the disk filled up
    monkeypatch.undo()  # space freed: the relaunch resumes at step 1 and logs the rest
    assert train.main(argv) == 0
    assert sorted(losses(tmp_path)) == [0, 1]


def test_an_unknown_compile_backend_is_a_config_error(tmp_path, capsys):
    line = one_error_line(capsys, [f"run_dir={tmp_path}", *TINY, "train.compile_backend=nosuch"])
    assert line.startswith("config error: train.compile_backend: unknown torch.compile backend 'nosuch'"), line
    assert "aot_eager" in line and not tmp_path.joinpath("config.yaml").exists()
    assert load_config(None, ["train.compile_backend=aot_eager"]).train.compile_backend == "aot_eager"
    with pytest.raises(ConfigError, match="compile_backend"):
        load_config(None, ["train.compile_backend=Inductor"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lone_rank(rank, run_dir, env, timeout_s, code_before=""):
    """Rank `rank` of a 2-process run whose other rank never starts; returns (exit code, stderr lines, seconds)."""
    env = dict(env, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))
    argv = [f"run_dir={run_dir}", *TINY, f"parallel.timeout_s={timeout_s}"]
    code = f"{code_before}import sys; from vjepa_fast import train; sys.exit(train.main({argv!r}))"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, [ln for ln in proc.stderr.splitlines() if ln.strip()], time.monotonic() - start


@pytest.mark.parametrize("rank, why", [(0, "waiting for clients. 1/2 clients joined"),  # hosts the store alone
                                       (1, "timed out after 2000ms while trying to connect")])  # no store at all
def test_a_peer_that_never_comes_stops_group_creation_within_the_timeout_in_one_line(
        rank, why, tmp_path, subprocess_env):
    code, err, _ = lone_rank(rank, tmp_path / "run", subprocess_env, 2)
    # (torch's C++ logger prints its own lines about a store it cannot reach before: not a Python traceback)
    errors = [ln for ln in err if ln.startswith("error:") or "Traceback" in ln]
    assert code == 1 and len(errors) == 1 and err[-1] == errors[0], err
    assert errors[0].startswith(f"error: rank {rank}: creating the process group failed ("), errors
    assert why in errors[0] and "parallel.timeout_s=2 s" in errors[0], errors
    assert not (tmp_path / "run").exists()  # nothing was touched


def test_a_hang_inside_group_creation_ends_at_the_deadline_in_one_line(tmp_path, subprocess_env):
    hang = ("import time, torch.distributed as dist; dist.init_process_group = lambda *a, **k: time.sleep(600); "
            "import vjepa_fast.parallel as p; p.CREATION_DEADLINE_SLACK_S = 0; ")  # the margin, not the bound, off
    code, err, took = lone_rank(0, tmp_path / "run", subprocess_env, 1, code_before=hang)
    assert code == 1 and err[-1].startswith("error: rank 0: creating the process group did not finish within "
                                            f"{CREATION_DEADLINE_FACTOR} s ({CREATION_DEADLINE_FACTOR} x "
                                            "parallel.timeout_s + 0 s)"), err
    assert not any("Traceback" in ln for ln in err) and took < 120 and not (tmp_path / "run").exists()
