"""The ops of a V-JEPA step, each in its own module with a plain definition (`*_reference`) and backends chosen by
one registry (ops/_backend.py). Six ops are registered: `gather` (indexed_gather_add, gather.py), `attention` and
`dense_attention` (both varlen_attention, attention.py: packed, and dense with `uniform_len`), `l1_loss`
(l1_target_loss, l1_loss.py), `ema` (ema_update_, ema.py) and `rope` (apply_rope_qkv, rope.py: V-JEPA 2's rotary
q/k; the model builds its tables, vjepa_fast/models/rope.py). Triton kernels live in the `triton_*.py` files."""
from vjepa_fast.ops._backend import chosen_backends, configure, set_backend
from vjepa_fast.ops.attention import varlen_attention
from vjepa_fast.ops.ema import ema_update_
from vjepa_fast.ops.gather import indexed_gather_add
from vjepa_fast.ops.l1_loss import l1_target_loss
from vjepa_fast.ops.rope import apply_rope_qkv

__all__ = ["set_backend", "configure", "chosen_backends", "varlen_attention", "ema_update_", "indexed_gather_add",
           "l1_target_loss", "apply_rope_qkv"]
