"""Faults of multi-process runs under torchrun (gloo on CPU): a killed rank, a torn shard on one rank's file, a killed
launcher, HSDP equal to data parallel, and a 4-process checkpoint resuming in 2 and in 1. Damaged shards and read
errors on one rank: test_shard_damage_distributed.py."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.distributed.checkpoint import FileSystemReader

from vjepa_fast.run import checkpoint as ckpt
from vjepa_fast import train

from test_checkpoint_faults import assert_same_state
from test_train import SMALL, losses

RUN = [s for s in SMALL if not s.startswith(("train.steps", "train.batch_size"))] + ["train.steps=12",
                                                                                     "train.batch_size=2"]


def torchrun_cmd(nproc, run_dir, extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(Path(train.__file__)), f"run_dir={run_dir}", *extra]


def torchrun(nproc, run_dir, extra, env):
    proc = subprocess.run(torchrun_cmd(nproc, run_dir, extra), capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return losses(run_dir)


def children(pid):
    """Live (non-zombie) child pids of `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rank_of(pid):
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(e for e in env if e.startswith(b"RANK=")).split(b"=", 1)[1])


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-process run of 12 steps (checkpoints at 8 and 12 kept) and its final state."""
    d = tmp_path_factory.mktemp("reference")
    env = dict(os.environ, PYTHONPATH=str(Path(train.__file__).parents[1]), OMP_NUM_THREADS="1")
    torchrun(2, d, RUN, env)
    return d, ckpt.load_payload(ckpt.step_path(d, 12)), losses(d)


def test_sigkill_of_one_rank_then_restart_is_bit_identical(reference, tmp_path, subprocess_env):
    _, final, _ = reference
    agent = subprocess.Popen(torchrun_cmd(2, tmp_path, RUN), env=subprocess_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ckpt.step_path(tmp_path, 4).is_dir() or agent.poll() is not None, 300, "step 4")
        workers = children(agent.pid)
        assert agent.poll() is None and len(workers) == 2, "the run ended before it could be killed"
        os.kill(next(p for p in workers if rank_of(p) == 1), signal.SIGKILL)
        assert agent.wait(timeout=120) != 0
    finally:
        if agent.poll() is None:
            agent.kill()
    assert ckpt.list_checkpoints(tmp_path)[-1][0] < 12  # really interrupted
    torchrun(2, tmp_path, RUN, subprocess_env)
    assert_same_state(final, ckpt.load_payload(ckpt.step_path(tmp_path, 12)))
    assert sorted(losses(tmp_path)) == list(range(12))


def test_torn_shard_of_rank_1_makes_every_rank_use_the_previous_checkpoint(reference, tmp_path, subprocess_env):
    ref_dir, final, ref_losses = reference
    shutil.copytree(ref_dir, tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in ckpt.step_path(run, 12).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    shard = ckpt.step_path(run, 12) / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    got = torchrun(2, run, RUN, subprocess_env)
    assert sorted(got) == list(range(12))
    for step in range(8, 12):  # redone from step 8 on both ranks: a mismatch would change the losses
        assert got[step] == pytest.approx(ref_losses[step], rel=1e-6), step
    assert_same_state(final, ckpt.load_payload(ckpt.step_path(run, 12)))


def test_killing_the_launcher_stops_its_workers(tmp_path, subprocess_env):
    extra = [s for s in RUN if not s.startswith("train.steps")] + ["train.steps=100000", "train.ckpt_every=100000"]
    agent = subprocess.Popen(torchrun_cmd(2, tmp_path, extra), env=subprocess_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        metrics = tmp_path / "metrics.jsonl"
        wait_for(lambda: (metrics.is_file() and metrics.stat().st_size > 0) or agent.poll() is not None, 300,
                 "the first logged step")
        workers = children(agent.pid)
        assert agent.poll() is None and len(workers) == 2
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        wait_for(lambda: not any(alive(p) for p in workers), 120, "the workers to exit")
    finally:
        if agent.poll() is None:
            agent.kill()
    # they stopped like on a preemption: saved where they were, so nothing is lost
    assert ckpt.list_checkpoints(tmp_path), os.listdir(tmp_path)


def test_a_stalled_rank_makes_the_others_stop_within_the_timeout_with_one_line(tmp_path, subprocess_env):
    extra = [s for s in RUN if not s.startswith("train.steps")] + ["train.steps=100000", "parallel.timeout_s=5"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        agent = subprocess.Popen(torchrun_cmd(2, tmp_path / "run", extra), env=subprocess_env,
                                 stdout=subprocess.DEVNULL, stderr=err)
    workers = []
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        wait_for(lambda: (metrics.is_file() and metrics.stat().st_size > 0) or agent.poll() is not None, 300,
                 "the first logged step")
        workers = children(agent.pid)
        by_rank = {rank_of(p): p for p in workers}
        os.kill(by_rank[1], signal.SIGSTOP)  # stalled, not dead: only the timeout can notice
        wait_for(lambda: not alive(by_rank[0]), 120, "rank 0 to give up")
    finally:
        for p in workers:
            if alive(p):
                os.kill(p, signal.SIGKILL)
        agent.kill()
        agent.wait()
    lines = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: rank 0: a collective failed during step "), lines
    assert "parallel.timeout_s=5" in lines[0]


def test_hsdp_2x2_matches_data_parallel_and_its_checkpoint_resumes_in_2_and_1(tmp_path, subprocess_env):
    common = [s for s in SMALL if not s.startswith(("train.steps", "train.batch_size"))] + ["train.steps=6"]
    one = torchrun(1, tmp_path / "one", common + ["train.batch_size=4"], subprocess_env)
    hsdp = tmp_path / "hsdp"
    four = torchrun(4, hsdp, common + ["train.batch_size=1", "parallel.replicate=2", "parallel.shard=2"],
                    subprocess_env)
    assert sorted(one) == sorted(four) == list(range(6))
    for step in one:
        assert four[step] == pytest.approx(one[step], rel=1e-4), step
    assert len(list(ckpt.step_path(hsdp, 4).glob("*.distcp"))) == 4  # one shard file per rank, no gather
    # really HSDP: every parameter is split in 2 (the shard dim), not in 4 as full sharding over 4 would
    meta = FileSystemReader(ckpt.step_path(hsdp, 4)).read_metadata().state_dict_metadata
    assert max(len(v.chunks) for k, v in meta.items() if k.startswith("model.") and hasattr(v, "chunks")) == 2
    for nproc in (2, 1):
        d = tmp_path / f"resume{nproc}"
        shutil.copytree(hsdp, d)
        shutil.rmtree(ckpt.step_path(d, 6))  # as if stopped after the step-4 checkpoint
        got = torchrun(nproc, d, common + [f"train.batch_size={4 // nproc}"], subprocess_env)
        for step in (4, 5):
            assert got[step] == pytest.approx(four[step], rel=1e-4), (nproc, step)
