"""Layer specs, the safetensors model file, precision and the training loop: torch only, no service code."""

from models.augment import Augment
from models.evaluation import evaluate, logits, normalize
from models.layers import LIMITS, LayerSpecError, build_sequential, default_layers, resolve_layers
from models.memory import MemoryBudgetError, forward_batch, training_batch
from models.modelfile import FORMAT, ModelFileError, load_model, load_model_with_header, read_header, save_model
from models.precision import PRECISIONS, autocast, cpu_has_bf16, memory_format, resolve_precision
from models.stopping import EarlyStoppingConfig
from models.training import TrainConfig, pick_device, seeded_model, train

__all__ = [
    "FORMAT", "Augment", "EarlyStoppingConfig", "LIMITS", "PRECISIONS", "LayerSpecError", "MemoryBudgetError",
    "ModelFileError", "TrainConfig", "autocast", "build_sequential", "cpu_has_bf16", "default_layers", "evaluate",
    "forward_batch", "load_model", "load_model_with_header", "logits", "memory_format", "normalize", "pick_device",
    "read_header", "resolve_layers", "resolve_precision", "save_model", "seeded_model", "train", "training_batch",
]
