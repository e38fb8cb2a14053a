"""The training data stream: a deterministic step -> samples map, robust sample fetching, mask-building collate.

Sample positions are global: at step t, process r of W (batch b each) takes positions t*W*b + r*b ... + b - 1, so a
run's data depends only on (seed, step) — not on the number of processes or on where a resumed run restarted. Masks
are seeded by (seed, step, position) for the same reason.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vjepa_fast.data.worker_signals import ignore_stop_signals, stop_signals_held
from vjepa_fast.masks import PackedMasks, pack_masks

log = logging.getLogger(__name__)

MAX_REPLACEMENTS = 50  # attempts to find a readable sample before the batch itself fails


class DataLoadError(RuntimeError):
    """No readable sample could be found: the data source itself is broken."""


@dataclass
class Batch:
    video: torch.Tensor  # [B, 3, T, H, W]
    masks: PackedMasks
    labels: torch.Tensor  # [B]
    step: int
    errors: list = field(default_factory=list)  # "path: reason" of samples skipped while building this batch
    device_copy: Optional["Batch"] = None  # this batch on the GPU, copied ahead by data/prefetch.py

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(self.video.to(device, non_blocking=non_blocking), self.masks.to(device, non_blocking),
                     self.labels.to(device, non_blocking=non_blocking), self.step, self.errors)

    def pin_memory(self) -> "Batch":
        return Batch(self.video.pin_memory(), self.masks.pin_memory(), self.labels.pin_memory(), self.step,
                     self.errors)


class StepSampler(Sampler):
    """Yields, for each step from `start_step`, this rank's [(step, position, dataset_index), ...]."""

    def __init__(self, batch_size: int, rank: int, world_size: int, start_step: int, num_steps: int,
                 dataset_len: Optional[int], seed: int):
        self.b, self.rank, self.world = batch_size, rank, world_size
        self.start, self.stop, self.n, self.seed = start_step, num_steps, dataset_len, seed
        self._perm_epoch, self._perm = -1, None

    def _index(self, pos: int) -> int:
        if self.n is None:  # unbounded (synthetic) data: the position is the sample
            return pos
        epoch, k = divmod(pos, self.n)
        if epoch != self._perm_epoch:  # a fresh shuffle per pass over the data, seeded by (seed, epoch)
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[k])

    def __iter__(self) -> Iterator[list]:
        g = self.b * self.world
        for step in range(self.start, self.stop):
            first = step * g + self.rank * self.b
            yield [(step, p, self._index(p)) for p in range(first, first + self.b)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class RobustDataset(Dataset):
    """Wraps a dataset whose __getitem__ may raise on a broken file: logs it and draws a replacement sample.

    Each broken file is logged once per process (a file drawn again is only counted, in the batch's `errors`): a
    long run draws the same broken file over and over, and one line per draw would bury everything else."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._logged: set[str] = set()  # what this process has already logged (each loader worker has its own copy)
        try:
            self.length: Optional[int] = len(dataset)
        except TypeError:  # an unbounded stream (synthetic videos): every position is its own sample
            self.length = None

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        step, pos, index = key
        errors = []
        rng = np.random.default_rng([step, pos])
        for _ in range(MAX_REPLACEMENTS):
            try:
                # Datasets with random clip windows/crops take the global position as their seed key, so every
                # pass over the data draws fresh windows while staying reproducible.
                get = getattr(self.dataset, "get", None)
                sample = get(index, key=(pos,)) if get is not None else self.dataset[index]
                sample = dict(sample)
                sample.update(step=step, pos=pos, errors=errors)
                return sample
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # a broken sample must not kill a week-long run: skip it and record why
                where = getattr(self.dataset, "describe", lambda i: f"sample {i}")(index)
                msg = f"{where}: {type(e).__name__}: {e}"
                if where not in self._logged:
                    self._logged.add(where)
                    log.warning("skipping unreadable sample %s (logged once; later draws are only counted)", msg)
                errors.append(msg)
                if self.length is None:
                    index = index + 1
                else:
                    index = int(rng.integers(self.length))
        raise DataLoadError(f"{MAX_REPLACEMENTS} samples in a row failed to load; last: {errors[-1]}")


class MaskCollate:
    """Stacks clips and builds the packed masks for the batch (on the CPU, in the loader's workers)."""

    def __init__(self, masker, num_tokens: int, truncate_to_batch_min: bool = False):
        self.masker, self.num_tokens, self.truncate = masker, num_tokens, truncate_to_batch_min

    def __call__(self, samples: list[dict]) -> Batch:
        step = samples[0]["step"]
        masks = self.masker.sample(step, [s["pos"] for s in samples])
        packed = pack_masks(masks, self.num_tokens, truncate_to_batch_min=self.truncate)
        video = torch.stack([s["video"] for s in samples])
        labels = torch.tensor([int(s.get("label", -1)) for s in samples], dtype=torch.long)
        errors = [e for s in samples for e in s["errors"]]
        return Batch(video, packed, labels, step, errors)


def build_dataset(data_cfg, seed: int) -> Dataset:
    """`data.path`: "synthetic", a folder of videos or an index file."""
    if data_cfg.path == "synthetic":
        from vjepa_fast.data.synthetic import SyntheticVideos

        return SyntheticVideos(num_frames=data_cfg.num_frames, size=data_cfg.crop_size,
                               length=None, seed=seed, frame_step=data_cfg.frame_step)
    from vjepa_fast.data.video_dataset import build_video_dataset

    return build_video_dataset(data_cfg, seed)


def make_loader(dataset: Dataset, collate: MaskCollate, batch_size: int, rank: int, world_size: int,
                start_step: int, num_steps: int, seed: int, num_workers: int, pin_memory: bool) -> DataLoader:
    robust = RobustDataset(dataset)
    sampler = StepSampler(batch_size, rank, world_size, start_step, num_steps, robust.length, seed)
    return DataLoader(robust, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None,
                      worker_init_fn=ignore_stop_signals if num_workers > 0 else None)


class BatchStream:
    """One pass over `loader` whose workers outlive no stop: started with the stop signals held back (they ignore
    them, see vjepa_fast/data/worker_signals.py) and shut down by `close()`, so a preempted process leaves no worker
    behind (it may leave through os._exit, which skips the loader's own clean-up)."""

    def __init__(self, loader: DataLoader):
        with stop_signals_held():
            self._it = iter(loader)

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Batch:
        return next(self._it)

    def close(self) -> None:
        shutdown = getattr(self._it, "_shutdown_workers", None)  # torch's own worker shutdown (also run at GC)
        if shutdown is not None:
            shutdown()
        # torch ends a worker that does not leave in time (one stuck reading a file) with SIGTERM, which ours ignore:
        # SIGKILL it, or the interpreter's exit would wait for it forever
        for worker in getattr(self._it, "_workers", []):
            if worker.is_alive():
                worker.kill()
                worker.join()
