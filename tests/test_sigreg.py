"""The SIGReg term (models/sigreg.py, loss.sigreg): its value on Gaussian and collapsed rows, its gradient against a
low-rank embedding, 2 processes against 1, fp32 against fp64, compiled against eager, and in the training loop."""
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.sigreg_cases import global_rows, rank_slices
from vjepa_fast.run import checkpoint as ckpt
from vjepa_fast import train
from vjepa_fast.config import ConfigError, load_config
from vjepa_fast.masks import pack_masks
from vjepa_fast.models.build import build_masker, build_model
from vjepa_fast.models.sigreg import SIGReg, sigreg_directions, sigreg_statistic, trapezoid_weights
from vjepa_fast.ops import l1_target_loss
from vjepa_fast.parallel import DistInfo

from test_train import SMALL, assert_two_processes_match_one, losses, make_trainer

CPU = torch.device("cpu")
T64 = torch.linspace(0.0, 3.0, 17, dtype=torch.float64)


def stat64(x, dirs=64, seed=0, step=0):
    a = sigreg_directions(x.shape[1], dirs, seed, step, CPU).double()
    return sigreg_statistic(x.double(), a, T64)


def effective_rank(x):
    s = torch.linalg.svdvals(x.detach().double())
    p = s / s.sum()
    return math.exp(-(p * torch.log(p.clamp_min(1e-300))).sum().item())


def test_directions_are_unit_shared_by_seed_and_step_and_change_with_the_step():
    a = sigreg_directions(32, 8, seed=3, step=10, device=CPU)
    assert a.shape == (32, 8)
    assert torch.allclose(a.norm(dim=0), torch.ones(8), atol=1e-6)
    assert torch.equal(a, sigreg_directions(32, 8, seed=3, step=10, device=CPU))  # what every rank draws
    assert not torch.allclose(a, sigreg_directions(32, 8, seed=3, step=11, device=CPU))
    assert not torch.allclose(a, sigreg_directions(32, 8, seed=4, step=10, device=CPU))


def test_trapezoid_weights_integrate_the_gaussian_window():
    # 2 int_0^3 exp(-t^2/2) dt = sqrt(2 pi) erf(3 / sqrt 2): the rule's error at 17 points is well under 1e-3.
    want = math.sqrt(2 * math.pi) * math.erf(3 / math.sqrt(2))
    assert abs(trapezoid_weights(T64).sum().item() - want) < 1e-3


def test_near_zero_on_gaussian_rows_and_large_on_collapsed_ones():
    gen = torch.Generator().manual_seed(0)
    n, d = 4096, 32
    gauss = stat64(torch.randn(n, d, generator=gen, dtype=torch.float64))
    # Sampling noise alone: E|phi_N - phi|^2 = (1 - exp(-t^2)) / N, integrated with the window: about 1.7 / N.
    expected = (trapezoid_weights(T64) * (1 - torch.exp(-T64 ** 2))).sum().item() / n
    assert gauss < 3 * expected and gauss < 1e-3, (gauss, expected)
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    collapsed = {
        "one point": torch.zeros(n, d, dtype=torch.float64),
        "one vector of norm sqrt(D), as LayerNorm-ed tokens": (v / v.norm() * math.sqrt(d)).expand(n, d),
        "a line": torch.randn(n, 1, generator=gen, dtype=torch.float64) * torch.randn(d, generator=gen,
                                                                                        dtype=torch.float64),
        "shrunk by 10": torch.randn(n, d, generator=gen, dtype=torch.float64) / 10,
    }
    for name, x in collapsed.items():
        assert stat64(x) > 100 * gauss, name
    # A whole collapse to the origin: phi = 1, so the term is 2 int_0^3 (1 - g)^2 g dt with g = exp(-t^2/2).
    g = torch.exp(-T64 ** 2 / 2)
    assert abs(stat64(collapsed["one point"]).item() - (trapezoid_weights(T64) * (1 - g) ** 2).sum().item()) < 1e-9


def test_its_gradient_raises_the_effective_rank_of_a_low_rank_embedding():
    gen = torch.Generator().manual_seed(1)
    n, d = 512, 16
    low = torch.randn(n, 2, generator=gen) @ torch.randn(2, d, generator=gen)  # rank 2
    emb = (low + 1e-3 * torch.randn(n, d, generator=gen)).requires_grad_(True)
    before = effective_rank(emb)
    reg = SIGReg(directions=64, seed=0)
    opt = torch.optim.Adam([emb], lr=0.05)
    first = None
    for step in range(30):
        loss = reg(emb, step)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = effective_rank(emb)
    assert before < 3.0 and after > 2 * before, (before, after)
    assert reg(emb, 99).item() < first / 2


def test_two_processes_equal_one_on_the_same_global_batch(tmp_path, subprocess_env):
    worker = Path(__file__).with_name("sigreg_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(tmp_path)], capture_output=True, text=True, env=subprocess_env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    x = global_rows().requires_grad_(True)
    value = SIGReg(directions=16, t_max=3.0, t_points=17, seed=5)(x, step=7)
    value.backward()
    for rank, rows in enumerate(rank_slices(2)):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert abs(got["value"].item() - value.item()) < 1e-6 * max(1.0, value.item())
        # Each rank's gradient is twice its rows' share of the global one: FSDP's average over 2 ranks gives it back.
        torch.testing.assert_close(got["grad"] / 2, x.grad[rows], rtol=1e-4, atol=1e-7)


def test_fp32_is_within_1e_5_of_fp64():
    # Bound: the cos/sin means of N fp32 terms carry errors of order sqrt(N) eps; at N = 4096 the term's absolute
    # error stays under 1e-5 (measured about 1e-7) on values of order 1e-3 to 1.
    gen = torch.Generator().manual_seed(2)
    line = torch.randn(4096, 1, generator=gen) * torch.randn(64, generator=gen)
    for x in (torch.randn(4096, 64, generator=gen), line):
        x64 = x.double().requires_grad_(True)
        x32 = x.clone().requires_grad_(True)
        a = sigreg_directions(64, 64, 0, 0, CPU)
        v64 = sigreg_statistic(x64, a.double(), T64)
        v32 = sigreg_statistic(x32, a, T64.float())
        assert v32.dtype == torch.float32
        assert abs(v32.item() - v64.item()) < 1e-5
        v64.backward()
        v32.backward()
        torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-3, atol=1e-8)


def test_compiled_equals_eager():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(700, 32, generator=gen)
    a = sigreg_directions(32, 16, 0, 0, CPU)
    t = torch.linspace(0.0, 3.0, 17)
    compiled = torch.compile(sigreg_statistic, backend="inductor", fullgraph=True)
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ve, vc = sigreg_statistic(xe, a, t), compiled(xc, a, t)
    assert abs(ve.item() - vc.item()) < 1e-6
    ve.backward()
    vc.backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-8)


def test_the_model_mixes_it_on_the_packed_context_tokens():
    cfg = load_config(None, ["data.num_frames=4", "data.crop_size=64", "loss.sigreg=0.25"])
    torch.manual_seed(0)
    model = build_model(cfg)
    masks = pack_masks(build_masker(cfg, model.grid).sample(0, [0, 1, 2]), math.prod(model.grid))
    lens = (masks.ctx_cu[1:] - masks.ctx_cu[:-1]).tolist()
    assert len(set(lens)) > 1  # variable-length context sequences, packed
    video = torch.randn(3, 3, 4, 64, 64)
    w = torch.rand(masks.tgt_rows.numel()) / (masks.tgt_rows.numel() * model.encoder.embed_dim)
    loss = model(video, masks, w, step=4)
    with torch.no_grad():
        h = model.target_encoder(video).reshape(-1, model.encoder.embed_dim)
        ctx = model.encoder(video, rows=masks.ctx_rows, cu_seqlens=masks.ctx_cu, max_seqlen=masks.ctx_max)
        pred = l1_target_loss(model.predictor(ctx, masks), h, masks.tgt_rows, w)
        reg = sigreg_statistic(ctx, sigreg_directions(ctx.shape[1], 64, cfg.train.seed, 4, CPU),
                               torch.linspace(0.0, 3.0, 17))
    assert abs(loss.item() - (0.75 * pred.item() + 0.25 * reg.item())) < 1e-5
    torch.testing.assert_close(model.loss_terms, torch.stack([pred, reg]), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("override, message", [
    ("loss.sigreg=1", "must be in [0, 1)"),
    ("loss.sigreg=-0.1", "must be in [0, 1)"),
    ("loss.sigreg_directions=0", "must be >= 1"),
    ("loss.sigreg_t_max=0", "must be > 0"),
    ("loss.sigreg_t_points=1", "must be >= 2"),
])
def test_bad_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=rf"^{re.escape(override.split('=')[0])}: .*{re.escape(message)}"):
        load_config(None, [override])


def test_sigreg_is_for_vjepa_only():
    with pytest.raises(ConfigError, match="^loss.sigreg: the SIGReg term is for method vjepa"):
        load_config(None, ["method=videomae", "loss.sigreg=0.1"])


def test_metrics_carry_sigreg_only_when_on(tmp_path):
    def run(d, extra):
        cfg = load_config(None, [f"run_dir={d}", *SMALL, "train.steps=3", "train.tensorboard=false", *extra])
        train.Trainer(cfg, DistInfo(0, 1, 0, CPU)).run()
        return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]

    off = run(tmp_path / "off", [])
    assert all("sigreg" not in r and "pred_loss" not in r for r in off)
    on = run(tmp_path / "on", ["loss.sigreg=0.1"])
    for r in on:
        assert 0 < r["sigreg"] < 2 and r["pred_loss"] > 0
        assert abs(r["loss"] - (0.9 * r["pred_loss"] + 0.1 * r["sigreg"])) < 1e-5 * r["loss"]


def test_fsdp2_two_processes_match_one_with_sigreg(tmp_path, subprocess_env):
    """The term's all-reduced statistic and world-size-scaled gradient give, through FSDP2's gradient averaging,
    the same training as one process on the same global batch."""
    assert_two_processes_match_one(tmp_path, 4, ["loss.sigreg=0.5", "train.tensorboard=false"], subprocess_env)


def test_a_resumed_run_with_sigreg_gives_the_same_losses(tmp_path):
    """The directions are a function of (seed, step) only: a run resumed from its step-4 checkpoint draws the same
    ones for steps 4 and 5 as the uninterrupted run did."""
    extra = ["loss.sigreg=0.2", "train.steps=6", "train.tensorboard=false"]
    make_trainer(tmp_path, extra).run()
    expected = losses(tmp_path)
    shutil.rmtree(ckpt.step_path(tmp_path, 6))  # as if stopped after the step-4 checkpoint
    make_trainer(tmp_path, extra).run()
    got = losses(tmp_path)
    assert sorted(got) == sorted(expected) == list(range(6))
    for step in (4, 5):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
