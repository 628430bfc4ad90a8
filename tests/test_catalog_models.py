"""The model catalog's pages on real SQLite and PostgreSQL: order, filters, cursors, retention, index use."""

import random
from datetime import timedelta

import pytest
from sqlalchemy import insert, text

from app.db.cursors import encode_cursor
from app.db.engine import Database
from app.db.tables import Alias
from app.errors import InvalidInput
from app.registry import catalog, publishing
from app.registry.service import ModelRegistry
from tests.support.catalog import START, add_models, open_catalog
from tests.support.s3 import make_settings


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    database = open_catalog(request, tmp_path, request.param)
    yield database
    database.dispose()


def model_values(version: str, *, created_at: str, dataset: str = "mnist", accuracy: float | None = 0.5,
                 labels: dict | None = None, size: int = 100, sha256: str = "0" * 64) -> dict:
    """A `models` row as the queue inserts it (its metadata reduced to what the catalog reads)."""
    return publishing.model_values({"version": version, "dataset": dataset, "created_at": created_at,
                                 "size_bytes": size, "sha256": sha256, "metrics": {"test_accuracy": accuracy},
                                 "epochs": 1, "num_parameters": 10, "labels": labels or {}})


def stamp(seconds: float) -> str:
    return catalog.iso(START + timedelta(seconds=seconds))


def walk(db: Database, *, limit: int, sort: str = "created_at", between=None, **filters) -> list[str]:
    """Every page from the first, following cursors; `between(page_number)` runs between pages."""
    seen, after, number = [], None, 0
    while True:
        with db.read() as conn:
            rows, more = catalog.page_models(conn, sort=sort, limit=limit, after=after, **filters)
        assert len(rows) <= limit and (more or len(rows) < limit or rows)
        seen += [row.version for row in rows]
        if not more:
            return seen
        after, number = catalog.sort_key(rows[-1], sort), number + 1
        if between:
            between(number)


@pytest.fixture
def mixed(db):
    """23 models: ties on created_at and on accuracy, some without an accuracy, two datasets, labels."""
    rng = random.Random(7)
    rows = [model_values(f"m{i:02d}", created_at=stamp(i // 3), dataset="mnist" if i % 4 else "cifar10",
                         accuracy=None if i % 5 == 0 else round(rng.choice([0.5, 0.75, 0.9, rng.random()]), 3),
                         labels={"owner": "alice" if i % 2 else "bob", **({"exp": "sweep"} if i % 3 else {})})
            for i in range(23)]
    add_models(db, rows)
    return rows


def _by_created(rows):
    return [r["version"] for r in sorted(rows, key=lambda r: (r["created_at"], r["version"]), reverse=True)]


def _by_accuracy(rows):
    scored = sorted((r for r in rows if r["test_accuracy"] is not None),
                    key=lambda r: (r["test_accuracy"], r["version"]), reverse=True)
    unscored = sorted((r for r in rows if r["test_accuracy"] is None), key=lambda r: r["version"], reverse=True)
    return [r["version"] for r in scored + unscored]


@pytest.mark.parametrize("limit", [1, 4, 7, 23, 50])
def test_walking_the_pages_returns_every_model_once_in_order(db, mixed, limit):
    assert walk(db, limit=limit) == _by_created(mixed)
    assert walk(db, limit=limit, sort="test_accuracy") == _by_accuracy(mixed)


def test_filters_by_dataset_and_every_label(db, mixed):
    cifar = [r for r in mixed if r["dataset"] == "cifar10"]
    assert walk(db, limit=2, dataset="cifar10") == _by_created(cifar)
    assert walk(db, limit=3, dataset="cifar10", sort="test_accuracy") == _by_accuracy(cifar)
    both = [r for r in mixed if r["labels"] == {"owner": "alice", "exp": "sweep"}]
    assert walk(db, limit=2, labels=[("owner", "alice"), ("exp", "sweep")]) == _by_created(both) != []
    mnist_bob = [r for r in mixed if r["dataset"] == "mnist" and r["labels"]["owner"] == "bob"]
    assert walk(db, limit=5, dataset="mnist", labels=[("owner", "bob")], sort="test_accuracy") == (
        _by_accuracy(mnist_bob))
    assert walk(db, limit=5, labels=[("owner", "carol")]) == []
    assert walk(db, limit=5, labels=[("owner", "alice"), ("owner", "bob")]) == []  # all must match


@pytest.mark.parametrize("sort", ["created_at", "test_accuracy"])
def test_pages_stay_exact_while_models_are_added(db, mixed, sort):
    added = []

    def add(number: int) -> None:  # one model newer than everything, one older, one tying the boundary
        rows = [model_values(f"new{number}a", created_at=stamp(1000 + number), accuracy=0.99),
                model_values(f"new{number}b", created_at=stamp(-100 - number), accuracy=0.01),
                model_values(f"new{number}c", created_at=stamp(3), accuracy=0.5)]
        add_models(db, rows)
        added.extend(rows)

    seen = walk(db, limit=4, sort=sort, between=add)
    assert len(seen) == len(set(seen))  # never one twice
    assert {r["version"] for r in mixed} <= set(seen)  # every model present from the start
    order = _by_created if sort == "created_at" else _by_accuracy
    assert seen == [v for v in order(mixed + added) if v in seen]  # in order, whatever arrived


def test_retention_hides_old_models_unless_aliased(db, mixed):
    with db.write() as conn:
        conn.execute(insert(Alias).values(alias="keep", version="m00", updated_at=stamp(0)))
    fresh = [r for r in mixed if r["created_at"] >= stamp(4)]
    kept = [r for r in mixed if r["version"] == "m00"]
    assert walk(db, limit=3, fresh_since=stamp(4)) == _by_created(fresh + kept)
    assert walk(db, limit=3, fresh_since=stamp(4), sort="test_accuracy") == _by_accuracy(fresh + kept)
    with db.read() as conn:
        expired = catalog.expired_versions(conn, created_before=stamp(4))
    assert expired == [r["version"] for r in mixed if r["created_at"] < stamp(4) and r["version"] != "m00"]


def test_a_page_reads_the_index_in_order_without_sorting(tmp_path, request):
    """The page queries walk an index from the cursor: no sort of all rows, no scan of the table (SQLite)."""
    db = open_catalog(request, tmp_path, "sqlite")
    add_models(db, [model_values(f"v{i}", created_at=stamp(i), accuracy=i / 10) for i in range(10)])
    captured = []
    with db.read() as conn:
        conn.connection.set_trace_callback(captured.append)
        for sort in catalog.SORTS:
            for filters in ({}, {"dataset": "mnist"}):
                catalog.page_models(conn, sort=sort, limit=3, after=(stamp(5) if sort == "created_at" else 0.5,
                                                                       "v5"), **filters)
        conn.connection.set_trace_callback(None)
        for statement in [s for s in captured if s.lstrip().startswith("SELECT")]:
            plan = " | ".join(row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {statement}")))
            assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, (statement, plan)
    db.dispose()


def registry_on(db, s3, tmp_path, **env) -> ModelRegistry:
    settings = make_settings(s3, tmp_path, **env)
    from app.storage.s3 import Store  # noqa: PLC0415 - a client of the session's server

    return ModelRegistry(store=Store(endpoint=s3.endpoint, access_key=settings.minio_access_key,
                                     secret_key=settings.minio_secret_key.get_secret_value()),
                         settings=settings, db=db)


def test_registry_pages_carry_labels_aliases_and_opaque_cursors(db, mixed, s3, tmp_path):
    registry = registry_on(db, s3, tmp_path)
    with db.write() as conn:
        catalog.put_alias(conn, "best", "m01", updated_at=stamp(0))
        catalog.put_alias(conn, "prod", "m01", updated_at=stamp(0))
    seen, cursor = [], None
    while True:
        items, cursor = registry.page(sort="test_accuracy", limit=5, cursor=cursor)
        seen += items
        if cursor is None:
            break
    assert [i["version"] for i in seen] == _by_accuracy(mixed)
    by_version = {i["version"]: i for i in seen}
    assert by_version["m01"]["aliases"] == ["best", "prod"] and by_version["m02"]["aliases"] == []
    assert by_version["m01"]["labels"] == {"owner": "alice", "exp": "sweep"}
    assert set(by_version["m01"]) == {"version", "dataset", "created_at", "size_bytes", "sha256", "test_accuracy",
                                      "epochs", "num_parameters", "expires_at", "labels", "aliases"}

    _, cursor = registry.page(limit=5)
    tampered = cursor[:-3] + ("A" if cursor[-3] != "A" else "B") + cursor[-2:]
    handmade = encode_cursor("models/created_at", 5, "m01")  # a valid checksum around a wrong type
    for bad, sort in ((tampered, "created_at"), (cursor, "test_accuracy"), ("bm90LWEtY3Vyc29y", "created_at"),
                      (handmade, "created_at"), (encode_cursor("jobs", stamp(1), "m01"), "created_at")):
        with pytest.raises(InvalidInput) as caught:
            registry.page(limit=5, sort=sort, cursor=bad)
        assert caught.value.extra["field"] == "cursor"


def test_alias_and_deletion_bookkeeping(db, mixed):
    with db.write() as conn:
        assert catalog.put_alias(conn, "prod", "m01", updated_at=stamp(1))["version"] == "m01"
        catalog.put_alias(conn, "prod", "m02", updated_at=stamp(2))  # moved
        catalog.put_alias(conn, "best", "m02", updated_at=stamp(3))
    with db.read() as conn:
        assert catalog.get_alias(conn, "prod") == {"alias": "prod", "version": "m02", "updated_at": stamp(2)}
        assert catalog.get_alias(conn, "nope") is None
        assert [a["alias"] for a in catalog.list_aliases(conn)] == ["best", "prod"]
        assert catalog.aliases_of(conn, "m02") == ["best", "prod"] and catalog.aliases_of(conn, "m01") == []
        assert catalog.aliases_by_version(conn, ["m01", "m02"]) == {"m02": ["best", "prod"]}
    with db.write() as conn:
        assert catalog.delete_alias(conn, "best") and not catalog.delete_alias(conn, "best")
        assert publishing.remove_version(conn, "m03") and not publishing.remove_version(conn, "m03")
        for _ in range(2):  # asking twice records one deletion
            catalog.begin_deletion(conn, "m03", requested_at=stamp(9))
    with db.read() as conn:
        assert catalog.model_row(conn, "m03") is None and catalog.job_status(conn, "m03") is None
        assert catalog.pending_deletions(conn) == ["m03"] and catalog.deletion_pending(conn, "m03")
        assert walk(db, limit=50, labels=[("owner", "alice")]).count("m03") == 0
    with db.write() as conn:
        catalog.end_deletion(conn, "m03")
    with db.read() as conn:
        assert catalog.pending_deletions(conn) == []
        row = catalog.model_row(conn, "m04")
        assert row.meta["version"] == "m04" and row.labels == {"owner": "bob", "exp": "sweep"}
