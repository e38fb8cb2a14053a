"""vjepa-fast: fast, correct V-JEPA video pretraining."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import vjepa_fast` stays light (no torch import until an encoder is asked for).
    if name == "load_encoder":
        from vjepa_fast.weights.load import load_encoder

        return load_encoder
    raise AttributeError(f"module 'vjepa_fast' has no attribute {name!r}")
