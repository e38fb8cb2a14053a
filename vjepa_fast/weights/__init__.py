"""Weights in and out: read every supported format (formats.py), detect the architecture (models/arch.py `ModelArch`)
a file's shapes show (detect.py), load encoders and training models (load.py), write safetensors / reference /
Hugging Face (write.py).
See docs/weights.md."""
from vjepa_fast.models.arch import CheckpointFormatError, ModelArch, model_config
from vjepa_fast.weights.formats import Weights, read_weights
from vjepa_fast.weights.load import load_encoder, load_into

__all__ = ["CheckpointFormatError", "ModelArch", "model_config", "Weights", "read_weights", "load_encoder",
           "load_into"]
