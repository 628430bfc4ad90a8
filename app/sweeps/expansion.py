"""A sweep's expansion into configurations: every combination of the space (grid) or `trials` seeded draws (random).

Pure and reproducible: the random strategy draws only through `random.Random(seed).random()`, whose sequence Python
keeps the same across versions, so a recorded seed gives the same configurations again.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from app.errors import InvalidInput

FIELDS = ("learning_rate", "batch_size", "weight_decay", "momentum", "optimizer", "epochs", "label_smoothing",
          "augment", "schedule", "layers")
NUMBERS = ("learning_rate", "batch_size", "weight_decay", "momentum", "epochs", "label_smoothing")
WHOLE = ("batch_size", "epochs")  # a range of these draws whole numbers
MAX_JOBS = 1000  # trials of one sweep (configurations × seeds)


def check_space(space: dict[str, Any]) -> dict[str, list | dict]:
    """The space with each dimension checked: a non-empty list of values, or (for a number) {min, max, log}; an
    InvalidInput names the field (`space.<field>`) and says what is wrong."""
    checked = {}
    for name, values in space.items():
        field = f"space.{name}"
        if name not in FIELDS:
            raise InvalidInput(f"{name!r} cannot be swept; use one of {', '.join(FIELDS)}", field=field)
        if isinstance(values, list):
            if not values:
                raise InvalidInput(f"{field} lists no values: give at least one", field=field)
            if name == "layers" and not all(isinstance(v, list) for v in values):
                raise InvalidInput("each value of space.layers is a whole layer list", field=field)
            checked[name] = values
        elif isinstance(values, dict) and name in NUMBERS:
            checked[name] = _range(field, values)
        else:
            kind = "a list of values, or {\"min\", \"max\", \"log\"}" if name in NUMBERS else "a list of values"
            raise InvalidInput(f"{field} must be {kind}", field=field)
    return checked


def _range(field: str, values: dict) -> dict:
    if set(values) - {"min", "max", "log"} or not {"min", "max"} <= set(values):
        raise InvalidInput(f"{field}: a range is {{\"min\", \"max\", \"log\"}} (log optional)", field=field)
    low, high, log = values["min"], values["max"], values.get("log", False)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or \
            not isinstance(log, bool):
        raise InvalidInput(f"{field}: min and max are numbers, log true or false", field=field)
    if low > high or (log and low <= 0):
        raise InvalidInput(f"{field}: needs min <= max{', both above 0 for a log range' if log else ''}", field=field)
    return {"min": low, "max": high, "log": log}


def grid(space: dict[str, list | dict]) -> list[dict[str, Any]]:
    """Every combination, the first field varying slowest, each field's values in the order given."""
    for name, values in space.items():
        if isinstance(values, dict):
            raise InvalidInput(f"space.{name} is a range: a grid needs listed values (or use strategy random)",
                               field=f"space.{name}")
    return [dict(zip(space, combo, strict=True)) for combo in itertools.product(*space.values())]


def draw(space: dict[str, list | dict], *, trials: int, seed: int) -> list[dict[str, Any]]:
    """`trials` configurations drawn with `seed`: a listed value uniformly, a range uniformly (log-uniformly with
    `log`), rounded for whole-number fields."""
    rng = random.Random(seed)
    configs = []
    for _ in range(trials):
        config = {}
        for name, values in space.items():
            u = rng.random()
            if isinstance(values, list):
                config[name] = values[min(int(u * len(values)), len(values) - 1)]
                continue
            low, high = values["min"], values["max"]
            value = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if values["log"] else (
                low + u * (high - low))
            config[name] = round(value) if name in WHOLE else value
        configs.append(config)
    return configs


def expand(space: dict[str, Any], *, strategy: str, trials: int | None, seeds: list[int],
           random_seed: int | None) -> list[tuple[dict[str, Any], int]]:
    """The sweep's trials in order, as (configuration, seed): each configuration once per seed, seeds innermost."""
    checked = check_space(space)
    if strategy == "grid" and trials is not None:
        raise InvalidInput("trials applies to the random strategy; a grid trains every combination", field="trials")
    if strategy == "random" and trials is None:
        raise InvalidInput("the random strategy needs trials: how many configurations to draw", field="trials")
    count = trials if strategy == "random" else math.prod(len(v) for v in checked.values() if isinstance(v, list))
    if count * len(seeds) > MAX_JOBS:  # counted before anything is built: a grid's product can be astronomical
        raise InvalidInput(f"the sweep would train {count} configurations × {len(seeds)} seeds = "
                           f"{count * len(seeds)} jobs; at most {MAX_JOBS}", field="space")
    configs = grid(checked) if strategy == "grid" else draw(checked, trials=trials, seed=random_seed or 0)
    return [(config, seed) for config in configs for seed in seeds]
