"""Layer specs: resolution, shape inference, human error messages, limits and hostile input."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import LIMITS, LayerSpecError, build_sequential, default_layers, resolve_layers

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


def shapes(net: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in net.state_dict().items()]


def error(specs: object, *, input_shape: tuple[int, int, int] = MNIST, num_classes: int = 10) -> LayerSpecError:
    with pytest.raises(LayerSpecError) as caught:
        resolve_layers(specs, input_shape=input_shape, num_classes=num_classes)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize(("input_shape", "num_classes"), [(MNIST, 10), (CIFAR, 10), (MNIST, 26)])
def test_default_layers_resolve_and_run(input_shape: tuple[int, int, int], num_classes: int) -> None:
    resolved = resolve_layers(None, input_shape=input_shape, num_classes=num_classes)
    assert [layer["type"] for layer in resolved] == [spec["type"] for spec in default_layers(input_shape, 10)]
    assert resolved[0]["in_channels"] == input_shape[0]
    assert resolved[-1] == {"type": "Linear", "in_features": 128, "out_features": num_classes, "bias": True}
    out = build_sequential(resolved)(torch.zeros(2, *input_shape))
    assert out.shape == (2, num_classes)


def test_resolved_layers_are_json_and_rebuild_identically() -> None:
    resolved = resolve_layers(None, input_shape=CIFAR, num_classes=10)
    again = json.loads(json.dumps(resolved))
    assert again == resolved
    assert resolve_layers(again, input_shape=CIFAR, num_classes=10) == resolved  # idempotent
    assert shapes(build_sequential(again)) == shapes(build_sequential(resolved))


def test_custom_stack_gets_flatten_and_final_linear() -> None:
    specs = [{"type": "Conv2d", "out_channels": 4, "kernel_size": [3, 5], "stride": 2}, {"type": "GELU"}]
    resolved = resolve_layers(specs, input_shape=MNIST, num_classes=7)
    assert [layer["type"] for layer in resolved] == ["Conv2d", "GELU", "Flatten", "Linear"]
    assert resolved[0]["kernel_size"] == [3, 5]
    assert resolved[-1]["in_features"] == 4 * 13 * 12 and resolved[-1]["out_features"] == 7


def test_linear_of_other_width_gets_a_final_linear_and_matching_one_is_kept() -> None:
    specs = [{"type": "Flatten"}, {"type": "Linear", "out_features": 32}]
    assert [layer["out_features"] for layer in resolve_layers(specs, input_shape=MNIST, num_classes=10)[1:]] == [32, 10]
    specs[-1]["out_features"] = 10
    assert len(resolve_layers(specs, input_shape=MNIST, num_classes=10)) == 2


def test_every_allowed_type_resolves() -> None:
    specs = [
        {"type": "Conv2d", "out_channels": 6, "kernel_size": 3, "padding": "same", "padding_mode": "reflect"},
        {"type": "BatchNorm2d", "momentum": None}, {"type": "LeakyReLU", "negative_slope": 0.2},
        {"type": "Dropout2d", "p": 0.1}, {"type": "MaxPool2d", "kernel_size": 2},
        {"type": "AvgPool2d", "kernel_size": 3, "stride": 1, "padding": 1}, {"type": "Tanh"},
        {"type": "AdaptiveAvgPool2d", "output_size": [2, 3]}, {"type": "Flatten"},
        {"type": "BatchNorm1d"}, {"type": "Sigmoid"}, {"type": "Dropout", "p": 0}, {"type": "ReLU", "inplace": True},
    ]
    resolved = resolve_layers(specs, input_shape=MNIST, num_classes=3)
    assert resolved[5]["stride"] == 1 and resolved[4]["stride"] == 2  # pooling stride made explicit
    assert resolved[9]["num_features"] == 36 and resolved[12]["inplace"] is False
    assert build_sequential(resolved)(torch.zeros(2, *MNIST)).shape == (2, 3)


@pytest.mark.parametrize(
    ("specs", "index", "words"),
    [
        ([{"type": "Conv2d", "out_channels": 8, "kernel_size": 3}, {"type": "Linear", "out_features": 4}], 1,
         "receives a 4-D tensor (N, 8, 26, 26); put a Flatten before it"),
        ([{"type": "Conv2d", "out_channels": 8, "kernel_size": 29}], 0, "kernel_size 29 is larger than the 28×28"),
        ([{"type": "ReLU"}, {"type": "Foo"}], 1, "(Foo): unknown layer type; allowed: Conv2d, Linear"),
        ([{"type": "ReLU"}, {"type": "Tanh"}, {"type": "Conv2d", "out_channels": 2, "kernel_size": 3, "foo": 1}],
         2, "(Conv2d): unknown argument 'foo'"),
        ([{"type": "Conv2d", "out_channels": 2000, "kernel_size": 3}], 0, "out_channels must be an integer in 1..1024"),
        ([{"type": "Conv2d", "out_channels": 2.0, "kernel_size": 3}], 0, "out_channels must be an integer"),
        ([{"type": "Conv2d", "out_channels": True, "kernel_size": 3}], 0, "out_channels must be an integer"),
        ([{"type": "Conv2d", "kernel_size": 3}], 0, "out_channels is required"),
        ([{"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "in_channels": 3}], 0, "in_channels is 3"),
        ([{"type": "Flatten"}, {"type": "Conv2d", "out_channels": 4, "kernel_size": 3}], 1, "before the Flatten"),
        ([{"type": "MaxPool2d", "kernel_size": 2}] * 6, 4, "larger than the 1×1 input"),
        ([{"type": "AvgPool2d", "kernel_size": 2, "padding": 2}], 0, "at most half of kernel_size"),
        ([{"type": "Dropout", "p": 1.5}], 0, "p must be a number in 0.0..1.0"),
        ([{"type": "Flatten", "start_dim": 0}], 0, "dimension 0 is the batch"),
        ([{"type": "GELU", "approximate": "fast"}], 0, "approximate must be one of none, tanh"),
        ([{"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "groups": 3}], 0, "groups 3 must divide"),
        (["Conv2d"], 0, 'must be an object like {"type"'),
    ],
)
def test_errors_name_the_layer_and_the_fix(specs: list, index: int, words: str) -> None:
    exc = error(specs)
    assert exc.index == index
    assert str(exc).startswith(f"layers[{index}]")
    assert words in str(exc)


def test_limits() -> None:
    wide = [{"type": "Flatten"}, {"type": "Linear", "out_features": 16384}, {"type": "Linear", "out_features": 4096}]
    too_many = error(wide)
    assert too_many.index is None and "20,000,000" in str(too_many) and "parameters" in str(too_many)
    assert "at most 64" in str(error([{"type": "ReLU"}] * (LIMITS.max_layers + 1)))
    assert "1..16384" in str(error([{"type": "Flatten"}, {"type": "Linear", "out_features": 16385}]))
    big = [{"type": "Conv2d", "out_channels": 1024, "kernel_size": 1, "padding": 40}]
    assert "values per image" in error(big).reason


HOSTILE = [
    "layers", {"type": "Conv2d"}, [None], [[]], [{}], [{"type": "__import__"}], [{"type": "Module"}],
    [{"type": "Sequential"}], [{"type": ["Linear"]}], [{"type": "Linear", "out_features": "10"}],
    [{"type": "Linear", "out_features": {"a": 1}}], [{"type": "Linear", "out_features": 10**100}],
    [{"type": "Linear", "out_features": 10**5000}],
    [{"type": "Conv2d", "out_channels": 4, "kernel_size": [3, 3, 3]}],
    [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "padding": 10**30}],
    [{"type": "LeakyReLU", "negative_slope": float("nan")}], [{"type": "Dropout", "p": 10**400}],
    [{"type": "BatchNorm2d", "eps": -1}], [{"type": "Flatten", "start_dim": 5}],
    [{"type": "MaxPool2d", "kernel_size": 2, "return_indices": True}], [{"type": "Linear", 3: 4}],
]


@pytest.mark.parametrize("specs", HOSTILE)
def test_hostile_specs_raise_layer_spec_error_only(specs: object) -> None:
    error(specs)


@pytest.mark.parametrize("resolved", [[{"type": "Linear", "out_features": 4}], [{"type": "eval"}], "x"])
def test_build_sequential_rechecks(resolved: object) -> None:
    with pytest.raises(LayerSpecError):
        build_sequential(resolved)  # type: ignore[arg-type]


def _spec(kind: str, small: st.DrawFn) -> dict:
    ints = st.integers(min_value=-1, max_value=5)
    sizes = st.one_of(ints, st.lists(ints, min_size=2, max_size=2))
    extra = {
        "Conv2d": {"out_channels": st.integers(1, 8), "kernel_size": sizes, "stride": sizes, "padding": sizes,
                   "dilation": sizes, "groups": st.integers(1, 2),
                   "padding_mode": st.sampled_from(["zeros", "circular"])},
        "Linear": {"out_features": st.integers(1, 16)},
        "MaxPool2d": {"kernel_size": sizes, "stride": sizes, "padding": sizes, "ceil_mode": st.booleans()},
        "AvgPool2d": {"kernel_size": sizes, "padding": sizes, "count_include_pad": st.booleans()},
        "AdaptiveAvgPool2d": {"output_size": sizes},
        "Dropout": {"p": st.floats(-0.5, 1.5)},
        "Flatten": {"start_dim": ints, "end_dim": ints},
        "LeakyReLU": {"negative_slope": st.floats(-1, 1)},
    }.get(kind, {})
    args = {name: small(strategy) for name, strategy in extra.items() if small(st.booleans())}
    return {"type": kind, **args}


@st.composite
def stacks(draw: st.DrawFn) -> tuple[list[dict], tuple[int, int, int]]:
    kinds = ["Conv2d", "Linear", "ReLU", "LeakyReLU", "GELU", "Sigmoid", "Tanh", "MaxPool2d", "AvgPool2d",
             "AdaptiveAvgPool2d", "BatchNorm2d", "BatchNorm1d", "Dropout", "Dropout2d", "Flatten"]
    chosen = draw(st.lists(st.sampled_from(kinds), max_size=6))
    shape = draw(st.sampled_from([(1, 8, 8), (3, 6, 5), (2, 3, 3)]))
    return [_spec(kind, draw) for kind in chosen], shape


@settings(max_examples=100, deadline=None)
@given(stacks(), st.integers(1, 12))
def test_random_stacks_build_or_explain(stack: tuple[list[dict], tuple[int, int, int]], num_classes: int) -> None:
    specs, shape = stack
    try:
        resolved = resolve_layers(specs, input_shape=shape, num_classes=num_classes)
    except LayerSpecError:
        return
    net = build_sequential(json.loads(json.dumps(resolved)))
    assert net(torch.zeros(2, *shape)).shape == (2, num_classes)
    assert sum(p.numel() for p in net.parameters()) <= LIMITS.max_parameters
    assert resolve_layers(resolved, input_shape=shape, num_classes=num_classes) == resolved
