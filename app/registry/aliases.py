"""Aliases and expiry: names that point at models, and the lifetime (SCV_MODEL_TTL_DAYS) aliased models are spared."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from app.errors import ServiceError
from app.registry import catalog
from app.registry.errors import AliasNotFound
from app.storage import layout

log = logging.getLogger(__name__)


class Aliases:
    """The registry's aliases and its expiry rule."""

    def apply_retention(self) -> None:
        """Remove a bucket lifecycle rule of earlier releases: it would expire aliased models too."""
        try:
            self.store.clear_expiry(bucket=self.bucket)
        except ServiceError as exc:
            log.debug("bucket lifecycle of %s not cleared: %s", self.bucket, exc.detail)

    def expires_at(self, created_at: str, *, aliased: bool = False) -> str | None:
        """When a model created at `created_at` expires; None when models are kept or an alias names it."""
        if self.ttl_days <= 0 or aliased:
            return None
        return catalog.iso(datetime.fromisoformat(created_at) + timedelta(days=self.ttl_days))

    def _fresh_since(self) -> str | None:
        """Models created before this have expired (unless aliased); None when models are kept."""
        return catalog.iso(datetime.now(UTC) - timedelta(days=self.ttl_days)) if self.ttl_days > 0 else None

    def put_alias(self, alias: str, version: str) -> dict:
        """Create the alias or move it to `version`; 404 naming the version when no such model is served."""
        layout.validate_version(alias, field="alias")
        layout.validate_version(version)
        with self.db.write() as conn:
            self._served(conn, version, lock=True)  # a delete of it waits, then sees the alias
            return catalog.put_alias(conn, alias, version, updated_at=layout.utcnow())

    def get_alias(self, alias: str) -> dict:
        """One alias record; 404 when unknown."""
        with self.db.read() as conn:
            record = catalog.get_alias(conn, layout.validate_version(alias, field="alias"))
        if record is None:
            raise AliasNotFound(alias)
        return record

    def list_aliases(self) -> list[dict]:
        """Every alias record, by name."""
        with self.db.read() as conn:
            return catalog.list_aliases(conn)

    def delete_alias(self, alias: str) -> None:
        """Remove an alias (the model stays); 404 when unknown."""
        with self.db.write() as conn:
            if not catalog.delete_alias(conn, layout.validate_version(alias, field="alias")):
                raise AliasNotFound(alias)
