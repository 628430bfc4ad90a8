"""The allow-list: layer types, their constructor arguments, limits, and typed checks of each value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

Check = Callable[[str, Any], Any]


class Invalid(Exception):
    """A value or shape problem; the layer code adds the layer's index and type."""


def show(value: Any) -> str:
    """repr() cut short: hostile values can be huge or deeply nested."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # ValueError: ints past Python's 4300-digit str() limit
        return "an oversized value"
    return text if len(text) <= 40 else text[:37] + "..."


def integer(lo: int, hi: int) -> Check:
    """An int in lo..hi (not a bool, not a float)."""

    def check(name: str, value: Any) -> int:
        if type(value) is not int or not lo <= value <= hi:  # type() rather than isinstance: no bools
            raise Invalid(f"{name} must be an integer in {lo}..{hi}, got {show(value)}")
        return value

    return check


def pair(lo: int, hi: int) -> Check:
    """An int in lo..hi or two of them (a list, as JSON has no tuples)."""

    def check(name: str, value: Any) -> int | list[int]:
        is_seq = isinstance(value, list | tuple) and len(value) == 2
        if not all(type(v) is int and lo <= v <= hi for v in (value if is_seq else [value])):
            raise Invalid(f"{name} must be an integer in {lo}..{hi} or a list of two, got {show(value)}")
        return list(value) if is_seq else value

    return check


def number(lo: float, hi: float, *, allow_none: bool = False) -> Check:
    """An int or float in lo..hi, returned as float."""

    def check(name: str, value: Any) -> float | None:
        if value is None and allow_none:
            return None
        # the range test also rejects nan and inf; huge ints compare exactly
        if type(value) not in (int, float) or not lo <= value <= hi:
            extra = " or null" if allow_none else ""
            raise Invalid(f"{name} must be a number in {lo}..{hi}{extra}, got {show(value)}")
        return float(value)

    return check


def boolean(name: str, value: Any) -> bool:
    """true or false, nothing truthy."""
    if type(value) is not bool:
        raise Invalid(f"{name} must be true or false, got {show(value)}")
    return value


def choice(*options: str, otherwise: Check | None = None) -> Check:
    """One of a few words; a non-string goes to `otherwise` when given."""

    def check(name: str, value: Any) -> Any:
        if isinstance(value, str) and value in options:
            return value
        if otherwise is not None and not isinstance(value, str):
            return otherwise(name, value)
        raise Invalid(f"{name} must be one of {', '.join(options)}, got {show(value)}")

    return check


def optional(inner: Check) -> Check:
    """null, or what `inner` accepts."""
    return lambda name, value: None if value is None else inner(name, value)


@dataclass(frozen=True)
class Limits:
    """Ceilings that keep one request from exhausting the machine."""

    max_layers: int = 64
    max_channels: int = 1024  # Conv2d out_channels
    max_features: int = 16384  # Linear out_features
    max_parameters: int = 20_000_000
    max_activation_elements: int = 4_000_000  # values per image at any layer's output


LIMITS = Limits()


Shape = tuple[int, ...]  # one image's shape, without the batch dimension
REQUIRED = object()  # no default: the user must give the argument
INFER = object()  # filled in from the incoming shape
_FEATURES = integer(1, LIMITS.max_features)
_SIZE, _PAD, _WIDE = pair(1, 1024), pair(0, 1024), integer(1, LIMITS.max_activation_elements)
_POOL = {"kernel_size": (_SIZE, REQUIRED), "stride": (optional(_SIZE), None), "padding": (_PAD, 0)}
_NORM = {"num_features": (_WIDE, INFER), "eps": (number(1e-12, 1.0), 1e-5),
         "momentum": (number(0.0, 1.0, allow_none=True), 0.1), "affine": (boolean, True),
         "track_running_stats": (boolean, True)}
_INPLACE = {"inplace": (boolean, False)}
# type name -> (class, {argument: (check, default)}), in constructor order
LAYER_TYPES: dict[str, tuple[type[nn.Module], dict[str, tuple[Check, Any]]]] = {
    "Conv2d": (nn.Conv2d, {
        "in_channels": (_WIDE, INFER), "out_channels": (integer(1, LIMITS.max_channels), REQUIRED),
        "kernel_size": (_SIZE, REQUIRED), "stride": (_SIZE, 1),
        "padding": (choice("same", "valid", otherwise=_PAD), 0),
        "dilation": (_SIZE, 1), "groups": (integer(1, LIMITS.max_channels), 1), "bias": (boolean, True),
        "padding_mode": (choice("zeros", "reflect", "replicate", "circular"), "zeros")}),
    "Linear": (nn.Linear, {"in_features": (_WIDE, INFER), "out_features": (_FEATURES, REQUIRED),
                           "bias": (boolean, True)}),
    "ReLU": (nn.ReLU, _INPLACE),
    "LeakyReLU": (nn.LeakyReLU, {"negative_slope": (number(-1e3, 1e3), 0.01), **_INPLACE}),
    "GELU": (nn.GELU, {"approximate": (choice("none", "tanh"), "none")}),
    "Sigmoid": (nn.Sigmoid, {}),
    "Tanh": (nn.Tanh, {}),
    "MaxPool2d": (nn.MaxPool2d, {**_POOL, "dilation": (_SIZE, 1), "ceil_mode": (boolean, False)}),
    "AvgPool2d": (nn.AvgPool2d, {**_POOL, "ceil_mode": (boolean, False),
                                 "count_include_pad": (boolean, True)}),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, {"output_size": (_SIZE, REQUIRED)}),
    "BatchNorm2d": (nn.BatchNorm2d, _NORM),
    "BatchNorm1d": (nn.BatchNorm1d, _NORM),
    "Dropout": (nn.Dropout, {"p": (number(0.0, 1.0), 0.5), **_INPLACE}),
    "Dropout2d": (nn.Dropout2d, {"p": (number(0.0, 1.0), 0.5), **_INPLACE}),
    "Flatten": (nn.Flatten, {"start_dim": (integer(-8, 8), 1), "end_dim": (integer(-8, 8), -1)}),
}
IMAGE_LAYERS = {"Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm2d", "Dropout2d"}
INFERRED = {"Conv2d": "in_channels", "Linear": "in_features", "BatchNorm2d": "num_features",
             "BatchNorm1d": "num_features"}


