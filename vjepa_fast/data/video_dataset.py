"""Datasets of real videos: clip sampling, decoding and augmentation of one sample, and weighted mixtures of sources.

Sample i is a pure function of (seed, i): its randomness (window position, crop box, flip) comes from a numpy
Generator seeded by [seed, i], so a resumed run, or another process, sees exactly the same sample. (The loader passes
only the index, so an index gives the same clip every pass over the data; `get(i, key=...)` takes an extra key for a
caller that wants fresh draws per pass.)
"""
from __future__ import annotations

import bisect
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vjepa_fast.data.decode import open_video, resolve_decoder
from vjepa_fast.data.index import VideoEntry, load_source, mixture_sizes, split_sources
from vjepa_fast.data.transforms import eval_transform, train_transform


def clip_frame_indices(video_frames: int, num_frames: int, frame_step: int, start: int) -> np.ndarray:
    """`num_frames` indices `frame_step` apart from `start`; past the video's end they repeat its last frame."""
    return np.minimum(start + np.arange(num_frames, dtype=np.int64) * frame_step, video_frames - 1)


def clip_start(video_frames: int, num_frames: int, frame_step: int, rng: Optional[np.random.Generator] = None,
               position: float = 0.5) -> int:
    """Start of a window of num_frames * frame_step frames: uniformly random when `rng` is given, else at `position`
    (0 = first possible start, 1 = last). A video shorter than the window starts at 0."""
    slack = video_frames - num_frames * frame_step
    if slack <= 0:
        return 0
    if rng is not None:
        return int(rng.integers(0, slack + 1))
    return int(round(position * slack))


def frame_step_for(fps: Optional[float], target_fps: Optional[float], frame_step: int) -> int:
    """Frame step that brings the video's fps down to about `target_fps` (never below 1); `frame_step` when either
    rate is unknown."""
    if target_fps is None or not fps:
        return frame_step
    return max(1, int(round(fps / target_fps)))


class PathTable:
    """Strings kept as one utf-8 buffer plus offsets. Forked loader workers share it: a Python list of a million str
    objects would be copied page by page into every worker as reference counts are touched."""

    def __init__(self, items: Sequence[str]):
        encoded = [str(s).encode("utf-8", "surrogateescape") for s in items]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._buf[self._offsets[i]:self._offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")


class VideoDataset(Dataset):
    """`dataset[i]` -> {"video": float32 [3, T, S, S], "label": int} (or [clips * views, 3, T, S, S] when more than one
    clip or spatial view is asked for). Raises FileNotFoundError / VideoDecodeError naming the file when it cannot
    be read; the loader's RobustDataset skips and counts those."""

    def __init__(self, entries: Sequence[VideoEntry], num_frames: int, crop_size: int, frame_step: int = 4,
                 seed: int = 0, train: bool = True, target_fps: Optional[float] = None, clips_per_video: int = 1,
                 spatial_views: int = 1, decoder: str = "auto", decode_threads: int = 1,
                 crop_scale: Sequence[float] = (0.3, 1.0), crop_aspect: Sequence[float] = (0.75, 1.35),
                 hflip_prob: float = 0.5):
        if not entries:
            raise ValueError("VideoDataset: no videos")
        for name, value in (("num_frames", num_frames), ("crop_size", crop_size), ("frame_step", frame_step),
                            ("clips_per_video", clips_per_video), ("spatial_views", spatial_views)):
            if int(value) < 1:
                raise ValueError(f"VideoDataset: {name} must be >= 1, got {value}")
        if target_fps is not None and not target_fps > 0:
            raise ValueError(f"VideoDataset: target_fps must be > 0, got {target_fps}")
        self.paths = PathTable([e[0] for e in entries])
        self.labels = np.asarray([int(e[1]) for e in entries], dtype=np.int64)
        self.num_frames, self.crop_size, self.frame_step = num_frames, crop_size, frame_step
        self.seed, self.train, self.target_fps = seed, train, target_fps
        self.clips_per_video, self.spatial_views = clips_per_video, spatial_views
        self.decoder = resolve_decoder(decoder)  # an unavailable backend fails here, at build time
        self.decode_threads = decode_threads
        self.crop_scale, self.crop_aspect, self.hflip_prob = tuple(crop_scale), tuple(crop_aspect), hflip_prob

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, index: int) -> str:
        return self.paths[index]

    def __getitem__(self, index: int) -> dict:
        return self.get(index)

    def get(self, index: int, key: Optional[Sequence[int]] = None) -> dict:
        """Sample `index`; its random draws are seeded by [seed, index] or, when given, [seed, *key]."""
        index = int(index)
        if not 0 <= index < len(self.paths):
            raise IndexError(f"index {index} out of range for {len(self.paths)} videos")
        rng = np.random.default_rng([self.seed, *(key if key is not None else (index,))])
        path = self.paths[index]
        with open_video(path, self.decoder, self.decode_threads) as reader:
            n = reader.num_frames
            step = frame_step_for(reader.fps, self.target_fps, self.frame_step)
            starts = [clip_start(n, self.num_frames, step, rng if self.train else None,
                                 position=(c + 0.5) / self.clips_per_video) for c in range(self.clips_per_video)]
            indices = np.concatenate([clip_frame_indices(n, self.num_frames, step, s) for s in starts])
            frames = reader.get_frames(indices)  # one decode pass serves every clip
        clips = frames.reshape(self.clips_per_video, self.num_frames, *frames.shape[1:])
        if self.train:
            out = torch.stack([train_transform(c, self.crop_size, rng, self.crop_scale, self.crop_aspect,
                                               self.hflip_prob) for c in clips])
        else:
            out = torch.cat([eval_transform(c, self.crop_size, self.spatial_views) for c in clips])
        video = out[0] if out.shape[0] == 1 else out
        return {"video": video, "label": int(self.labels[index])}


class MixedDataset(Dataset):
    """Several datasets sampled with relative weights: the index space is cut into one contiguous block per source,
    sized by `index.mixture_sizes`; position k of source i's block maps to its video k * len_i // block_i (spread
    evenly, repeating up-weighted videos). Repeats get their own random draws: the sample is seeded by
    [seed, source, position], not by the video."""

    def __init__(self, datasets: Sequence[VideoDataset], weights: Optional[Sequence[float]] = None):
        self.datasets = list(datasets)
        self.sizes = mixture_sizes([len(d) for d in self.datasets], weights)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(source, video index within the source) of mixture position `index`."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a mixture of {len(self)} positions")
        src = bisect.bisect_right(self.offsets, index) - 1
        k = index - self.offsets[src]
        return src, k * len(self.datasets[src]) // self.sizes[src]

    def describe(self, index: int) -> str:
        src, item = self.locate(index)
        return self.datasets[src].describe(item)

    def __getitem__(self, index: int) -> dict:
        return self.get(index)

    def get(self, index: int, key: Optional[Sequence[int]] = None) -> dict:
        src, item = self.locate(index)
        return self.datasets[src].get(item, key=(src, int(index), *(key or ())))


def build_video_dataset(data_cfg, seed: int, train: bool = True, spatial_views: int = 1) -> Dataset:
    """The dataset named by `data.path`: a folder, an index file, or several of them separated by commas (mixed with
    `data.weights`). Index files are parsed and folders scanned here, so malformed sources fail at start-up."""
    sources = split_sources(data_cfg.path)
    if "synthetic" in sources and len(sources) > 1:
        raise ValueError("data.path: 'synthetic' cannot be mixed with real sources")
    weights = list(getattr(data_cfg, "weights", ()) or ())
    if weights and len(weights) != len(sources):
        raise ValueError(f"data.weights: {len(weights)} weights for {len(sources)} sources in data.path")
    common = dict(num_frames=data_cfg.num_frames, crop_size=data_cfg.crop_size, frame_step=data_cfg.frame_step,
                  seed=seed, train=train, target_fps=getattr(data_cfg, "target_fps", None),
                  clips_per_video=getattr(data_cfg, "clips_per_video", 1), spatial_views=spatial_views,
                  decoder=getattr(data_cfg, "decoder", "auto"), decode_threads=getattr(data_cfg, "decode_threads", 1),
                  crop_scale=getattr(data_cfg, "crop_scale", (0.3, 1.0)),
                  crop_aspect=getattr(data_cfg, "crop_aspect", (0.75, 1.35)),
                  hflip_prob=getattr(data_cfg, "hflip_prob", 0.5))
    datasets = [VideoDataset(load_source(s), **common) for s in sources]
    if len(datasets) == 1:
        return datasets[0]
    return MixedDataset(datasets, weights or None)
