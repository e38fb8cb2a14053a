"""Attentive probe for frozen evaluation (docs/recipe.md, "Frozen evaluation"): a learnable query pools encoder tokens.

One learnable query token runs through `depth` cross-attention blocks (it attends to all encoder tokens; the tokens
themselves are never updated), then a final LayerNorm and a linear classifier read it out. V-JEPA uses depth 1; deeper
probes here stack further cross-attention blocks on the same tokens.

Several temporal segments of one clip: concatenate their tokens along N before calling the probe (one query sees all
of them). Several spatial views: run the probe on each view and average the predictions (see vjepa_fast/eval/probe.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vjepa_fast.models.vit import LN_EPS, MLP

PROBE_INIT_STD = 0.02  # the reference's init of every probe weight


class CrossAttention(nn.Module):
    """Multi-head attention with queries from `q` [B, Q, D] and keys/values from `x` [B, N, D]."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"probe width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, Q, D = q.shape
        N = x.shape[1]
        qh = self.q(q).reshape(B, Q, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, Q, hd]
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, N, hd]
        out = F.scaled_dot_product_attention(qh, k, v)  # scale head_dim^-0.5
        return self.proj(out.transpose(1, 2).reshape(B, Q, D))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention block: the query is updated, the tokens only feed keys and values."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=LN_EPS)
        self.norm_x = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = MLP(dim, int(round(dim * mlp_ratio)))

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = q + self.attn(self.norm_q(q), self.norm_x(x))
        return q + self.mlp(self.norm2(q))


class AttentiveProbe(nn.Module):
    """tokens [B, N, D] -> logits [B, num_classes]."""

    def __init__(self, embed_dim: int, num_classes: int, num_heads: int, depth: int = 1, mlp_ratio: float = 4.0,
                 qk_init_std: float = PROBE_INIT_STD):
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_classes", num_classes), ("num_heads", num_heads),
                            ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AttentiveProbe: {name} must be a positive integer, got {value!r}")
        if not mlp_ratio > 0:
            raise ValueError(f"AttentiveProbe: mlp_ratio must be positive, got {mlp_ratio!r}")
        if not 0 < qk_init_std < float("inf"):
            raise ValueError(f"AttentiveProbe: qk_init_std must be positive, got {qk_init_std!r}")
        self.embed_dim, self.num_classes, self.qk_init_std = embed_dim, num_classes, qk_init_std
        self.query = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.blocks = nn.ModuleList(CrossBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Truncated at +-2 std (unlike the encoder's effectively untruncated init): nothing to match here.
        nn.init.trunc_normal_(self.query, std=PROBE_INIT_STD, a=-2 * PROBE_INIT_STD, b=2 * PROBE_INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=PROBE_INIT_STD, a=-2 * PROBE_INIT_STD, b=2 * PROBE_INIT_STD)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The query and key projections at qk_init_std: at 0.02 and a narrow width the attention logits start near
        # zero (about 0.04 std at width 96), every token is weighted alike, and a probe whose label sits in a few
        # tokens can stay on that plateau for most of its epochs; at embed_dim ** -0.5 they start at about unit std
        # (docs/eval.md, "The probe"). Scaled after drawing (a truncated normal scales with its std), so a seed draws
        # the same numbers whatever qk_init_std.
        gain = self.qk_init_std / PROBE_INIT_STD  # 1.0 at the default: exact, the reference's init unchanged
        for block in self.blocks:
            block.attn.q.weight.mul_(gain)
            block.attn.kv.weight[:self.embed_dim].mul_(gain)  # the key half; the values keep PROBE_INIT_STD

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.embed_dim or tokens.shape[1] == 0:
            raise ValueError(f"AttentiveProbe: tokens must be [B, N >= 1, {self.embed_dim}], "
                             f"got {tuple(tokens.shape)}")
        q = self.query.expand(tokens.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, tokens)
        return self.head(self.norm(q[:, 0]))
