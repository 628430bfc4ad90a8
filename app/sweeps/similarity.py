"""The seed-to-seed similarity of a sweep: for each configuration trained with two or more seeds, the same-layer CKA
between its replicates on the CKA set, the noise floor against which a cross-model CKA means anything."""

from __future__ import annotations

import json
import statistics
from itertools import combinations

from app.analysis.service import Analyses


def similarity(sweep: dict, analyses: Analyses) -> dict:
    """`{"configurations": [{"config", "seeds", "layers", "mean", "min", "max"}]}` over the succeeded trials; each
    pair's CKA is a stored analysis (computed once, on the CKA set, with the linear estimator)."""
    replicates: dict[str, list[dict]] = {}
    for trial in sweep["trials"]:
        if trial["status"] == "succeeded":
            replicates.setdefault(json.dumps(trial["config"], sort_keys=True), []).append(trial)
    configurations = []
    for trials in replicates.values():
        if len(trials) < 2:
            continue
        pairs = [analyses.cka(a["version"], against=b["version"]) for a, b in combinations(trials, 2)]
        per_layer = list(zip(*([row[i] for i, row in enumerate(pair["matrix"])] for pair in pairs), strict=True))
        configurations.append({"config": trials[0]["config"], "seeds": [trial["seed"] for trial in trials],
                               "layers": pairs[0]["layers"], "mean": [statistics.fmean(v) for v in per_layer],
                               "min": [min(v) for v in per_layer], "max": [max(v) for v in per_layer]})
    return {"configurations": configurations}
