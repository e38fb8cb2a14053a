"""Checkpoint save / load: single file (full state gathered on rank 0) vs sharded (DCP, each rank its own file) vs
async sharded (DCP in a background thread), for an FSDP2-sharded ViT encoder + AdamW state on 2 processes.

Each variant runs in its own `torchrun` launch (so each peak-memory figure is that variant's alone), this file being
the worker script. Per rank it measures:
- `save_s`: until training could go on (for async: the blocking part, staging the copy in host memory);
- `write_s`: until the checkpoint is committed on disk (equal to save_s except for async);
- `load_s`: restoring model + optimizer into a freshly built sharded model;
- `peak_gb` / `added_gb`: the process's peak resident memory, and how much the save + load added to what the
  sharded model and optimizer already held.
The table goes to the benchmark JSON's extra_info and to checkpoint-<device>.md in the results folder
(benchmarks/conftest.py: `--bench-results DIR`, default .benchmarks/results, gitignored).

GPU: ViT-L (304M parameters, 3.6 GB of fp32 parameters + Adam moments); CPU: ViT-B (86M, 1 GB), gloo.

    PYTHONPATH=. pytest benchmarks/test_bench_checkpoint.py --benchmark-only
"""
from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
MODEL = "large" if CUDA else "base"
NPROC = 2
VARIANTS = ("single_file", "sharded", "async")
MEASURED: dict[str, list[dict]] = {}  # variant -> per-rank rows of this session, for the table


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _build(device):
    """A sharded encoder with a populated AdamW state (one step on random gradients)."""
    from torch.distributed.fsdp import fully_shard

    from vjepa_fast.models.vit import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(MODEL).to(device)
    for blk in model.blocks:
        fully_shard(blk)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def _single_file_save(path: Path, model, opt, rank: int) -> None:
    """The earlier layout: full state gathered to rank 0 on the CPU, one torch.save."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"model": msd, "optim": osd, "step": 1}, path)
    dist.barrier()


def _single_file_load(path: Path, model, opt) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    payload = torch.load(path, map_location="cpu", weights_only=True)
    set_state_dict(model, opt, model_state_dict=payload["model"], optim_state_dict=payload["optim"],
                   options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))


def worker(variant: str, out_dir: str) -> None:
    import torch.distributed as dist

    from vjepa_fast.run import checkpoint as ckpt
    from vjepa_fast.parallel import init_distributed, shutdown_distributed

    di = init_distributed()
    model, opt = _build(di.device)
    run_dir = Path(out_dir) / "run"
    base_gb = _rss_gb()
    dist.barrier()
    t0 = time.perf_counter()
    if variant == "single_file":
        path = run_dir / "single.pt"
        if di.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        _single_file_save(path, model, opt, di.rank)
        save_s = write_s = time.perf_counter() - t0
    else:
        saver = ckpt.Checkpointer(run_dir, keep=1, is_main=di.is_main, async_save=variant == "async",
                                  group=di.control_group)
        saver.save(1, model, opt, {}, "")
        save_s = time.perf_counter() - t0
        saver.wait()
        dist.barrier()
        write_s = time.perf_counter() - t0
        path = ckpt.step_path(run_dir, 1)
    del model, opt
    fresh, fresh_opt = _build(di.device)
    dist.barrier()
    t0 = time.perf_counter()
    if variant == "single_file":
        _single_file_load(path, fresh, fresh_opt)
    else:
        ckpt.Checkpointer(run_dir, keep=1, is_main=di.is_main, group=di.control_group).load(path, fresh, fresh_opt)
    dist.barrier()
    load_s = time.perf_counter() - t0
    row = {"variant": variant, "rank": di.rank, "save_s": save_s, "write_s": write_s, "load_s": load_s,
           "peak_gb": _peak_gb(), "added_gb": _peak_gb() - base_gb,
           "files": sorted(p.name for p in Path(path).iterdir()) if Path(path).is_dir() else [Path(path).name]}
    (Path(out_dir) / f"{variant}-{di.rank}.json").write_text(json.dumps(row))
    # Sharded tensors (and their device mesh) go before the process group, and the group only once every rank is
    # done, as the trainer ends: a worker left to tear these down at interpreter exit aborted once under load.
    del fresh, fresh_opt
    gc.collect()
    shutdown_distributed(wait_for_peers=True)


def _launch(variant: str, out_dir: str) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}", __file__,
           variant, out_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((Path(out_dir) / f"{variant}-{r}.json").read_text()) for r in range(NPROC)]


def _table(rows: list[dict]) -> str:
    lines = [f"Checkpoint save/load, ViT-{MODEL[0].upper()} encoder + AdamW, {NPROC} processes, "
             f"{'CUDA' if CUDA else 'CPU (gloo)'}, torch {torch.__version__}", "",
             "| variant | rank | save s (blocking) | written s | load s | peak RSS GB | added GB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['rank']} | {r['save_s']:.2f} | {r['write_s']:.2f} | {r['load_s']:.2f} | "
                     f"{r['peak_gb']:.2f} | {r['added_gb']:.2f} |")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_save_load(benchmark, variant, results_dir):
    out = tempfile.mkdtemp(prefix=f"bench_ckpt_{variant}_")
    try:
        rows = benchmark.pedantic(_launch, args=(variant, out), rounds=1, iterations=1)
    finally:  # the checkpoints are GBs (ViT-B / ViT-L with AdamW state): never leave them behind
        shutil.rmtree(out, ignore_errors=True)
    if variant != "single_file":
        assert sorted(f for f in rows[0]["files"] if f.endswith(".distcp")) == [f"__{r}_0.distcp"
                                                                                 for r in range(NPROC)]
    benchmark.extra_info.update({"rows": rows, "model": MODEL, "nproc": NPROC})
    MEASURED[variant] = rows
    (results_dir / f"checkpoint-{'cuda' if CUDA else 'cpu'}.md").write_text(
        _table([r for v in VARIANTS for r in MEASURED.get(v, [])]))


if __name__ == "__main__":  # a torchrun worker: python test_bench_checkpoint.py VARIANT OUT_DIR
    worker(sys.argv[1], sys.argv[2])
