"""`python -m vjepa_fast.eval` (or the file itself, e.g. under torchrun): the evaluation's command line (cli.py)."""
import os
import sys

if __package__ in (None, ""):  # run as a file (torchrun vjepa_fast/eval/__main__.py): import the package
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0]) == _here:
        sys.path.pop(0)
    sys.path.insert(0, os.path.dirname(os.path.dirname(_here)))

from vjepa_fast.eval.cli import main  # noqa: E402  (after the path fix above)

if __name__ == "__main__":
    sys.exit(main())
