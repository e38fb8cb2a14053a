"""Damaged shards and read errors in a 2-process run (torchrun, gloo on CPU): a shard of either rank with same-size
random bytes or cut to half makes every rank resume from the previous checkpoint, bit-exact with the uninterrupted
run; a read error on one rank stops every rank with one line and renames nothing."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vjepa_fast.run import checkpoint as ckpt
from vjepa_fast import train

from test_checkpoint_faults import assert_same_state
from test_checkpoint_safety import damage_shard
from test_distributed_faults import RUN, reference  # noqa: F401 (reference: a fixture)
from test_train import losses


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("how", ["random", "half"])
def test_a_damaged_shard_of_any_rank_makes_every_rank_use_the_previous_checkpoint(reference, tmp_path,
                                                                                  subprocess_env, rank, how):
    ref_dir, final, ref_losses = reference
    run = tmp_path / "run"
    shutil.copytree(ref_dir, run)
    damage_shard(ckpt.step_path(run, 12) / f"__{rank}_0.distcp", how, seed=rank)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.run(torchrun_cmd(run), stdout=subprocess.DEVNULL, stderr=err, env=subprocess_env,
                              timeout=600)
    assert proc.returncode == 0, log.read_text()[-4000:]
    warned = [ln for ln in log.read_text().splitlines() if "checkpoint damaged" in ln]
    assert len(warned) == 1 and f"shard __{rank}_0.distcp (written by rank {rank})" in warned[0], warned
    got = losses(run)
    assert sorted(got) == list(range(12))
    for step in range(8, 12):  # redone from step 8 on both ranks: a mismatch would change the losses
        assert got[step] == pytest.approx(ref_losses[step], rel=1e-6), step
    assert_same_state(final, ckpt.load_payload(ckpt.step_path(run, 12)))
    assert any(n.startswith("step_00000012.unreadable-") for n in os.listdir(run / "checkpoints"))


def torchrun_cmd(run_dir, script=None, steps=12):
    run = [s for s in RUN if not s.startswith("train.steps=")] + [f"train.steps={steps}"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(script or Path(train.__file__)), f"run_dir={run_dir}", *run]


# Runs the trainer with every shard read on rank 1 failing as a disk or network file system can fail.
READ_ERROR_ON_RANK_1 = """
import errno, os, runpy, sys
from vjepa_fast.weights import dcp_safe

real = dcp_safe.SafeReader.read_data


def read_data(self, plan, planner):
    if os.environ["RANK"] == "1":
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(self.path))
    return real(self, plan, planner)


dcp_safe.SafeReader.read_data = read_data
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name="__main__")
"""


def test_a_read_error_on_one_rank_stops_every_rank_and_retires_nothing(reference, tmp_path, subprocess_env):
    ref_dir, _, _ = reference
    run = tmp_path / "run"
    shutil.copytree(ref_dir, run)
    script = tmp_path / "train_with_read_error.py"
    script.write_text(READ_ERROR_ON_RANK_1.format(train=str(Path(train.__file__))))
    before = (run / "metrics.jsonl").read_text()
    proc = subprocess.run(torchrun_cmd(run, script, steps=16), capture_output=True, text=True,
                          env=subprocess_env, timeout=600)
    assert proc.returncode != 0
    # both ranks stop with the same line (two processes on one pipe: the lines may run together)
    errors = [e.split("every rank stops")[0] for e in proc.stderr.split("error: ")[1:] if "every rank stops" in e]
    assert len(errors) == 2 and errors[0] == errors[1], proc.stderr[-3000:]
    assert "step_00000012 could not be read on rank 1 (input/output error" in errors[0], errors
    assert "does not fit this model" not in proc.stderr
    assert (run / "metrics.jsonl").read_text() == before  # nobody trained on from another checkpoint
    assert sorted(os.listdir(run / "checkpoints")) == ["step_00000008", "step_00000012"]  # nothing retired
