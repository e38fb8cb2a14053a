"""The four ops of a V-JEPA step, each with a plain definition (`*_reference`) and backends chosen by one
registry (ops/_backend.py)."""
from vjepa_fast.ops._backend import chosen_backends, configure, set_backend
from vjepa_fast.ops.attention import varlen_attention
from vjepa_fast.ops.ema import ema_update_
from vjepa_fast.ops.gather import indexed_gather_add
from vjepa_fast.ops.l1_loss import l1_target_loss

__all__ = ["set_backend", "configure", "chosen_backends", "varlen_attention", "ema_update_", "indexed_gather_add",
           "l1_target_loss"]
