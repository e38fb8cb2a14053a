"""Preemption as a cluster does it: SIGTERM or SIGUSR1 to every process of the job at once (the launcher, the
trainers and their data-loader workers), for 1 process (plain python) and 2 (torchrun + gloo), with 0, 1 and 4 loader
workers. Each run must finish its step, save, exit with the requeue code and leave no process behind; the relaunch
must end bit-identical to an uninterrupted run.

torchrun starts each trainer in a session of its own, so signalling the launcher's process group would miss them: like
a cluster (which signals every process of the job's cgroup), the test signals every process of the job's tree. The
job is frozen (SIGSTOP) while it is signalled, so the signal always lands mid-run, however loaded the machine is."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from vjepa_fast.run import checkpoint as ckpt
from vjepa_fast.data.loader import BatchStream
from vjepa_fast.data.worker_signals import ignore_stop_signals, stop_signals_held
from vjepa_fast.run.lifecycle import REQUEUE_EXIT_CODE

from test_checkpoint_faults import assert_same_state
from test_distributed_faults import alive, torchrun_cmd, wait_for
from test_train import SMALL, losses

STEPS = 16
RUN = [s for s in SMALL if not s.startswith(("train.steps", "train.ckpt_every", "data.num_workers"))] + [
    f"train.steps={STEPS}", f"train.ckpt_every={STEPS}"]


class StuckAt:
    """range(n), except that reading item `stuck` never ends (a worker stuck on a file)."""

    def __init__(self, n, stuck=None):
        self.n, self.stuck = n, stuck

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.stuck:
            time.sleep(3600)
        return i


def loader_workers(stream):
    return [w.pid for w in stream._it._workers]


def test_loader_workers_ignore_the_stop_signals_and_close_ends_them():
    stream = BatchStream(DataLoader(StuckAt(40), batch_size=2, num_workers=2, worker_init_fn=ignore_stop_signals,
                                    persistent_workers=True, timeout=60))
    got = [next(stream)]
    workers = loader_workers(stream)
    for sig in ("-TERM", "-USR1"):  # from another process, as a cluster sends them: either would kill a worker
        subprocess.run(["kill", sig, *map(str, workers)], check=True)
    time.sleep(0.2)
    got += list(stream)
    assert torch.cat(got).tolist() == list(range(40))
    stream.close()
    assert not any(alive(p) for p in workers)


def test_close_ends_a_worker_stuck_in_a_read():
    stream = BatchStream(DataLoader(StuckAt(8, stuck=1), batch_size=1, num_workers=2,
                                    worker_init_fn=ignore_stop_signals, persistent_workers=True))
    next(stream)
    workers = loader_workers(stream)
    time.sleep(0.5)  # item 1 is being read by the second worker, for ever
    stream.close()  # torch's SIGTERM is ignored: the stuck worker must still end
    assert not any(alive(p) for p in workers)


def test_a_stop_signal_held_back_while_workers_start_arrives_after():
    got = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        with stop_signals_held():
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            time.sleep(0.05)
            assert got == []
        assert got == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def launch_cmd(nproc, run_dir, workers):
    extra = [*RUN, f"data.num_workers={workers}"]
    if nproc == 1:
        return [sys.executable, "-m", "vjepa_fast.train", f"run_dir={run_dir}", *extra]
    return torchrun_cmd(nproc, run_dir, extra)


def descendants(pid):
    """Every live process below `pid` (children, their children, ...)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parent_of[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        below = [p for p, parent in parent_of.items() if parent in frontier]
        found += below
        frontier = below
    return found


def signal_all(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def run_to_end(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """nproc -> the final state of an uninterrupted run (no loader workers: the data does not depend on them)."""
    env = dict(os.environ, PYTHONPATH=str(Path(ckpt.__file__).parents[1]), OMP_NUM_THREADS="1")
    done = {}

    def final(nproc):
        if nproc not in done:
            d = tmp_path_factory.mktemp(f"uninterrupted{nproc}")
            run_to_end(launch_cmd(nproc, d, 0), env)
            done[nproc] = ckpt.load_payload(ckpt.step_path(d, STEPS))
        return done[nproc]

    return final


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
@pytest.mark.parametrize("workers", [0, 1, 4])
@pytest.mark.parametrize("nproc", [1, 2])
def test_a_signal_to_every_process_saves_exits_for_a_requeue_and_resumes_bit_identically(
        nproc, workers, sig, uninterrupted, tmp_path, subprocess_env):
    run = tmp_path / "run"
    cmd = launch_cmd(nproc, run, workers)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        job = subprocess.Popen(cmd, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=err,
                               start_new_session=True)
    procs = []
    try:
        metrics = run / "metrics.jsonl"
        wait_for(lambda: (metrics.is_file() and metrics.stat().st_size > 0) or job.poll() is not None, 300,
                 "the first logged step")
        procs = [job.pid, *descendants(job.pid)]
        launcher = 1 if nproc > 1 else 0
        assert job.poll() is None and len(procs) >= launcher + nproc * (1 + workers), "ended before the signal"
        signal_all(procs, signal.SIGSTOP)
        signal_all(procs, sig)
        signal_all(procs, signal.SIGCONT)
        rc = job.wait(timeout=300)
        wait_for(lambda: not any(alive(p) for p in procs), 120, "every process of the job to exit")
    finally:
        signal_all([p for p in procs if alive(p)], signal.SIGKILL)
        if job.poll() is None:
            job.kill()
            job.wait()
    err = log.read_text()
    assert "killed by signal" not in err and "[rank" not in err, err[-4000:]  # no trainer traceback
    if nproc == 1:
        assert rc == REQUEUE_EXIT_CODE and "Traceback" not in err, err[-4000:]
    # (torchrun's own exit is its business: 1 after forwarding SIGTERM, killed by an unhandled SIGUSR1)
    for rank in range(nproc):
        assert f"rank {rank}: stopped by {sig.name} after step " in err, err[-4000:]
        assert f"(saved); exiting with code {REQUEUE_EXIT_CODE}" in err
    saved = [s for s, _ in ckpt.list_checkpoints(run)]
    assert len(saved) == 1 and 0 < saved[0] < STEPS, saved  # the step that was running finished and was saved
    assert sorted(losses(run)) == list(range(saved[0]))
    run_to_end(cmd, subprocess_env)
    assert_same_state(uninterrupted(nproc), ckpt.load_payload(ckpt.step_path(run, STEPS)))
    assert sorted(losses(run)) == list(range(STEPS))
