"""vjepa-fast: fast, correct V-JEPA video pretraining."""

__version__ = "0.1.0"
