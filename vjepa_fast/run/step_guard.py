"""The step's non-finite guard, decided on the device, so the loop never waits for the GPU to learn a loss.

A step whose loss or gradient norm is NaN/Inf must leave the model exactly as if it had not run. Branching in
Python on `float(loss)` would make the host wait for the whole step every step; instead the flag stays a 0-d
device tensor and masks the update:

- `finite_flag(loss, grad_norm)`: True where both are finite (on the device, no sync);
- `guarded_optimizer_step(optimizer, ok)`: torch's fused AdamW takes a `found_inf` tensor (the interface
  GradScaler uses): where it is 1 the kernel leaves parameters, exp_avg and exp_avg_sq untouched (weight decay
  included, it lives in the same kernel) and the step counter is incremented then taken back, so the state is
  bit-identical to a skipped step. Other optimizers run their step and are put back from a snapshot with
  torch.where (correct, at the cost of a copy of parameters and state);
- the EMA takes the flag itself: `vjepa_fast.ops.ema_update_(..., apply=ok)` leaves the target encoder
  bit-identical where ok is false, read by its kernels on the device (docs/kernels.md, "Fused EMA update").

The numbers a log line needs (loss, gradient norm, the flag, data-error counts) are read back later in one go
(`read_back`), on log and checkpoint steps only; the Trainer then warns about each skipped step and stops the run
after `train.max_nonfinite` consecutive ones, exactly as if it had looked every step.
"""
from __future__ import annotations

from typing import Sequence

import torch


class NonFiniteLossError(RuntimeError):
    pass


def finite_flag(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """0-d bool on the loss's device: loss and gradient norm are both finite."""
    return torch.isfinite(loss.detach()).all() & torch.isfinite(grad_norm.detach().to(loss.device)).all()


def _is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.defaults.get("fused")) and all(g.get("fused", True) for g in optimizer.param_groups)


@torch.no_grad()
def guarded_optimizer_step(optimizer: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    """`optimizer.step()` where `ok`, a no-op (parameters and state bit-identical) where not; no host sync."""
    if _is_fused(optimizer):
        optimizer.found_inf = (~ok).to(torch.float32)  # read by the fused kernels, as from GradScaler
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        return
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    saved_params = [p.detach().clone() for p in params]
    saved_state = {p: {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, torch.Tensor)}
                   for p in params if p in optimizer.state}
    optimizer.step()
    for p, old in zip(params, saved_params):
        p.copy_(torch.where(ok, p, old))
        before = saved_state.get(p)
        for k, v in optimizer.state[p].items():
            if isinstance(v, torch.Tensor):  # state first created by this step goes back to its initial zeros
                v.copy_(torch.where(ok.to(v.device), v, before[k] if before else torch.zeros_like(v)))


def read_back(pending: Sequence[dict]) -> list[dict]:
    """Host values of the steps' device numbers, one copy for all: `finite` (bool), `loss`, `grad_norm` (floats),
    `data_stats` ((data errors, clips) summed over ranks)."""
    if not pending:
        return []
    device = pending[0]["loss"].device
    rows = torch.stack([torch.cat([o["finite"].reshape(1).double(), o["loss"].reshape(1).double(),
                                   o["grad_norm"].reshape(1).double().to(device),
                                   o["data_stats"].reshape(-1).double().to(device)]) for o in pending])
    host = rows.cpu().tolist()  # the one sync
    return [{**o, "finite": bool(h[0]), "loss": h[1], "grad_norm": h[2], "data_stats": (int(h[3]), int(h[4]))}
            for o, h in zip(pending, host)]
