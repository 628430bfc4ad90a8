"""Dashboard pages for sweeps: the list, one sweep (trials, metric against each parameter, overlaid curves, ASHA's
rungs and decisions, seed-to-seed similarity, cancel, live while it runs) and the seed floor of the compare page."""

import json
import statistics
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from app.api.deps import AnalysesDep, JobsDep, RegistryDep, SweepsDep
from app.jobs.queue import TERMINAL
from app.sweeps.similarity import similarity
from app.ui.jobs import POLL_STOP
from app.ui.rendering import PageRoute, is_htmx, render

router = APIRouter(route_class=PageRoute)  # under /ui, each asking for the session first (app/ui/__init__.py)
PAGE_SIZE = 25


@router.get("/sweeps")
def sweeps_page(request: Request, sweeps: SweepsDep,
                cursor: Annotated[str | None, Query(max_length=1024)] = None) -> Response:
    """Sweeps, newest first, a page at a time: status, trials ended of all, the best trial's metric."""
    items, after = sweeps.page(limit=PAGE_SIZE, cursor=cursor)
    rows = [{**sweep, "ended": sum(t["status"] in TERMINAL for t in sweep["trials"])} for sweep in items]
    return render(request, "sweeps.html", items=rows, next=after)


@router.get("/sweeps/{sweep_id}")
def sweep_page(request: Request, sweep_id: str, sweeps: SweepsDep, jobs: JobsDep) -> Response:
    """One sweep; htmx re-fetches its live part every few seconds until every trial has ended (then 286)."""
    sweep = sweeps.get(sweep_id)
    context = live_context(sweep, histories(jobs, sweep_id))
    if is_htmx(request):
        status = 200 if context["live"] else POLL_STOP
        return render(request, "_sweep_live.html", status_code=status, oob=True, **context)
    return render(request, "sweep.html", **context)


@router.post("/sweeps/{sweep_id}/cancel")
async def cancel_sweep(sweep_id: str, sweeps: SweepsDep) -> Response:
    """Cancel the sweep's unfinished trials, as `DELETE /sweeps/{id}` does."""
    await run_in_threadpool(sweeps.cancel, sweep_id)
    return RedirectResponse(f"/ui/sweeps/{sweep_id}", status_code=303)


@router.get("/sweeps/{sweep_id}/similarity")
def seed_similarity(request: Request, sweep_id: str, sweeps: SweepsDep, analyses: AnalysesDep) -> Response:
    """Per configuration with two or more seeds, the same-layer CKA between its replicates (mean, min, max)."""
    sweep = sweeps.get(sweep_id)
    return render(request, "_sweep_similarity.html", sweep=sweep, configurations=replicated(sweep, analyses))


@router.get("/sweeps/{sweep_id}/floor")
def seed_floor(request: Request, sweep_id: str, sweeps: SweepsDep, analyses: AnalysesDep, registry: RegistryDep,
               v: Annotated[list[str], Query(min_length=2, max_length=2)]) -> Response:
    """The compare page's seed floor: per layer, two trials' cross-model CKA beside one replicated configuration's
    seed-to-seed mean and min, so a difference can be judged against seed noise."""
    sweep = sweeps.get(sweep_id)
    a, b = (registry.resolve(name, field="v") for name in v)
    configurations = replicated(sweep, analyses)
    if not configurations:
        return render(request, "_sweep_floor.html", sweep=sweep, floor=None, rows=[])
    floor = floor_configuration(sweep, configurations, versions=(a, b))
    cross = analyses.cka(a, against=b)
    columns = cross["other_layers"]  # a layer both networks have (by name) is compared with itself
    same = {name: row[columns.index(name)] for name, row in zip(cross["layers"], cross["matrix"], strict=True)
            if name in columns}
    rows = [{"layer": layer, "cka": same.get(layer), "mean": mean, "min": low,
             "within": None if same.get(layer) is None else same[layer] >= low}
            for layer, mean, low in zip(floor["layers"], floor["mean"], floor["min"], strict=True)]
    return render(request, "_sweep_floor.html", sweep=sweep, floor=floor, rows=rows, a=a, b=b)


def replicated(sweep: dict, analyses) -> list[dict]:
    """GET /sweeps/{id}/similarity's configurations, each with its values as the trials table shows them."""
    return [{**c, "shown": {key: shown(value) for key, value in c["config"].items()}}
            for c in similarity(sweep, analyses)["configurations"]]


def floor_configuration(sweep: dict, configurations: list[dict], *, versions: tuple[str, str]) -> dict:
    """The replicated configuration whose floor applies: the first model's own, else the second's, else the first
    one listed."""
    config_of = {trial["version"]: trial["config"] for trial in sweep["trials"]}
    for version in versions:
        for configuration in configurations:
            if configuration["config"] == config_of.get(version):
                return configuration
    return configurations[0]


def histories(jobs, sweep_id: str) -> dict[str, list[dict]]:
    """Each trial's per-epoch history by version, from the sweep's jobs (found by their `sweep` label)."""
    found, cursor = {}, None
    while True:
        items, cursor = jobs.page(labels=[("sweep", sweep_id)], limit=1000, cursor=cursor)
        found.update((job["version"], job["history"]) for job in items)
        if cursor is None:
            return found


def live_context(sweep: dict, history: dict[str, list[dict]]) -> dict[str, Any]:
    """What the sweep's live part shows: trials, their parameters, the rungs, and the charts' data."""
    parameters = [parameter(name, values) for name, values in sweep["space"].items()]
    metric = sweep["metric"]
    trials = [{**trial, "shown": {p["name"]: shown(trial["config"].get(p["name"])) for p in parameters}}
              for trial in sweep["trials"]]
    ended = sum(trial["status"] in TERMINAL for trial in trials)  # a cancelled sweep's trials may still be ending
    charts = {"metric": metric, "status": sweep["status"],
              "parameters": [p for p in parameters if p["numeric"]],
              "trials": [{"trial": t["trial"], "config": t["config"], "metric": t["metric"],
                          "stopped": bool(t["stopped_early"]),
                          "curve": [[h["epoch"], h.get(metric)] for h in history.get(t["version"], [])]}
                         for t in trials]}
    epochs = sorted({epoch for trial in charts["trials"] for epoch, _ in trial["curve"]})
    return {"sweep": sweep, "trials": trials, "parameters": parameters, "ended": ended, "charts": charts,
            "live": sweep["status"] == "running" or ended < len(trials),
            "epochs": epochs, "curves": [{"trial": t["trial"], "by_epoch": dict(t["curve"])} for t in charts["trials"]],
            "categorical": [categories(p["name"], trials, metric) for p in parameters if not p["numeric"]],
            "rungs": rungs(sweep["decisions"])}


def parameter(name: str, values: list | dict) -> dict[str, Any]:
    """A swept field: numeric (a range, or a list of numbers) gets a scatter, log where the range asked for it."""
    numbers = isinstance(values, dict) or all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return {"name": name, "numeric": numbers, "log": isinstance(values, dict) and bool(values.get("log"))}


def shown(value: Any) -> str:
    """A configuration value as a table cell: numbers to 4 figures, layer lists by their layer types."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(layer, dict) for layer in value):
        return " → ".join(str(layer.get("type")) for layer in value)
    return value if isinstance(value, str) else json.dumps(value)


def categories(name: str, trials: list[dict], metric: str) -> dict[str, Any]:
    """A categorical parameter's values with their trials' metric: count, mean, best."""
    by_value: dict[str, list[float]] = {}
    for trial in trials:
        by_value.setdefault(trial["shown"][name], [])
        if trial["metric"] is not None:
            by_value[trial["shown"][name]].append(trial["metric"])
    pick = min if metric.endswith("_loss") else max
    return {"name": name, "values": [
        {"value": value, "trials": sum(t["shown"][name] == value for t in trials), "measured": len(scores),
         "mean": statistics.fmean(scores) if scores else None, "best": pick(scores) if scores else None}
        for value, scores in by_value.items()]}


def rungs(decisions: list[dict]) -> list[dict[str, Any]]:
    """ASHA's rungs: the epoch of each, the trials judged there, those that went on and those it stopped."""
    found: dict[int, dict[str, Any]] = {}
    for decision in decisions:
        rung = found.setdefault(decision["rung"], {"rung": decision["rung"], "epoch": decision["epoch"],
                                                   "continued": [], "stopped": []})
        rung["continued" if decision["decision"] == "continue" else "stopped"].append(decision["trial"])
    return [found[key] for key in sorted(found)]
