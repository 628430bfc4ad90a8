"""Training checkpoints: everything a run needs to continue bit for bit, as one safetensors file (no pickle).

Tensors (weights, the optimizer's state, the random generators' states, the running sums) are safetensors
entries; the rest (position, history, optimizer hyper-parameters, how the run was set up) is JSON in the header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

FORMAT = "scv-checkpoint/1"
_MODEL, _OPTIM, _RNG, _RUN = "model.", "optimizer.", "rng.", "run."


class CheckpointError(ValueError):
    """Bytes that are not a checkpoint of this format."""


@dataclass
class Checkpoint:
    """A run's state at a step boundary: `epoch` with `step` of its steps done (step 0: the epoch has not begun)."""

    epoch: int
    step: int
    tensors: dict[str, torch.Tensor] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)  # history, optimizer groups, setup (device, precision, ...)

    def to_bytes(self) -> bytes:
        header = {"format": FORMAT, "epoch": self.epoch, "step": self.step, **self.meta}
        return save({k: v.contiguous() for k, v in self.tensors.items()}, metadata={"scv": json.dumps(header)})

    @classmethod
    def from_bytes(cls, blob: bytes) -> Checkpoint:
        try:
            tensors = load(blob)
            header = json.loads(_header(blob)["scv"])
        except (SafetensorError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"not a checkpoint: {exc}") from None
        if header.pop("format", None) != FORMAT:
            raise CheckpointError(f"not a {FORMAT} checkpoint")
        return cls(epoch=header.pop("epoch"), step=header.pop("step"), tensors=tensors, meta=header)


def _header(blob: bytes) -> dict:
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + size]).get("__metadata__") or {}


def capture(model: nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int, step: int,
            run: dict[str, torch.Tensor], meta: dict[str, Any]) -> Checkpoint:
    """Copy the state of a run to the CPU (the training thread may go on at once)."""
    tensors = {_MODEL + k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{index}.{name}"] = value.detach().to("cpu", copy=True)
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors[_RNG + "cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{_RNG}cuda.{i}"] = rng
    tensors.update({_RUN + k: v.detach().to("cpu", copy=True) for k, v in run.items()})
    return Checkpoint(epoch=epoch, step=step, tensors=tensors,
                      meta={**meta, "param_groups": state["param_groups"], "optimizer_scalars": scalars})


def restore(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
            device: torch.device) -> dict[str, torch.Tensor]:
    """Put the weights, optimizer state and random generators back; returns the run's own tensors."""
    t = checkpoint.tensors
    model.load_state_dict({k[len(_MODEL):]: v for k, v in t.items() if k.startswith(_MODEL)})
    state: dict[int, dict[str, Any]] = {}
    for key, value in t.items():
        if key.startswith(_OPTIM):
            index, name = key[len(_OPTIM):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, values in checkpoint.meta["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": checkpoint.meta["param_groups"]})
    # load_state_dict leaves the state contiguous; fused steps want it laid out like its parameter (channels_last)
    for param, values in optimizer.state.items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                values[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    torch.set_rng_state(t[_RNG + "cpu"])
    cuda = [t[k] for k in sorted((k for k in t if k.startswith(_RNG + "cuda.")), key=lambda k: int(k.split(".")[-1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return {k[len(_RUN):]: v.to(device) for k, v in t.items() if k.startswith(_RUN)}
