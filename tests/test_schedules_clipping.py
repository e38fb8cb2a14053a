"""The original's schedules (stepped before the forward) and per-module gradient clipping, against the formulas of
docs/recipe.md ("The schedules, step by step", "Gradient clipping")."""
import math

import pytest
import torch

from vjepa_fast.config import ConfigError, load_config
from vjepa_fast.run.schedules import Schedules
from vjepa_fast.train import clip_norm_at, clip_per_module

from test_train import assert_two_processes_match_one, make_trainer


def test_cosine_schedule_at_the_recipe_points():
    cfg = load_config(None, ["train.steps=300", "optim.warmup_steps=40", "optim.schedule_scale=1.25"])
    o, S, W = cfg.optim, 300, 40
    T = S * 1.25
    sched = Schedules(o, S)
    cos_lr = lambda p: o.final_lr + (o.lr - o.final_lr) * (1 + math.cos(math.pi * p)) / 2  # noqa: E731
    cos_wd = lambda k: (o.final_weight_decay + (o.weight_decay - o.final_weight_decay)  # noqa: E731
                        * (1 + math.cos(math.pi * k / T)) / 2)
    want = {
        0: o.start_lr + (o.lr - o.start_lr) / W,  # step 0: one warm-up increment already taken
        W - 2: o.start_lr + (o.lr - o.start_lr) * (W - 1) / W,  # the last step below the peak
        W - 1: o.lr,  # the first after warm-up: the cosine at p = 0
        S - 1: cos_lr((S - W) / (T - W)),  # the last step
    }
    for s, lr in want.items():
        got = sched(s)
        assert got["lr"] == pytest.approx(lr, rel=1e-12), s
        assert got["wd"] == pytest.approx(cos_wd(s + 1), rel=1e-12), s
        assert got["ema_momentum"] == pytest.approx(o.ema_start + (o.ema_end - o.ema_start) * s / T, rel=1e-12), s
    assert sched(0)["lr"] > o.start_lr and sched(0)["wd"] > o.weight_decay  # not the values at count 0
    lrs = [sched(s)["lr"] for s in range(S)]
    assert all(a < b for a, b in zip(lrs[:W - 1], lrs[1:W])) and all(a >= b for a, b in zip(lrs[W - 1:], lrs[W:]))


def test_wsd_schedule_steps_before_the_forward_too():
    cfg = load_config(None, ["train.steps=100", "optim.lr_schedule=wsd", "optim.warmup_steps=10",
                             "optim.cooldown_steps=20"])
    o = cfg.optim
    sched = Schedules(o, 100)
    assert sched(0)["lr"] == pytest.approx(o.start_lr + (o.lr - o.start_lr) / 10)
    assert sched(9)["lr"] == o.lr and sched(79)["lr"] == o.lr  # count 80 = S - C: the cool-down's start, still lr
    assert sched(80)["lr"] == pytest.approx(o.lr + (o.final_lr - o.lr) / 20)
    assert sched(99)["lr"] == pytest.approx(o.final_lr)


def test_clipping_starts_at_the_configured_step():
    o = load_config(None, ["optim.warmup_steps=40", "optim.clip_grad=2"]).optim
    assert clip_norm_at(o, 39) == math.inf and clip_norm_at(o, 40) == 2.0
    o = load_config(None, ["optim.warmup_steps=40", "optim.clip_grad=2", "optim.clip_start_step=340"]).optim
    assert clip_norm_at(o, 339) == math.inf and clip_norm_at(o, 340) == 2.0
    o = load_config(None, ["optim.clip_grad=0"]).optim
    assert clip_norm_at(o, 10**6) == math.inf
    vitl = load_config("vitl16").optim
    assert vitl.clip_start_step == (40 + 1) * 300 and vitl.warmup_steps == 40 * 300
    with pytest.raises(ConfigError, match="^optim.clip_start_step: must be >= 0"):
        load_config(None, ["optim.clip_start_step=-1"])


def test_clipping_acts_per_module(tmp_path):
    trainer = make_trainer(tmp_path)
    enc, pred = trainer.module_params
    assert {id(p) for p in enc} == {id(p) for p in trainer.model.encoder.parameters()}
    assert {id(p) for p in pred} == {id(p) for p in trainer.model.predictor.parameters()}
    gen = torch.Generator().manual_seed(0)
    for p in enc:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    for p in pred:
        p.grad = torch.randn(p.shape, generator=gen) * 1e3  # a huge predictor gradient
    enc_before = [p.grad.clone() for p in enc]
    norm_of = lambda ps: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ps])).item()  # noqa: E731
    enc_norm, pred_norm = norm_of(enc), norm_of(pred)
    assert enc_norm < 1.0 < pred_norm
    total = clip_per_module(trainer.module_params, 1.0)
    assert total.item() == pytest.approx(math.hypot(enc_norm, pred_norm), rel=1e-5)  # before clipping
    for p, g in zip(enc, enc_before):
        assert torch.equal(p.grad, g)  # the encoder's small gradient is not shrunk by the predictor's norm
    assert norm_of(pred) == pytest.approx(1.0, rel=1e-4)
    # Not clipping (inf) leaves every gradient as it was and still measures the norm.
    before = [p.grad.clone() for p in enc + pred]
    assert clip_per_module(trainer.module_params, math.inf).item() == pytest.approx(math.hypot(enc_norm, 1.0),
                                                                                    rel=1e-5)
    assert all(torch.equal(p.grad, g) for p, g in zip(enc + pred, before))


def test_per_module_clipping_under_fsdp2_matches_one_process(tmp_path, subprocess_env):
    """A tiny clip that acts every step, on DTensor gradients sharded over 2 processes, as on 1 process."""
    assert_two_processes_match_one(tmp_path, 4, ["optim.clip_grad=0.01", "optim.clip_start_step=0",
                                                 "train.tensorboard=false"], subprocess_env)


def test_a_module_without_gradients_is_skipped(tmp_path):
    trainer = make_trainer(tmp_path)
    enc, pred = trainer.module_params
    for p in enc:
        p.grad = torch.full_like(p, 1e-2)
    for p in pred:
        p.grad = None
    enc_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in enc])).item()
    assert clip_per_module(trainer.module_params, math.inf).item() == pytest.approx(enc_norm, rel=1e-5)
    assert all(p.grad is None for p in pred)
