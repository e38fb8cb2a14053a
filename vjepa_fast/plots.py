"""Pictures of a run: `python -m vjepa_fast.plots RUN_DIR` writes RUN_DIR/plots/{curves,masks}.png.

curves.png: from metrics.jsonl against step, one panel per signal the run recorded: loss, learning rate, EMA
momentum, clips/s, MFU (recorded on GPUs only), the collapse signals (`target_std` / `pred_std`, the spread of the
features across a clip's tokens, with the `train.collapse_std` warning line; `target_rank` / `context_rank`, the
effective rank of the features, when the run logs them). A panel with no data is left out.
masks.png: the frames of a sample clip with each mask configuration drawn over them (context tokens as they are,
target tokens hatched, tokens in neither dimmed), one row per configuration: V-JEPA's short- and long-range
multi-block masks, or VideoMAE's tubes, and a legend. Needs matplotlib (`pip install -e .[plots]`); the overlays
themselves are plain numpy, so TensorBoard shows the same pictures without it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from vjepa_fast.run import plots


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory (holds config.yaml and metrics.jsonl)")
    args = parser.parse_args(argv)
    try:
        for path in plots.draw_run(Path(args.run_dir)):
            print(path)
    except plots.PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
