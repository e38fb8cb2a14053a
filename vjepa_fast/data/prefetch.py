"""Copy the next batch to the GPU on a side stream while the current step runs.

`prefetch_to_device(batches, device)` yields the host batches unchanged, each with `device_copy` set to its copy on
`device`. On CUDA the copy of batch k+1 is issued on a separate stream before batch k is handed out, so the
host-to-device transfer (from the loader's pinned memory) overlaps step k's kernels instead of sitting at the
start of step k+1; the main stream waits on an event for the copy only when it uses the batch, and the copied
tensors are marked as used by the main stream so the allocator does not recycle them early. Elsewhere
(the CPU) it is a pass-through: `device_copy` stays None and the step copies, which costs nothing there.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from vjepa_fast.data.loader import Batch


def _tensors(batch: Batch) -> list[torch.Tensor]:
    masks = [v for v in vars(batch.masks).values() if isinstance(v, torch.Tensor)]
    return [batch.video, batch.labels, *masks]


def prefetch_to_device(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    device = torch.device(device)
    if device.type != "cuda":
        yield from batches
        return
    side = torch.cuda.Stream(device)
    it = iter(batches)

    def issue():
        host = next(it, None)
        if host is None:
            return None
        with torch.cuda.stream(side):
            dev = host.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        return host, dev, done

    pending = issue()
    while pending is not None:
        host, dev, done = pending
        main = torch.cuda.current_stream(device)
        main.wait_event(done)
        for t in _tensors(dev):
            t.record_stream(main)
        pending = issue()  # the next copy runs on the side stream during this step
        host.device_copy = dev
        yield host
