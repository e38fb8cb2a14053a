"""Run by tests/test_sigreg.py under `torchrun --nproc_per_node=2` (gloo, CPU): each rank takes its half of the same
global rows (seeded), computes the SIGReg term with the sums all-reduced, and saves its value and its rows' gradient.

    torchrun --standalone --nproc_per_node=2 tests/sigreg_worker.py OUT_DIR
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.sigreg_cases import global_rows, rank_slices  # noqa: E402
from vjepa_fast.models.sigreg import SIGReg  # noqa: E402


def main(out_dir: str) -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x = global_rows()[rank_slices(world)[rank]].clone().requires_grad_(True)
    value = SIGReg(directions=16, t_max=3.0, t_points=17, seed=5)(x, step=7)
    value.backward()
    torch.save({"value": value.detach(), "grad": x.grad}, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
