"""The device-side non-finite guard: a masked step is bit-identical to no step, with no host sync in between."""
import warnings

import pytest
import torch

from vjepa_fast import _ext, ops, train
from vjepa_fast.config import load_config
from vjepa_fast.data.loader import MaskCollate, build_dataset, make_loader
from vjepa_fast.ops import ema as ema_op
from vjepa_fast.parallel import DistInfo
from vjepa_fast.run.step_guard import finite_flag, guarded_optimizer_step, read_back

SMALL = ["train.steps=8", "train.batch_size=2", "train.progress=false", "data.num_workers=0", "data.num_frames=4",
         "data.crop_size=64", "optim.warmup_steps=2"]


def _model_and_optimizer(fused: bool, seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-2, fused=fused, foreach=not fused)
    return model, opt


def _state(model, opt):
    tensors = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        for k in sorted(opt.state.get(p, {})):
            tensors.append(opt.state[p][k].clone())
    return tensors


def _grads(model, step, nan):
    g = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
        if nan:
            p.grad.view(-1)[0] = float("nan")


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bad_step", [0, 2])  # the very first step (state not yet created) and a later one
def test_masked_optimizer_step_is_bit_identical_to_no_step(fused, bad_step):
    guarded, opt_g = _model_and_optimizer(fused, seed=3)
    skipped, opt_s = _model_and_optimizer(fused, seed=3)
    for step in range(5):
        bad = step == bad_step
        _grads(guarded, step, nan=bad)
        norm = torch.nn.utils.clip_grad_norm_(list(guarded.parameters()), 1.0)
        guarded_optimizer_step(opt_g, finite_flag(torch.tensor(0.5), norm))
        if not bad:
            _grads(skipped, step, nan=False)
            torch.nn.utils.clip_grad_norm_(list(skipped.parameters()), 1.0)
            opt_s.step()
        got, want = _state(guarded, opt_g), _state(skipped, opt_s)
        if step == bad_step == 0:  # the masked first step may create the state: all zeros, as a fresh one
            assert all(not v.any() for v in got[len(want):])
            got = got[:len(want)]
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert torch.equal(a, b), f"step {step}"
    assert not hasattr(opt_g, "found_inf")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masked_step_on_cuda_is_bit_identical_and_never_syncs():
    """CUDA fused AdamW + the masked EMA: a NaN step changes nothing, and the guard never waits for the GPU."""
    model, opt = _model_and_optimizer(True, seed=4)
    model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, fused=True)
    target = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    before = _state(model, opt) + [t.clone() for t in target]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        ok = finite_flag(torch.ones((), device="cuda"), norm)
        guarded_optimizer_step(opt, ok)
        ops.ema_update_(target, list(model.parameters()), 0.99, apply=ok)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    after = _state(model, opt) + target
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_step_on_cuda_never_syncs(tmp_path):
    """Between log steps the whole step (forward, backward, guard, AdamW, EMA) runs without a host sync."""
    cfg = load_config(None, [f"run_dir={tmp_path}", *SMALL, "train.log_every=100", "train.ckpt_every=100"])
    trainer = train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cuda")))
    batches = [b.pin_memory() for b in _batches(trainer, 3)]
    trainer.train_step(batches[0], 0)  # first use: kernel builds, lazy state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in batches[1:]:
            out = trainer.train_step(b, b.step)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert bool(out["finite"]) and len(trainer.unread) == 3


def test_finite_flag():
    assert bool(finite_flag(torch.tensor(1.0), torch.tensor(2.0)))
    assert not bool(finite_flag(torch.tensor(float("nan")), torch.tensor(2.0)))
    assert not bool(finite_flag(torch.tensor(1.0), torch.tensor(float("inf"))))


def test_read_back_converts_in_one_go():
    rows = read_back([{"step": 3, "finite": torch.tensor(False), "loss": torch.tensor(float("nan")),
                       "grad_norm": torch.tensor(1.5), "data_stats": torch.tensor([2.0, 8.0], dtype=torch.float64)}])
    assert rows[0]["step"] == 3 and rows[0]["finite"] is False and rows[0]["grad_norm"] == 1.5
    assert rows[0]["data_stats"] == (2, 8)


def _trainer(run_dir, extra=()):
    cfg = load_config(None, [f"run_dir={run_dir}", *SMALL, *extra])
    return train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")))


def _batches(trainer, n):
    cfg = trainer.cfg
    collate = MaskCollate(trainer.masker, trainer.num_tokens)
    return list(make_loader(build_dataset(cfg.data, cfg.train.seed), collate, cfg.train.batch_size, 0, 1, 0, n,
                            cfg.train.seed, 0, pin_memory=False))


def _poison(trainer, monkeypatch, bad_steps):
    real = trainer.compute_loss

    def flaky(batch, row_weight):
        loss = real(batch, row_weight)
        return loss * float("nan") if batch.step in bad_steps else loss

    monkeypatch.setattr(trainer, "compute_loss", flaky)


def _everything(trainer):
    out = [t.detach().clone() for t in trainer.model.state_dict().values()]
    for p in trainer.params:
        out += [v.clone() for _, v in sorted(trainer.optimizer.state[p].items())]
    return out


def test_nan_step_in_training_equals_skipping_it(tmp_path, monkeypatch):
    """A NaN loss at step 2 (read back only later: log_every is large) leaves weights, target encoder and AdamW
    state bit-identical to a run that never ran step 2."""
    extra = ["train.log_every=100", "train.ckpt_every=100"]
    guarded = _trainer(tmp_path / "a", extra)
    skipping = _trainer(tmp_path / "b", extra)
    batches = _batches(guarded, 5)
    _poison(guarded, monkeypatch, {2})
    flags, real_ema = [], ops.ema_update_

    def ema_spy(targets, sources, momentum, apply=None):  # the step's EMA is the op itself, given the flag
        flags.append(apply)
        real_ema(targets, sources, momentum, apply=apply)

    monkeypatch.setattr(ops, "ema_update_", ema_spy)
    monkeypatch.setattr(ema_op.EMA, "chosen", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning yet: the step's numbers are not read back
        outs = [guarded.train_step(b, b.step) for b in batches]
    assert [bool(f) for f in flags] == [True, True, False, True, True]
    if _ext.load():  # fp32 targets and sources on the CPU: the C++ kernel ran, flag and all
        assert {b.name for b in ema_op.EMA.chosen.values()} == {"cpu"}
    assert all(isinstance(o["loss"], torch.Tensor) for o in outs)  # still on the device, unread
    for b in batches:
        if b.step != 2:
            skipping.train_step(b, b.step)
    got, want = _everything(guarded), _everything(skipping)
    assert len(got) == len(want)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.warns(UserWarning, match="step 2: loss is nan; update skipped"):
        guarded.settle(guarded.unread.pop())
    assert guarded.nonfinite_in_a_row == 0 and guarded.data_attempts == 2 * len(batches)


def test_consecutive_nonfinite_steps_stop_with_one_line(tmp_path, monkeypatch, capsys):
    """Read back only every 4 steps, three NaN steps in a row still stop the run with the one-line error."""
    monkeypatch.setattr(train.Trainer, "compute_loss",
                        lambda self, batch, rw: self.model(batch.video, batch.masks, rw) * float("nan"))
    with pytest.warns(UserWarning, match="update skipped"):
        code = train.main([f"run_dir={tmp_path}", *SMALL, "train.log_every=4", "train.max_nonfinite=3"])
    assert code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["error: 3 consecutive steps with a non-finite loss or gradient (last at step 2): stopping; "
                     "lower optim.lr or check the data"]
