"""Pictures of a run: `python -m vjepa_fast.plots RUN_DIR` writes RUN_DIR/plots/{curves,masks}.png.

The command line only; the drawing (what each picture shows) is vjepa_fast/run/plots.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from vjepa_fast.run import plots


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=plots.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
