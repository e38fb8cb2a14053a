"""The probe's train and validation splits the options ask for (data/probe_splits.py holds the datasets)."""
from __future__ import annotations

import dataclasses

import numpy as np

from vjepa_fast.config import Config, ConfigError
from vjepa_fast.data.probe_splits import (SYNTHETIC_DEFAULT_SAMPLES, SYNTHETIC_VAL_START, Split, SyntheticSplit,
                                          VideoSplit, labels_of, low_shot_indices, seeded_subset)
from vjepa_fast.eval.options import EvalConfig, EvalError


def build_splits(cfg: Config, e: EvalConfig) -> tuple[Split, Split, int, str]:
    """(train split, validation split, number of classes, label name)."""
    d, seed = cfg.data, cfg.train.seed
    if d.path == "synthetic":
        from vjepa_fast.data.synthetic import SyntheticVideos

        if e.val_path is not None:
            raise ConfigError("--val-path: applies to real data (data.path=synthetic has its own validation range)")
        label = e.label or "appearance"
        videos = SyntheticVideos(num_frames=d.num_frames, size=d.crop_size, length=None, seed=seed,
                                 frame_step=d.frame_step)
        n_train = e.train_samples or SYNTHETIC_DEFAULT_SAMPLES[0]
        n_val = e.val_samples or SYNTHETIC_DEFAULT_SAMPLES[1]
        classes = videos.num_appearance_classes if label == "appearance" else videos.num_motion_classes
        train = Split(SyntheticSplit(videos, np.arange(n_train), label), 1, 1, False)
        val = Split(SyntheticSplit(videos, SYNTHETIC_VAL_START + np.arange(n_val), label), 1, 1, False)
        return train, val, e.num_classes or classes, label
    if e.label is not None:
        raise ConfigError("--label: applies to synthetic data; real data uses the labels of its index/folders")
    if e.val_path is None:
        raise ConfigError("--val-path: required with real data (data.path is the training split)")
    from vjepa_fast.data.video_dataset import build_video_dataset

    try:
        train_ds = build_video_dataset(d, seed, train=True)
        val_ds = build_video_dataset(dataclasses.replace(d, path=e.val_path, weights=()), seed, train=False,
                                     spatial_views=e.spatial_views)
    except ValueError as err:
        raise EvalError(f"data: {err}") from None
    labels = np.concatenate([labels_of(train_ds), labels_of(val_ds)])
    classes = e.num_classes or int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= classes:
        raise EvalError(f"labels span [{labels.min()}, {labels.max()}] but --num-classes is {classes}")
    segments = d.clips_per_video
    train = Split(VideoSplit(train_ds, seeded_subset(len(train_ds), e.train_samples, e.seed, 0), True),
                  segments, 1, True)
    val = Split(VideoSplit(val_ds, seeded_subset(len(val_ds), e.val_samples, e.seed, 1), False),
                segments, e.spatial_views, False)
    return train, val, classes, "index"


def low_shot_split(split: Split, e: EvalConfig, seed: int) -> Split:
    """The training split itself, or its low-shot subset for `seed` (--labels-per-class / --label-fraction)."""
    if e.labels_per_class is None and e.label_fraction is None:
        return split
    keep = low_shot_indices(split.dataset.labels(), seed, e.labels_per_class, e.label_fraction)
    return dataclasses.replace(split, dataset=split.dataset.restricted(keep))
