"""SIGReg, an isotropy term against collapse (`loss.sigreg`), written from the description in LeJEPA (Balestriero &
LeCun, arXiv 2511.08544): push the online encoder's tokens towards a standard Gaussian in every direction.

Each step the context encoder's output rows x [R, D] are projected on `directions` unit vectors a_m, drawn afresh from
a seed that is a function of (train.seed, step) only, so every rank draws the same ones without communicating. Along
each direction the empirical characteristic function of the projections,

    phi(t) = (1/N) sum_n exp(i t a_m.x_n),  N = the rows of the whole global batch,

is compared with the standard Gaussian's exp(-t^2/2) on a grid of t in [0, t_max], weighted by the Gaussian window
exp(-t^2/2) (the Epps-Pulley statistic's weight), and integrated with the trapezoid rule; the integrand is even in t,
so [0, t_max] counts twice for [-t_max, t_max]. The term is the mean over directions:

    sigreg = mean_m 2 int_0^t_max |phi_m(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt.

It is 0 for the Gaussian itself (E|phi_N - phi|^2 = (1 - exp(-t^2)) / N for N Gaussian samples: a few 1e-4 at a
batch's thousands of tokens) and 0.2 to 1 for collapsed tokens (0.40 with every token at the origin, about 1 with every
token at one LayerNorm-ed vector, 0.2 on one line). It is computed in fp32 whatever the autocast dtype: on 4096 rows
fp32 is within 1e-5 of fp64 (tests/test_sigreg.py). Unlike the Epps-Pulley test statistic it
is not multiplied by N: as a loss term its size then does not change with the number of tokens per global batch (which
varies with masks, batch size and world size), so one weight means the same thing in every recipe.

Distributed: the cos/sin sums and the row count are summed over ranks (one all_reduce of 2 x directions x points + 1
numbers), so every rank holds the global batch's statistic. Each rank's gradient flows through its own rows only and is
scaled by the world size: FSDP averages gradients over ranks, which then gives the global statistic's gradient (the
same convention as the prediction loss's row weights, models/protocol.py). No collective runs in the backward.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

_SEED_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: (seed, step) pairs map to distinct generator seeds


def sigreg_directions(dim: int, num: int, seed: int, step: int, device: torch.device) -> torch.Tensor:
    """[dim, num] unit columns, a function of (seed, step) only: drawn on `device` (no host-to-device copy), so the
    same on every rank of one device type."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * _SEED_MIX + step) % 2**64)
    a = torch.randn(dim, num, generator=gen, device=device, dtype=torch.float32)
    return a / a.norm(dim=0, keepdim=True)


def trapezoid_weights(t: torch.Tensor) -> torch.Tensor:
    """Trapezoid-rule weights on the grid t (so that sum(w * f(t)) ~ int f), times the Gaussian window, times 2 for the
    mirrored half [-t_max, 0]."""
    dt = t[1:] - t[:-1]
    w = torch.zeros_like(t)
    w[:-1] += dt / 2
    w[1:] += dt / 2
    return 2 * w * torch.exp(-t.square() / 2)


def ecf_sums(proj: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """proj [R, M] -> [2, M, K]: sum over rows of cos(t_k proj) and of sin(t_k proj)."""
    arg = proj.unsqueeze(-1) * t  # [R, M, K]
    return torch.stack([torch.cos(arg).sum(0), torch.sin(arg).sum(0)])


def sigreg_statistic(x: torch.Tensor, directions: torch.Tensor, t: torch.Tensor,
                     world_size: int = 1, group=None) -> torch.Tensor:
    """The term (module docstring) of rows x [R, D] along `directions` [D, M] on the grid t [K], in t's dtype.

    With world_size > 1 the sums are all-reduced over `group` (every rank must call this with the same directions and
    grid); the value is the global batch's on every rank and each rank's gradient is world_size times its rows' share.
    """
    proj = x.to(t.dtype) @ directions.to(t.dtype)  # [R, M]
    local = ecf_sums(proj, t)
    count = torch.tensor([float(x.shape[0])], dtype=t.dtype, device=t.device)
    if world_size > 1:
        total = torch.cat([local.detach().reshape(-1), count])
        dist.all_reduce(total, group=group)
        count = total[-1:]
        sums = total[:-1].reshape(local.shape) + world_size * (local - local.detach())  # value: global, grad: local
    else:
        sums = local
    phi = sums / count.clamp(min=1)
    gauss = torch.exp(-t.square() / 2)
    err = (phi[0] - gauss).square() + phi[1].square()  # [M, K]: |phi(t) - exp(-t^2/2)|^2
    return (err @ trapezoid_weights(t)).mean()


class SIGReg(nn.Module):
    """The term with its settings (loss.sigreg_*); no parameters. `forward(x, step)` -> fp32 scalar."""

    def __init__(self, directions: int = 64, t_max: float = 3.0, t_points: int = 17, seed: int = 0):
        super().__init__()
        self.num_directions, self.seed = directions, seed
        self.register_buffer("t", torch.linspace(0.0, t_max, t_points, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        a = sigreg_directions(x.shape[-1], self.num_directions, self.seed, step, x.device)
        with torch.autocast(x.device.type, enabled=False):  # cos/sin sums of thousands of rows: fp32, not bf16
            return sigreg_statistic(x.float(), a, self.t.to(x.device), world)
