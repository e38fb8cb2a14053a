"""Labelled clips for a frozen-encoder probe (python -m vjepa_fast.eval): a split of the synthetic stream or of real
videos, the batch collation that drops unreadable samples, and the seeded subsets (a sample cap, a low-shot subset)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

SYNTHETIC_VAL_START = 10**9  # synthetic validation clips: indices far from any training range, so never shared
# train, val. 5000 training clips, not 1000: on 1000 the attentive probe memorises them (training accuracy
# 0.99-1.00) and its validation accuracy then depends on its seed by up to 45 points; on 5000 it generalises (docs/results.md).
SYNTHETIC_DEFAULT_SAMPLES = (5000, 500)


@dataclass
class Split:
    dataset: Dataset
    segments: int  # clips per video whose tokens are concatenated
    views: int  # spatial views whose predictions are averaged
    augmented: bool  # random crops/flips: features differ every epoch, so they cannot be cached


class SyntheticSplit(Dataset):
    """Clips `indices` of the synthetic stream with one of its labels."""

    def __init__(self, videos, indices: np.ndarray, label: str):
        self.videos, self.indices, self.label = videos, np.asarray(indices, dtype=np.int64), label
        from vjepa_fast.data.synthetic import LABEL_KEYS

        self.key = LABEL_KEYS[label]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        s = self.videos[int(self.indices[i])]
        return s["video"], int(s[self.key]), None

    def labels(self) -> np.ndarray:
        """The label of every clip, from the clip descriptions alone (nothing is rendered)."""
        specs = (self.videos.clip(int(i)) for i in self.indices)
        return np.array([s.appearance if self.label == "appearance" else s.motion for s in specs], dtype=np.int64)

    def restricted(self, keep: np.ndarray) -> "SyntheticSplit":
        return SyntheticSplit(self.videos, self.indices[keep], self.label)


class VideoSplit(Dataset):
    """Real videos at `indices`; a broken file gives (None, -1, message) so the batch goes on without it."""

    def __init__(self, dataset, indices: np.ndarray, train: bool):
        self.dataset, self.indices, self.train, self.epoch = dataset, indices, train, 0

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        return labels_of(self.dataset)[self.indices]

    def restricted(self, keep: np.ndarray) -> "VideoSplit":
        return VideoSplit(self.dataset, self.indices[keep], self.train)

    def __getitem__(self, i: int):
        idx = int(self.indices[i])
        try:
            # Training crops are drawn afresh each epoch (key = epoch, index); evaluation crops are fixed.
            s = self.dataset.get(idx, key=(self.epoch, idx)) if self.train else self.dataset[idx]
            return s["video"], int(s["label"]), None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            where = getattr(self.dataset, "describe", lambda j: f"sample {j}")(idx)
            return None, -1, f"{where}: {type(e).__name__}: {e}"


def collate(items: list) -> tuple[Optional[torch.Tensor], torch.Tensor, list[str]]:
    good = [(v, y) for v, y, err in items if err is None]
    errors = [err for _, _, err in items if err is not None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), errors
    return torch.stack([v for v, _ in good]), torch.tensor([y for _, y in good], dtype=torch.long), errors


def labels_of(dataset) -> np.ndarray:
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels)
    return np.concatenate([labels_of(d) for d in dataset.datasets])  # MixedDataset


def seeded_subset(n_total: int, n: Optional[int], seed: int, tag: int) -> np.ndarray:
    """All indices, or a seeded random subset of n of them (in order, so decoding walks the index file forward)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng([seed, tag]).choice(n_total, size=n, replace=False))


def low_shot_indices(labels: np.ndarray, seed: int, per_class: Optional[int] = None,
                     fraction: Optional[float] = None) -> np.ndarray:
    """Positions of a seeded class-balanced subset: `per_class` clips of every class (all of a class that has fewer),
    or round(fraction * size) of each class (at least one). Sorted, so decoding walks the data forward."""
    rng = np.random.default_rng([seed, 0x10F5])
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = per_class if per_class is not None else max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
