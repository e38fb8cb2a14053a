"""Record the first losses of the default run (the bare `train.py` config) on the CPU, one process.

    python tests/record_default_run.py        # rewrites tests/data/default_run_losses.json

tests/test_default_losses.py compares a fresh run with that file within a tolerance far below a real change (CPU
kernels differ by processor in the last float32 bits), so a refactor that claims to change nothing proves it. A deliberate change of the objective, the initialisation or the default config changes these
numbers: rerun this script and say why in the commit message.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECORD = Path(__file__).with_name("data") / "default_run_losses.json"
STEPS = 4
# Loader workers change nothing in the data (samples are a function of (seed, step, position)); in-process is faster.
OVERRIDES = ["data.num_workers=0", "train.progress=false"]


def default_run_losses(steps: int = STEPS) -> list[str]:
    """The losses of the default run's first `steps` steps, as float.hex strings (exact)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions split across threads may round differently
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            return _run(run_dir, steps)
    finally:
        torch.set_num_threads(threads)


def _run(run_dir: str, steps: int) -> list[str]:
    import torch

    from vjepa_fast import train
    from vjepa_fast.config import load_config
    from vjepa_fast.train import DEFAULT_RECIPE
    from vjepa_fast.data.loader import MaskCollate, build_dataset, make_loader
    from vjepa_fast.parallel import DistInfo

    cfg = load_config(DEFAULT_RECIPE, [f"run_dir={run_dir}", *OVERRIDES])
    trainer = train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    t = cfg.train
    collate = MaskCollate(trainer.masker, trainer.num_tokens, cfg.masks.truncate_to_batch_min)
    loader = make_loader(build_dataset(cfg.data, t.seed), collate, t.batch_size, 0, 1, 0, t.steps, t.seed,
                         cfg.data.num_workers, pin_memory=False)
    losses = []
    for batch in loader:
        out = trainer.train_step(batch, batch.step)
        losses.append(float(out["loss"]).hex())
        if len(losses) == steps:
            break
    return losses


def main() -> int:
    losses = default_run_losses()
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps({"steps": STEPS, "overrides": OVERRIDES, "losses": losses}, indent=1) + "\n")
    print(f"wrote {RECORD}: {[float.fromhex(x) for x in losses]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
