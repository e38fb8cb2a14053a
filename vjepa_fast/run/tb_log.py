"""TensorBoard event files in <run_dir>/tb: every numeric metrics.jsonl value as a scalar, and the masks of the first
clip of the first batch as images (the same overlays as plots.py).

`train.tensorboard`: `auto` (the default) writes them when the `tensorboard` package is installed and says so once
when it is not; `true` makes a missing package an error; `false` writes nothing. View with
`.venv/bin/tensorboard --logdir RUN_DIR/tb`.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np

from vjepa_fast.run.plots import mask_names, overlay, sample_masks, to_rgb
from vjepa_fast.user_errors import RunError

log = logging.getLogger(__name__)

SKIP = ("step", "time")  # the x axis and the wall clock are not curves


def tensorboard_available() -> Optional[str]:
    """None when event files can be written, otherwise why not."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        return f"the tensorboard package is not installed ({e}): pip install -e .[tensorboard]"
    return None


class TensorBoardLog:
    def __init__(self, writer):
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path, setting: str, start_step: int) -> Optional["TensorBoardLog"]:
        if setting == "false":
            return None
        missing = tensorboard_available()
        if missing is not None:
            if setting == "true":
                raise RunError(f"train.tensorboard=true but {missing}; or set train.tensorboard=false")
            log.info("no TensorBoard logs: %s", missing)
            return None
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on resume, events of steps that will be run again are dropped, as in metrics.jsonl.
        return cls(SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=start_step or None))

    def scalars(self, row: dict) -> None:
        for key, value in row.items():
            if key not in SKIP and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(key, value, row["step"])

    def masks(self, batch, grid, cfg) -> None:
        video = batch.video[0]
        frames = to_rgb(video[0] if video.dim() == 5 else video)  # several clips per video: the first
        for name, (ctx, tgt) in zip(mask_names(cfg), sample_masks(batch.masks)):
            pics = overlay(frames, ctx, tgt, grid, cfg.model.tubelet_size)
            strip = np.concatenate(list(pics), axis=1)  # the token time steps side by side
            self.writer.add_image(f"masks/{name}", strip, batch.step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
