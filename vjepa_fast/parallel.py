"""Distribution and compilation applied from outside to plain models, in the order that composes:
activation checkpointing -> per-block torch.compile -> FSDP2 (fully_shard per block, then per top module).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Process group from torchrun's environment when WORLD_SIZE > 1; a single process needs no set-up at all."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def block_lists(model: nn.Module) -> Iterable[nn.ModuleList]:
    """Every ModuleList of transformer blocks inside `model` (encoder `blocks`, predictor `predictor_blocks`, ...)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1].endswith("blocks"):
            yield module


def _checkpointed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward (instance-level forward swap keeps parameter names)."""
    for blocks in block_lists(model):
        for blk in blocks:
            blk.forward = functools.partial(_checkpointed, blk.forward)


def apply_compile(model: nn.Module, backend: str = "inductor") -> None:
    """Compile each block in place; token counts change every step, so shapes are dynamic from the start."""
    for blocks in block_lists(model):
        for blk in blocks:
            blk.compile(dynamic=True, backend=backend)


def apply_fsdp(model: nn.Module, top_modules: Iterable[nn.Module], mixed_precision: bool) -> None:
    """fully_shard each block, then each top module (encoder, predictor, target encoder)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for top in top_modules:
        for blocks in block_lists(top):
            for blk in blocks:
                fully_shard(blk, **kwargs)
        fully_shard(top, **kwargs)
    # One root over the whole model: FSDP2 keeps a root's parameters unsharded after forward (it expects a backward
    # right away), which would leave the no-grad target encoder gathered, and its EMA shards mismatched, if each top
    # module were its own root.
    fully_shard(model, **kwargs)


def parallelize(model: nn.Module, top_modules: list[nn.Module], *, world_size: int, compile: bool,
                activation_checkpointing: bool, mixed_precision: bool = False,
                compile_backend: str = "inductor") -> nn.Module:
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model, compile_backend)
    if world_size > 1:
        apply_fsdp(model, top_modules, mixed_precision)
    return model


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor parameter (or the tensor itself)."""
    return t.to_local() if hasattr(t, "to_local") else t
