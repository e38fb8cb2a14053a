"""The four ops of a V-JEPA step, each with a reference definition and backend dispatch."""
from vjepa_fast.ops._backend import set_backend
from vjepa_fast.ops.attention import varlen_attention
from vjepa_fast.ops.ema import ema_update_
from vjepa_fast.ops.gather import indexed_gather_add, masked_gather
from vjepa_fast.ops.l1_loss import l1_target_loss

__all__ = ["set_backend", "varlen_attention", "ema_update_", "masked_gather", "indexed_gather_add", "l1_target_loss"]
