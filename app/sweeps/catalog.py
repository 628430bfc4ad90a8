"""The sweep tables' one gateway: sweeps, their trials and ASHA's decisions, read and written in the catalog."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, insert, or_, select, update

from app.db.cursors import decode_cursor, encode_cursor
from app.db.engine import Database
from app.db.tables import Sweep, SweepDecision, SweepTrial
from app.errors import NotFound
from app.storage import layout
from app.sweeps import asha


class SweepNotFound(NotFound):
    def __init__(self, sweep: str):
        super().__init__(f"no sweep with id {sweep!r}; list sweeps with GET /sweeps", sweep=sweep)


def sweep_of(row) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "spec": row.spec, "created_at": row.created_at,
            "cancelled_at": row.cancelled_at}


def add(db: Database, *, sweep: dict[str, Any], trials: Sequence[dict[str, Any]]) -> None:
    """Insert a sweep and its trials (`trial`, `version`, `config`, `seed`) in one transaction."""
    with db.write() as conn:
        conn.execute(insert(Sweep).values(**sweep))
        conn.execute(insert(SweepTrial), [{"sweep": sweep["id"], **trial} for trial in trials])


def get(db: Database, sweep: str) -> dict[str, Any]:
    """One sweep's row; 404 when unknown."""
    with db.read() as conn:
        row = conn.execute(select(Sweep).where(Sweep.id == sweep)).first()
    if row is None:
        raise SweepNotFound(sweep)
    return sweep_of(row)


def page(db: Database, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Sweeps newest first; the cursor continues after the last one, whatever was added since."""
    query = select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit + 1)
    if cursor:
        created_at, last = decode_cursor(cursor, sort="sweeps", kinds=((str,), (str,)))
        query = query.where(Sweep.created_at <= created_at, or_(
            Sweep.created_at < created_at, and_(Sweep.created_at == created_at, Sweep.id < last)))
    with db.read() as conn:
        rows = conn.execute(query).all()
    items = [sweep_of(row) for row in rows[:limit]]
    more = len(rows) > limit
    return items, encode_cursor("sweeps", items[-1]["created_at"], items[-1]["id"]) if more else None


def trials(db: Database, sweep: str) -> list[dict[str, Any]]:
    """The sweep's trials in order: `trial`, `version`, `config`, `seed`."""
    with db.read() as conn:
        rows = conn.execute(select(SweepTrial).where(SweepTrial.sweep == sweep).order_by(SweepTrial.trial)).all()
    return [{"trial": r.trial, "version": r.version, "config": r.config, "seed": r.seed} for r in rows]


def decisions(db: Database, sweep: str) -> list[dict[str, Any]]:
    """ASHA's decisions on the sweep's trials, in the order they were made."""
    with db.read() as conn:
        rows = conn.execute(select(SweepDecision).where(SweepDecision.sweep == sweep).order_by(SweepDecision.id))
        return [{"trial": r.trial, "rung": r.rung, "epoch": r.epoch, "metric": r.metric, "decision": r.decision}
                for r in rows]


def mark_cancelled(db: Database, sweep: str) -> None:
    """Record that the sweep was cancelled (the first cancel's time stays)."""
    with db.write() as conn:
        conn.execute(update(Sweep).where(Sweep.id == sweep, Sweep.cancelled_at.is_(None))
                     .values(cancelled_at=layout.utcnow()))


def trial_of(db: Database, version: str) -> tuple[dict[str, Any], int] | None:
    """The sweep (its row) and trial number the job `version` trains, or None when it is no sweep's trial."""
    with db.read() as conn:
        row = conn.execute(select(*Sweep.__table__.columns, SweepTrial.trial)
                           .join(SweepTrial, SweepTrial.sweep == Sweep.id).where(SweepTrial.version == version)).first()
    return (sweep_of(row), row.trial) if row else None


def decide(db: Database, *, sweep: str, trial: int, rung: int, epoch: int, metric: float, reduction_factor: int,
           higher_is_better: bool) -> tuple[str, int]:
    """ASHA's decision for a trial reaching a rung, made and stored in one transaction, so trials of the sweep that
    reach the rung at once are judged one after the other against each other; asked again (a resumed attempt), the
    stored decision. Returns the decision and how many trials had reached the rung with this one."""
    value = None if math.isnan(metric) else metric
    at_rung = (SweepDecision.sweep == sweep, SweepDecision.rung == rung)
    with db.write() as conn:
        # PostgreSQL: the sweep's row lock serialises its decisions; SQLite's write transaction holds the database
        conn.execute(select(Sweep.id).where(Sweep.id == sweep).with_for_update())
        reached = {row.trial: row for row in conn.execute(select(SweepDecision).where(*at_rung))}
        if trial in reached:
            return reached[trial].decision, sum(row.id <= reached[trial].id for row in reached.values())
        decision = asha.decide(trial=trial, metric=value, reached={t: r.metric for t, r in reached.items()},
                               reduction_factor=reduction_factor, higher_is_better=higher_is_better)
        conn.execute(insert(SweepDecision).values(sweep=sweep, rung=rung, trial=trial, epoch=epoch, metric=value,
                                                  decision=decision))
    return decision, len(reached) + 1
