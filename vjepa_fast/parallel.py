"""Distribution and compilation applied from outside to plain models, in the order that composes:
activation checkpointing -> per-block torch.compile -> FSDP2 (fully_shard per block, then per top module).

FSDP2 runs on a device mesh: 1-D (full sharding over every process, the default) or 2-D `replicate x shard`
(HSDP: parameters sharded inside a group of `shard` processes, usually one node, and replicated across groups, so
the per-layer all-gathers stay on the fast intra-node links and only the gradient all-reduce crosses nodes).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from vjepa_fast.config.schema import ConfigError
from vjepa_fast.run.lifecycle import CollectiveError, backend_message, die_with_parent


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control_group: Optional[dist.ProcessGroup] = None  # CPU (gloo) group for small host-side collectives

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float = 600.0) -> DistInfo:
    """Process group from torchrun's environment when WORLD_SIZE > 1; a single process needs no set-up at all.

    `timeout_s` bounds every collective, and the group's creation: a rank that died, stalls or never comes makes the
    others fail after it with one line (CollectiveError), not hang."""
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: never outlive its agent
        die_with_parent()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    control = None
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=timeout_s)
        with creation_deadline(rank, timeout_s):
            try:
                dist.init_process_group(backend, device_id=device if device.type == "cuda" else None,
                                        timeout=timeout)
                if backend != "gloo":  # async checkpoint saves and the stop flag need a CPU group
                    control = dist.new_group(backend="gloo", timeout=timeout)
            except (RuntimeError, TimeoutError, ConnectionError) as e:  # DistError is a RuntimeError
                raise CollectiveError(f"rank {rank}: creating the process group failed ({backend_message(e)}); "
                                      f"{_PEERS_HINT.format(timeout_s=timeout_s)}") from None
    return DistInfo(rank, world, local_rank, device, control)


_PEERS_HINT = ("another rank did not start, died or could not be reached within parallel.timeout_s={timeout_s:g} s "
               "(check MASTER_ADDR/MASTER_PORT and that every node runs the same launch)")
# Creation waits for every rank at the store, then connects the ranks, each bounded by the timeout; plus a margin for a
# loaded host. gloo retries a connection that times out 3 times, so a peer that is gone (or the stale address of a
# peer from before a torchrun restart) would keep it there for 4 x the timeout: the deadline cuts that short.
CREATION_DEADLINE_FACTOR, CREATION_DEADLINE_SLACK_S = 2, 60.0


@contextlib.contextmanager
def creation_deadline(rank: int, timeout_s: float):
    """A last bound on process-group creation. Each of its waits honours `timeout_s`, but they add up, gloo retries
    (a restarted 2-process gloo group under torchrun --max-restarts sat in its connection retries for 5 x the
    timeout), and a hang inside a backend would honour nothing: a process still inside after
    CREATION_DEADLINE_FACTOR x timeout_s + CREATION_DEADLINE_SLACK_S says so in one line and exits with 1, which its
    launcher may restart."""
    limit = CREATION_DEADLINE_FACTOR * timeout_s + CREATION_DEADLINE_SLACK_S

    def give_up():
        sys.stderr.write(f"error: rank {rank}: creating the process group did not finish within {limit:g} s "
                         f"({CREATION_DEADLINE_FACTOR} x parallel.timeout_s + {CREATION_DEADLINE_SLACK_S:g} s); "
                         f"{_PEERS_HINT.format(timeout_s=timeout_s)}\n")
        sys.stderr.flush()
        os._exit(1)  # the main thread is stuck inside the backend: nothing else can end it

    timer = threading.Timer(limit, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def shutdown_distributed(wait_for_peers: bool = False) -> None:
    """Destroy the process group. After a run that ended normally everywhere (`wait_for_peers`), first wait until
    every rank is done, so no rank tears its group down while another still finishes its last collective work
    (under load, gloo aborted a worker that did)."""
    if dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


def block_lists(part: nn.Module) -> list[nn.ModuleList]:
    """The transformer blocks a model's part names as its repeated ones (models/protocol.py)."""
    return [part.repeated_blocks()]


def _checkpointed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model) -> None:
    """Recompute each block's activations in backward (instance-level forward swap keeps parameter names)."""
    for blocks in model.repeated_blocks().values():
        for blk in blocks:
            blk.forward = functools.partial(_checkpointed, blk.forward)


def apply_compile(model, backend: str = "inductor") -> None:
    """Compile each block in place; token counts change every step, so shapes are dynamic from the start."""
    for blocks in model.repeated_blocks().values():
        for blk in blocks:
            blk.compile(dynamic=True, backend=backend)


def data_parallel_mesh(device_type: str, world_size: int, replicate: int = 1, shard: int = 0):
    """The FSDP2 mesh: 1-D over all processes, or 2-D (replicate, shard) for HSDP; shard=0 means world/replicate."""
    from torch.distributed.device_mesh import init_device_mesh

    if replicate < 1 or world_size % replicate:
        raise ConfigError(f"parallel.replicate: {replicate} does not divide the {world_size} processes")
    shard = shard or world_size // replicate
    if replicate * shard != world_size:
        raise ConfigError(f"parallel.shard: replicate {replicate} x shard {shard} = {replicate * shard}, "
                          f"but the run has {world_size} processes")
    if replicate == 1:
        return init_device_mesh(device_type, (shard,), mesh_dim_names=("shard",))
    return init_device_mesh(device_type, (replicate, shard), mesh_dim_names=("replicate", "shard"))


def apply_fsdp(model, mixed_precision: bool, mesh=None) -> None:
    """fully_shard each block, then each top module (encoder, predictor, target encoder), on `mesh`."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 parameters for the all-gathers and the compute, gradients reduced in fp32
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    if mesh is not None:
        kwargs["mesh"] = mesh
    for top in model.top_modules():
        for blocks in block_lists(top):
            for blk in blocks:
                fully_shard(blk, **kwargs)
        fully_shard(top, **kwargs)
    # One root over the whole model: FSDP2 keeps a root's parameters unsharded after forward (it expects a backward
    # right away), which would leave the no-grad target encoder gathered, and its EMA shards mismatched, if each top
    # module were its own root.
    fully_shard(model, **kwargs)


def parallelize(model, *, world_size: int, compile: bool,
                activation_checkpointing: bool, mixed_precision: bool = False,
                compile_backend: str = "inductor", mesh_shape: tuple[int, int] = (1, 0),
                device_type: str = "cpu") -> nn.Module:
    """Apply what the config asks to a pretraining model (models/protocol.py): its repeated blocks and parts."""
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model, compile_backend)
    if world_size > 1:
        mesh = data_parallel_mesh(device_type, world_size, *mesh_shape)
        apply_fsdp(model, mixed_precision, mesh)
    return model


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor parameter (or the tensor itself)."""
    return t.to_local() if hasattr(t, "to_local") else t
