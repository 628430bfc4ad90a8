"""Listing models: pages of the catalog, aliases resolved to versions, one model's record and metadata."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Row

from app.db.cursors import decode_cursor, encode_cursor
from app.registry import catalog
from app.registry.errors import ModelExpired, ModelNotFound, ModelNotReady, SnapshotNotFound
from app.storage import layout

# What a page's cursor may hold after its sort name: the sort value, then the version.
CURSOR_KEYS = {"created_at": (str,), "test_accuracy": (float, int, type(None))}


class Listing:
    """The registry's reads of the catalog."""

    def page(self, *, dataset: str | None = None, labels: dict[str, str] | Sequence[tuple[str, str]] = (),
             sort: str = "created_at", limit: int = 50, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """Unexpired models, highest `sort` first, and the cursor of the next page (None on the last); every
        label (key, value) must match."""
        scope = f"models/{sort}"
        after = decode_cursor(cursor, sort=scope, kinds=(CURSOR_KEYS[sort], (str,))) if cursor else None
        pairs = sorted(labels.items() if isinstance(labels, dict) else labels)
        with self.db.read() as conn:
            rows, more = catalog.page_models(conn, dataset=dataset, labels=pairs,
                                             sort=sort, limit=limit, after=after, fresh_since=self._fresh_since())
            named = catalog.aliases_by_version(conn, [row.version for row in rows])
        items = [self._item(row._mapping, named.get(row.version, [])) for row in rows]
        return items, encode_cursor(scope, *catalog.sort_key(items[-1], sort)) if more else None

    def _item(self, row, aliases: list[str]) -> dict:
        fields = {name: row[name] for name in (c.key for c in catalog.LISTED)}
        return {**fields, "aliases": aliases, "expires_at": self.expires_at(row["created_at"], aliased=bool(aliases))}

    def resolve(self, name: str, *, field: str = "version") -> str:
        """The version `name` stands for: itself, or for `@alias` the version the alias names now."""
        if not name.startswith("@"):
            return layout.validate_version(name, field=field)
        return self.get_alias(layout.validate_version(name[1:], field=field))["version"]

    def get(self, version: str) -> dict:
        """The listing item of one served model (a version `resolve()` checked) plus its metadata (`meta`) and its
        file's object `key`; 404 unknown or expired, 409 while it trains."""
        with self.db.read() as conn:
            row, aliases = self._served(conn, version)
        return {**self._item(row._mapping, aliases), "meta": row.meta, "key": layout.key(version, layout.MODEL_FILE)}

    def _served(self, conn, version: str, *, lock: bool = False) -> tuple[Row, list[str]]:
        """The model's row (`lock`: held until the transaction ends) and the aliases naming it; 404 unknown or
        expired, 409 while it trains."""
        if (row := catalog.model_row(conn, version, lock=lock)) is None:
            if (status := catalog.job_status(conn, version)) is None:
                raise ModelNotFound(version)
            if status in catalog.ACTIVE:
                raise ModelNotReady(version, status)
            raise ModelNotFound(version, f"model {version!r} does not exist: its training job ended {status} "
                                f"without one (see /train/{version})", job=f"/train/{version}")
        aliases = catalog.aliases_of(conn, version)
        if not aliases and self.ttl_days > 0 and row.created_at < self._fresh_since():
            raise ModelExpired(version, self.expires_at(row.created_at))
        return row, aliases

    def metadata(self, version: str) -> dict:
        """The full metadata of a served model (from the catalog), plus `expires_at`."""
        model = self.get(version)
        return {**model["meta"], "expires_at": model["expires_at"]}

    def snapshots(self, version: str) -> list[dict]:
        """A served model's snapshots, epoch 0 first: `epoch`, `size_bytes`, `sha256`, `metrics` (that epoch's history
        entry; null for epoch 0), as its metadata lists them."""
        return sorted(self.get(version)["meta"].get("snapshots") or [], key=lambda entry: entry["epoch"])

    def snapshot(self, version: str, epoch: int) -> dict:
        """A served model's snapshot of `epoch` as a file to send: `get()`'s item with the snapshot's sha256, size
        and object key; 404 naming the epochs kept when `epoch` is not one."""
        model = self.get(version)
        entries = sorted(model["meta"].get("snapshots") or [], key=lambda entry: entry["epoch"])
        for entry in entries:
            if entry["epoch"] == epoch:
                return {**model, "sha256": entry["sha256"], "size_bytes": entry["size_bytes"], "epoch": epoch,
                        "key": layout.snapshot_key(version, epoch)}
        every = (model["meta"].get("request") or {}).get("snapshot_every")
        raise SnapshotNotFound(version, epoch, kept=[entry["epoch"] for entry in entries], every=every)
