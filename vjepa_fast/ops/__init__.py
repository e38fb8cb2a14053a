"""The ops of a V-JEPA step, each with a plain definition (`*_reference`) and backends chosen by one registry
(ops/_backend.py). Six ops are registered: `gather` (indexed_gather_add), `attention` and `dense_attention` (both
varlen_attention: packed, and dense with `uniform_len`), `l1_loss` (l1_target_loss), `ema` (ema_update_), and `rope`
(V-JEPA 2's rotary q/k, vjepa_fast.models.rope.apply_rope_qkv, whose Triton kernel is ops/triton_rope.py)."""
from vjepa_fast.ops._backend import chosen_backends, configure, set_backend
from vjepa_fast.ops.attention import varlen_attention
from vjepa_fast.ops.ema import ema_update_
from vjepa_fast.ops.gather import indexed_gather_add
from vjepa_fast.ops.l1_loss import l1_target_loss

__all__ = ["set_backend", "configure", "chosen_backends", "varlen_attention", "ema_update_", "indexed_gather_add",
           "l1_target_loss"]
