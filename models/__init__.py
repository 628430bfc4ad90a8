"""Layer specs, the safetensors model file, and the training loop: torch only, no service code."""

from models.layers import LIMITS, LayerSpecError, build_sequential, default_layers, resolve_layers
from models.modelfile import FORMAT, ModelFileError, load_model, load_model_with_header, read_header, save_model
from models.training import TrainConfig, evaluate, normalize, pick_device, seeded_model, train

__all__ = [
    "FORMAT", "LIMITS", "LayerSpecError", "ModelFileError", "TrainConfig", "build_sequential", "default_layers",
    "evaluate", "load_model", "load_model_with_header", "normalize", "pick_device", "read_header",
    "resolve_layers", "save_model", "seeded_model", "train",
]
