"""The model catalog's queries: pages of models, one model, aliases, and deletions in progress (`publishing` lists
and removes the models themselves).

Each function runs inside a transaction the caller opened (`Database.read()` / `write()`), so a caller can
combine several into one atomic step. Pages are keyset pages answered from the indexes in `app.db.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, Row, and_, delete, or_, select

from app.db.engine import dialect_insert, insert_absent
from app.db.tables import Alias, Deletion, Job, Label, Model

SORTS = ("created_at", "test_accuracy")
ACTIVE = frozenset({"queued", "running"})  # job statuses whose model may still appear
LISTED = (Model.version, Model.dataset, Model.created_at, Model.size_bytes, Model.sha256, Model.test_accuracy,
          Model.epochs, Model.num_parameters, Model.labels)


def iso(moment: datetime | str) -> str:
    """A timestamp as the catalog stores it (ISO 8601 UTC, milliseconds, `Z`): sortable as text."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- pages -----------------------------------------------------------------------------------------------------


def page_models(conn: Connection, *, dataset: str | None = None, labels: Sequence[tuple[str, str]] = (),
                sort: str = "created_at", limit: int = 50, after: tuple | None = None,
                fresh_since: str | None = None) -> tuple[list[Row], bool]:
    """Up to `limit` models after the key `after` = (value of `sort`, version), descending; and whether more follow.

    `fresh_since` hides models created before it unless an alias names them (retention). Models without a test
    accuracy come last in the accuracy order, by version.
    """
    where = [Model.dataset == dataset] if dataset is not None else []
    where += [select(Label.version).where(Label.version == Model.version, Label.key == key, Label.value == value)
              .exists() for key, value in labels]  # probed per model in page order: no sort of every match
    if fresh_since is not None:
        where.append(or_(Model.created_at >= fresh_since, Model.version.in_(select(Alias.version))))
    if sort == "created_at":
        rows = _page(conn, where, Model.created_at, after, limit + 1)
    else:
        # Two index ranges: SQLite sorts NULL lowest and PostgreSQL highest, so neither order is portable.
        rows = [] if after and after[0] is None else _page(
            conn, [*where, Model.test_accuracy.is_not(None)], Model.test_accuracy, after, limit + 1)
        if len(rows) <= limit:
            rest = after if after and after[0] is None else None
            rows += _page(conn, [*where, Model.test_accuracy.is_(None)], None, rest, limit + 1 - len(rows))
    return rows[:limit], len(rows) > limit


def _page(conn: Connection, where: list, column, after: tuple | None, count: int) -> list[Row]:
    order = [Model.version.desc()] if column is None else [column.desc(), Model.version.desc()]
    if after is not None:
        value, version = after
        if column is None:
            where = [*where, Model.version < version]
        else:  # (column, version) < (value, version), portably; `<=` first so the index is entered at `value`
            where = [*where, column <= value, or_(column < value, and_(column == value, Model.version < version))]
    return list(conn.execute(select(*LISTED).where(*where).order_by(*order).limit(count)))


def sort_key(item: dict | Row, sort: str) -> tuple:
    """The key a page continues after: the item's value of `sort`, then its version."""
    item = item if isinstance(item, dict) else item._mapping
    return item[sort], item["version"]


# -- one model -------------------------------------------------------------------------------------------------


def model_row(conn: Connection, version: str, *, lock: bool = False) -> Row | None:
    """One model's listing fields and its metadata (`meta`), or None; `lock` holds the row until the transaction
    ends."""
    query = select(*LISTED, Model.meta.label("meta")).where(Model.version == version)
    return conn.execute(query.with_for_update() if lock else query).first()


def job_status(conn: Connection, version: str) -> str | None:
    """The status of the version's training job, or None when it has no job row."""
    return conn.execute(select(Job.status).where(Job.version == version)).scalar()


def expired_versions(conn: Connection, *, created_before: str, limit: int = 100) -> list[str]:
    """Versions of models created before `created_before` that no alias names, oldest first."""
    return list(conn.execute(select(Model.version).where(
        Model.created_at < created_before, Model.version.not_in(select(Alias.version)))
        .order_by(Model.created_at, Model.version).limit(limit)).scalars())


# -- aliases ---------------------------------------------------------------------------------------------------


def put_alias(conn: Connection, alias: str, version: str, *, updated_at: str) -> dict[str, str]:
    """Create the alias or move it to `version`."""
    values = {"alias": alias, "version": version, "updated_at": updated_at}
    conn.execute(dialect_insert(conn, Alias).values(**values).on_conflict_do_update(
        index_elements=[Alias.alias], set_={"version": version, "updated_at": updated_at}))
    return values


def get_alias(conn: Connection, alias: str) -> dict[str, str] | None:
    """One alias record, or None."""
    row = conn.execute(select(Alias.alias, Alias.version, Alias.updated_at).where(Alias.alias == alias)).first()
    return dict(row._mapping) if row else None


def list_aliases(conn: Connection) -> list[dict[str, str]]:
    """Every alias record, by name."""
    rows = conn.execute(select(Alias.alias, Alias.version, Alias.updated_at).order_by(Alias.alias))
    return [dict(row._mapping) for row in rows]


def delete_alias(conn: Connection, alias: str) -> bool:
    """Remove an alias; True when it existed."""
    return conn.execute(delete(Alias).where(Alias.alias == alias)).rowcount > 0


def aliases_of(conn: Connection, version: str) -> list[str]:
    """The aliases naming `version`, by name."""
    return list(conn.execute(select(Alias.alias).where(Alias.version == version).order_by(Alias.alias)).scalars())


def aliases_by_version(conn: Connection, versions: Sequence[str]) -> dict[str, list[str]]:
    """The aliases naming each of `versions` (those named by none are absent)."""
    named: dict[str, list[str]] = {}
    if versions:
        for alias, version in conn.execute(select(Alias.alias, Alias.version)
                                           .where(Alias.version.in_(versions)).order_by(Alias.alias)):
            named.setdefault(version, []).append(alias)
    return named


# -- deletions in progress -------------------------------------------------------------------------------------


def begin_deletion(conn: Connection, version: str, *, requested_at: str) -> None:
    """Record that the objects under `<version>/` are to be removed (once, however often it is asked)."""
    insert_absent(conn, Deletion, {"version": version, "requested_at": requested_at})


def deletion_pending(conn: Connection, version: str) -> bool:
    """True while the objects of a deleted version are still being removed."""
    return conn.execute(select(Deletion.version).where(Deletion.version == version)).first() is not None


def pending_deletions(conn: Connection, *, limit: int = 100) -> list[str]:
    """Versions whose objects are still to be removed, oldest request first."""
    return list(conn.execute(select(Deletion.version).order_by(Deletion.requested_at, Deletion.version)
                             .limit(limit)).scalars())


def end_deletion(conn: Connection, version: str) -> None:
    """Forget a deletion whose objects are all gone."""
    conn.execute(delete(Deletion).where(Deletion.version == version))
