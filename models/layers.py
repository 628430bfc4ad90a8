"""Layer lists: resolving them by shape inference within the limits, and building the Sequential."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from models.allowlist import (
    IMAGE_LAYERS,
    INFER,
    INFERRED,
    LAYER_TYPES,
    LIMITS,
    REQUIRED,
    Invalid,
    Shape,
    show,
)


class LayerSpecError(ValueError):
    """A layer list that cannot be built; `index` is None for whole-network problems."""

    def __init__(self, reason: str, *, index: int | None = None, layer_type: str | None = None) -> None:
        where = "" if index is None else f"layers[{index}]" + (f" ({layer_type})" if layer_type else "") + ": "
        super().__init__(where + reason)
        self.index = index
        self.reason = reason
        self.layer_type = layer_type


def default_layers(input_shape: tuple[int, int, int], num_classes: int) -> list[dict]:
    """The default CNN for every dataset; sizes are inferred later, so `input_shape` only documents the call.

    Conv2d(32, 3, padding=1), BatchNorm2d, ReLU, MaxPool2d(2), Conv2d(64, 3, padding=1), BatchNorm2d,
    ReLU, MaxPool2d(2), Flatten, Linear(128), ReLU, Dropout(0.25), Linear(num_classes).
    """
    block = [{"type": "BatchNorm2d"}, {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2}]
    return [{"type": "Conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1}, *block,
            {"type": "Conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1}, *block,
            {"type": "Flatten"}, {"type": "Linear", "out_features": 128}, {"type": "ReLU"},
            {"type": "Dropout", "p": 0.25}, {"type": "Linear", "out_features": num_classes}]


def _arguments(index: int, spec: Any) -> tuple[str, dict[str, Any]]:
    """Check one spec against the allow-list; inferred arguments not given are None."""
    if not isinstance(spec, dict):
        reason = f'must be an object like {{"type": "Conv2d", ...}}, got {show(spec)}'
        raise LayerSpecError(reason, index=index)
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in LAYER_TYPES:
        reason = f"unknown layer type; allowed: {', '.join(LAYER_TYPES)}"
        raise LayerSpecError(reason, index=index, layer_type=kind[:40] if isinstance(kind, str) else show(kind))
    table = LAYER_TYPES[kind][1]
    try:
        for key in spec:
            if key != "type" and key not in table:
                raise Invalid(f"unknown argument {show(key)}; {kind} accepts: {', '.join(table) or 'none'}")
        args: dict[str, Any] = {}
        for name, (check, default) in table.items():
            if name in spec:
                args[name] = check(name, spec[name])
            elif default is REQUIRED:
                raise Invalid(f"{name} is required")
            else:
                args[name] = None if default is INFER else default
    except Invalid as exc:
        raise LayerSpecError(str(exc), index=index, layer_type=kind) from None
    return kind, args


def _fit(kind: str, args: dict[str, Any], shape: Shape) -> None:
    """Infer input sizes and explain in words why the layer cannot take `shape`."""
    seen = f"{len(shape) + 1}-D tensor {_dims(shape)}"
    if kind in IMAGE_LAYERS and len(shape) != 3:
        raise Invalid(f"expects a 4-D input (N, C, H, W) but receives a {seen}; put it before the Flatten")
    if kind == "Linear" and len(shape) != 1:
        raise Invalid(f"expects a 2-D input (N, features) but receives a {seen}; put a Flatten before it")
    if kind == "BatchNorm1d" and len(shape) not in (1, 2):
        raise Invalid(f"expects a 2-D or 3-D input but receives a {seen}; use BatchNorm2d before the Flatten")
    if kind in INFERRED:
        name = INFERRED[kind]
        if args[name] is None:
            args[name] = shape[0]
        elif args[name] != shape[0]:
            raise Invalid(f"{name} is {args[name]} but its input has {shape[0]}; leave it out to infer it")
    if "inplace" in args:
        args["inplace"] = False  # analysis hooks keep each module's output; in-place would overwrite it
    if kind in ("MaxPool2d", "AvgPool2d") and args["stride"] is None:
        args["stride"] = args["kernel_size"]  # torch's own default, made explicit
    if kind == "Conv2d":
        groups = args["groups"]
        if args["in_channels"] % groups or args["out_channels"] % groups:
            raise Invalid(f"groups {groups} must divide in_channels ({args['in_channels']}) "
                          f"and out_channels ({args['out_channels']})")
        if args["padding"] == "same" and args["stride"] not in (1, [1, 1]):
            raise Invalid('padding "same" needs stride 1')
    if kind in ("Conv2d", "MaxPool2d", "AvgPool2d") and args["padding"] != "same":
        kernel, dilation = _both(args["kernel_size"]), _both(args.get("dilation", 1))
        padding = [0, 0] if args["padding"] == "valid" else _both(args["padding"])
        spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
        if kind != "Conv2d" and any(2 * p > s for p, s in zip(padding, spans, strict=True)):
            raise Invalid(f"padding {args['padding']} must be at most half of "
                          f"kernel_size {args['kernel_size']}")
        if any(s > n + 2 * p for s, n, p in zip(spans, shape[1:], padding, strict=True)):
            extra = f" with padding {args['padding']}" if any(padding) else ""
            dilated = f" (dilation {args['dilation']})" if spans != kernel else ""
            raise Invalid(f"kernel_size {args['kernel_size']}{dilated} is larger than the "
                          f"{shape[1]}×{shape[2]} input{extra}")
    if kind == "Flatten":
        ndim = len(shape) + 1
        start, end = args["start_dim"], args["end_dim"]
        if not (-ndim <= start < ndim and -ndim <= end < ndim) or not 1 <= start % ndim <= end % ndim:
            raise Invalid(f"start_dim {start} and end_dim {end} must pick dimensions 1..{ndim - 1} "
                          f"of the {seen}, start first (dimension 0 is the batch)")


def _dims(shape: Shape) -> str:
    return f"(N, {', '.join(map(str, shape))})"


def _both(value: int | list[int]) -> list[int]:
    return list(value) if isinstance(value, list) else [value, value]


def _construct(kind: str, args: dict[str, Any]) -> nn.Module:
    # torch wants tuples where JSON has lists
    return LAYER_TYPES[kind][0](**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


def _probe(index: int, kind: str, args: dict[str, Any], shape: Shape) -> tuple[Shape, int]:
    """Run the layer on the meta device (no memory, no RNG): its output shape and parameter count."""
    try:
        _fit(kind, args, shape)
        try:
            with torch.device("meta"):
                module = _construct(kind, args).eval()  # eval: BatchNorm needs no batch statistics
                out = tuple(module(torch.empty((1, *shape))).shape[1:])
        except Exception as exc:  # torch's own refusal, in its words, for cases _fit does not foresee
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise Invalid(f"does not fit its input {_dims(shape)}: {first}") from None
        if 0 in out:
            raise Invalid(f"its output {_dims(out)} is empty; the input is too small "
                          "here — remove a pooling layer or add padding")
        if math.prod(out) > LIMITS.max_activation_elements:
            raise Invalid(f"its output {_dims(out)} has {math.prod(out):,} values per image; at most "
                          f"{LIMITS.max_activation_elements:,} — use fewer channels or downsample earlier")
    except Invalid as exc:
        raise LayerSpecError(str(exc), index=index, layer_type=kind) from None
    return out, sum(p.numel() for p in module.parameters())


def _check_parameters(total: int) -> None:
    if total > LIMITS.max_parameters:
        raise LayerSpecError(f"the network would have {total:,} parameters; at most {LIMITS.max_parameters:,}"
                             " are allowed — use narrower layers or downsample before the first Linear")


def resolve_layers(
    specs: list[dict] | None, *, input_shape: tuple[int, int, int], num_classes: int
) -> list[dict]:
    """Validate a layer list and return it with every argument explicit and a final Linear to the classes."""
    if specs is None:
        specs = default_layers(input_shape, num_classes)
    if not isinstance(specs, list):
        raise LayerSpecError(f"layers must be a list of layer objects, got {show(specs)}")
    if len(specs) > LIMITS.max_layers:
        raise LayerSpecError(f"{len(specs)} layers given; at most {LIMITS.max_layers} are allowed")
    if len(input_shape) != 3 or not all(type(n) is int and n > 0 for n in (*input_shape, num_classes)):
        raise LayerSpecError(f"input_shape {input_shape} and num_classes {num_classes} must be positive")
    shape, resolved, total = tuple(input_shape), [], 0

    def add(index: int, spec: Any) -> None:
        nonlocal shape, total
        kind, args = _arguments(index, spec)
        shape, count = _probe(index, kind, args, shape)
        resolved.append({"type": kind, **args})
        total += count

    for index, spec in enumerate(specs):
        add(index, spec)
    last = resolved[-1] if resolved else {}
    if last.get("type") != "Linear" or last.get("out_features") != num_classes:
        flatten = [{"type": "Flatten"}] if len(shape) > 1 else []
        for spec in [*flatten, {"type": "Linear", "out_features": num_classes}]:
            add(len(resolved), spec)
    _check_parameters(total)
    return resolved


def activation_elements(resolved: list[dict], *, input_shape: tuple[int, int, int]) -> list[tuple[int, str, int]]:
    """Values per image at each layer's output of a resolved list: (index, type, elements), probed on meta."""
    shape, sizes = tuple(input_shape), []
    for index, spec in enumerate(resolved):
        kind, args = _arguments(index, spec)
        shape, _ = _probe(index, kind, args, shape)
        sizes.append((index, kind, math.prod(shape)))
    return sizes


def build_sequential(resolved: list[dict]) -> nn.Sequential:
    """Build the Sequential from a resolved layer list, re-checking every entry against the allow-list."""
    most = LIMITS.max_layers + 2  # resolve_layers may append a Flatten and a Linear
    if not isinstance(resolved, list) or len(resolved) > most:
        raise LayerSpecError(f"layers must be a list of at most {most} resolved layer objects")
    checked = []
    for index, spec in enumerate(resolved):
        kind, args = _arguments(index, spec)
        name = INFERRED.get(kind)
        if name is not None and args[name] is None:
            raise LayerSpecError(f"{name} is missing; resolve the layers first", index=index, layer_type=kind)
        checked.append((kind, args))
    try:
        with torch.device("meta"):  # count first, so a hostile list cannot allocate gigabytes
            total = sum(p.numel() for k, a in checked for p in _construct(k, a).parameters())
    except Exception as exc:  # argument combinations torch refuses; resolve_layers explains them better
        raise LayerSpecError(f"layers do not build: {exc}") from None
    _check_parameters(total)
    return nn.Sequential(*(_construct(kind, args) for kind, args in checked))
