"""data/prefetch.py: a pass-through on the CPU; on a GPU, device copies equal to the host batches, in order."""
import pytest
import torch

from vjepa_fast.config import load_config
from vjepa_fast.data.loader import MaskCollate, build_dataset, make_loader
from vjepa_fast.data.prefetch import prefetch_to_device
from vjepa_fast.models.build import build_masker


def _loader(n, pin):
    cfg = load_config(None, ["data.num_frames=4", "data.crop_size=64", "data.num_workers=0"])
    grid = (cfg.data.num_frames // cfg.model.tubelet_size, cfg.data.crop_size // cfg.model.patch_size,
            cfg.data.crop_size // cfg.model.patch_size)
    collate = MaskCollate(build_masker(cfg, grid), grid[0] * grid[1] * grid[2])
    return make_loader(build_dataset(cfg.data, 0), collate, 2, 0, 1, 0, n, 0, 0, pin_memory=pin)


def test_cpu_is_a_pass_through():
    batches = list(_loader(3, pin=False))
    got = list(prefetch_to_device(batches, torch.device("cpu")))
    assert [b is a for a, b in zip(batches, got)] == [True] * 3
    assert all(b.device_copy is None for b in got)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_copies_match_the_host_batches():
    device = torch.device("cuda")
    steps = []
    for b in prefetch_to_device(_loader(4, pin=True), device):
        dev = b.device_copy
        assert dev.video.device.type == "cuda" and dev.masks.ctx_rows.device.type == "cuda"
        torch.cuda._sleep(1_000_000)  # a busy main stream: the next copy must not be needed to finish first
        assert torch.equal(dev.video.cpu(), b.video) and torch.equal(dev.masks.tgt_rows.cpu(), b.masks.tgt_rows)
        steps.append(b.step)
    assert steps == [0, 1, 2, 3]
