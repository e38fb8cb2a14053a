"""float8 training of the transformer linears (`train.float8=true`), through torchao's Float8Linear.

`convert(model, sharded, emulate)` swaps every nn.Linear of the context encoder, the predictor (or VideoMAE's
decoder) and the target encoder whose in and out features are both multiples of 16 (what the float8 tensor-core
matmuls need; the rest stay in bf16) for torchao's Float8Linear: dynamic per-tensor scales, e4m3 forward and e5m2
gradients. It runs before torch.compile and FSDP2 are applied (parallel.py), which is the order torchao composes in;
with FSDP2 (`sharded`) the weights are all-gathered in float8 (`enable_fsdp_float8_all_gather`), halving the
all-gather traffic. The parameters stay fp32 nn.Parameters of the same shapes, so the optimizer, the EMA pairing
and checkpoints are unchanged. `emulate=True` (the CPU) computes the float8 casts but runs the matmuls in higher
precision: a correctness path for tests, not a fast one.

torchao is optional (`pip install -e .[float8]`); config validation turns its absence, or a GPU without float8
tensor cores (before sm_89), into a one-line config error.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch
import torch.nn as nn

MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs with float8 tensor cores


def unavailable_reason() -> Optional[str]:
    """Why train.float8 cannot run here, or None."""
    if importlib.util.find_spec("torchao") is None:
        return "needs torchao (pip install -e .[float8])"
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < MIN_CAPABILITY:
        major, minor = torch.cuda.get_device_capability()
        return f"needs a GPU with float8 tensor cores (sm_89 or newer), this one is sm_{major}{minor}"
    return None


def convertible(module: nn.Module, fqn: str = "") -> bool:
    """An nn.Linear whose dims the float8 matmul accepts (both multiples of 16)."""
    return (type(module) is nn.Linear and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def convert(model, sharded: bool, emulate: bool) -> list[str]:
    """Convert the eligible linears of a pretraining model's parts (models/protocol.py) in place; returns their
    names."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig(enable_fsdp_float8_all_gather=sharded, emulate=emulate)
    converted = []
    for top, module in model.parts().items():
        names = [f"{top}.{n}" for n, m in module.named_modules() if convertible(m)]
        convert_to_float8_training(module, config=config, module_filter_fn=convertible)
        converted += names
    return converted
