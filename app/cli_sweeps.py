"""The `scv sweep FILE [--wait]` and `scv sweeps ls | show ID` commands, on the Python client."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from app.client import APIError, Client
from app.client.client import TERMINAL
from app.sweeps.record import SweepRecord


def submit(args, client: Client) -> int:
    """Submit the `POST /sweeps` body in FILE; print the sweep and its trials, and with --wait follow it to its end."""
    try:
        body = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        print(f"scv: cannot read the sweep file {args.file}: {exc}", file=sys.stderr)
        return 2
    record = client.create_sweep(body)
    print(f"created {record.id}: {len(record.trials)} trials, metric {record.metric}", file=sys.stderr)
    if not args.wait:
        _show_trials(record)
        return 0
    record = _follow(client, record)
    _show_trials(record)
    return 0 if record.status == "succeeded" and record.best is not None else 1


def ls(args, client: Client) -> int:
    """One line a sweep, newest first: id, name, status, trials ended of all, the best trial's metric."""
    for record in client.sweeps(limit=1000):
        ended = sum(t.status in TERMINAL for t in record.trials)
        best = "-" if record.best is None else _number(record.best.metric)
        print(f"{record.id:<32} {record.name or '-':<16} {record.status:<9} trials {ended:>3}/{len(record.trials):<3} "
              f"{record.metric} {best}")
    return 0


def show(args, client: Client) -> int:
    """The sweep record as tables: its request, trials, best trial, ASHA decisions and the seed-to-seed similarity."""
    record = client.sweep(args.sweep_id)
    for name, value in (("id", record.id), ("name", record.name or "-"), ("status", record.status),
                        ("strategy", record.strategy), ("metric", record.metric), ("seeds", record.seeds),
                        ("space", _compact(record.space)), ("early_stop", _compact(record.early_stop)),
                        ("created_at", record.created_at)):
        print(f"{name + ':':<12} {value}")
    print()
    _show_trials(record)
    if record.decisions:
        print("\nASHA decisions")
        _table(("trial", "rung", "epoch", "metric", "decision"),
               [(d.trial, d.rung, d.epoch, _number(d.metric), d.decision) for d in record.decisions])
    if len(record.seeds) > 1:
        _show_similarity(client, record.id)
    return 0


def add_parsers(sub, common, *, run: Callable) -> None:
    """`scv sweep` and `scv sweeps`; `run(args, settings)` opens the client and calls `args.sweep_command` with it."""
    sweep = sub.add_parser("sweep", parents=[common], help="submit a sweep to a running service")
    sweep.add_argument("file", help="JSON file with the POST /sweeps body (base, space, strategy, seeds, ...)")
    sweep.add_argument("--wait", action="store_true", help="follow the trials until every one has ended")
    sweep.set_defaults(run=run, sweep_command=submit)
    sweeps = sub.add_parser("sweeps", help="list and show sweeps").add_subparsers(dest="action", required=True)
    sweeps.add_parser("ls", parents=[common], help="list sweeps, newest first").set_defaults(run=run, sweep_command=ls)
    shown = sweeps.add_parser("show", parents=[common], help="a sweep's trials, best, decisions and similarity")
    shown.add_argument("sweep_id", metavar="ID")
    shown.set_defaults(run=run, sweep_command=show)


def _follow(client: Client, record: SweepRecord) -> SweepRecord:
    from tqdm import tqdm

    with tqdm(total=len(record.trials), unit="trial", desc=record.id) as bar:
        def update(record: SweepRecord) -> None:
            bar.update(sum(t.status in TERMINAL for t in record.trials) - bar.n)
            running = sum(t.status == "running" for t in record.trials)
            best = "-" if record.best is None else f"{_number(record.best.metric)} (trial {record.best.trial})"
            bar.set_postfix_str(f"{running} running, best {record.metric} {best}")

        record = client.wait_sweep(record.id, on_update=update)
    print(f"{record.id}: {record.status}", file=sys.stderr)
    return record


def _show_trials(record: SweepRecord) -> None:
    _table(("trial", "version", "config", "seed", "status", "metric", "epochs_run"),
           [(t.trial, t.version, _config(t.config), t.seed, t.status, _number(t.metric), t.epochs_run)
            for t in record.trials])
    if record.best is not None:
        best = record.best
        print(f"\nbest: trial {best.trial} {best.version} {_config(best.config)} seed {best.seed}: "
              f"{record.metric} {_number(best.metric)}")


def _show_similarity(client: Client, sweep_id: str) -> None:
    try:
        configurations = client.sweep_similarity(sweep_id).configurations
    except APIError as exc:  # the record is shown; say why the floor is not
        print(f"\nseed-to-seed similarity unavailable: error {exc.status}: {exc.detail}")
        return
    for c in configurations:
        print(f"\nseed-to-seed CKA of {_config(c.config)} (seeds {', '.join(map(str, c.seeds))})")
        _table(("layer", "mean", "min", "max"),
               [(layer, _number(mean), _number(lo), _number(hi))
                for layer, mean, lo, hi in zip(c.layers, c.mean, c.min, c.max, strict=True)])


def _table(headers: Sequence[str], rows: list[Sequence]) -> None:
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _config(config: dict) -> str:
    """The swept values as `field=value`; a layer list as its layers' types (the whole list is in the job's request)."""
    return " ".join(f"{name}=[{','.join(layer.get('type', '?') for layer in value)}]" if name == "layers"
                    else f"{name}={_compact(value)}" for name, value in config.items()) or "-"


def _compact(value) -> str:
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
