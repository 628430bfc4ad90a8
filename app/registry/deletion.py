"""Deleting models: the rows first, then the objects, the deletion recorded until every object is gone."""

from __future__ import annotations

import logging

from app.errors import Conflict
from app.registry import catalog, publishing
from app.registry.errors import ModelAliased, ModelNotFound
from app.storage import layout

log = logging.getLogger(__name__)


class Deletion:
    """The registry's deletions."""

    def delete(self, version: str) -> None:
        """Delete the model, its job record and every object under `<version>/`.

        409 while its job is queued or running, or while an alias names it. The rows go first, in one
        transaction that records the deletion; the objects after; an interrupted removal is finished by
        `finish_deletions()`, and the version (a checked one) is neither listed nor served meanwhile.
        """
        with self.db.write() as conn:
            catalog.model_row(conn, version, lock=True)  # an alias being put on it commits first, or waits
            if aliases := catalog.aliases_of(conn, version):
                raise ModelAliased(version, aliases)
            if (status := catalog.job_status(conn, version)) in catalog.ACTIVE:
                raise Conflict(f"the training job of {version!r} is {status}; cancel it first with "
                               f"DELETE /train/{version}", version=version, job=f"/train/{version}")
            if found := publishing.remove_version(conn, version) or catalog.deletion_pending(conn, version):
                catalog.begin_deletion(conn, version, requested_at=layout.utcnow())
        if not found:  # no rows: objects a rebuild has not imported, or leftovers, may still be removed
            if next(iter(self.store.list(bucket=self.bucket, prefix=layout.prefix(version))), None) is None:
                raise ModelNotFound(version)
            with self.db.write() as conn:
                if catalog.job_status(conn, version) is None:  # not submitted meanwhile
                    catalog.begin_deletion(conn, version, requested_at=layout.utcnow())
        self._loaded.pop(version)
        self._remove_objects(version)

    def _remove_objects(self, version: str) -> None:
        publishing.delete_version_objects(self.store, bucket=self.bucket, version=version)
        with self.db.write() as conn:
            catalog.end_deletion(conn, version)

    def finish_deletions(self) -> int:
        """Start the deletion of expired models and remove the objects of every deletion in progress (also
        ones another process began and did not finish); returns how many were finished. Idempotent."""
        if (fresh_since := self._fresh_since()) is not None:
            with self.db.read() as conn:
                due = catalog.expired_versions(conn, created_before=fresh_since)
            if due:
                with self.db.write() as conn:  # asked again: an alias may have been put on one meanwhile
                    for version in catalog.expired_versions(conn, created_before=fresh_since):
                        publishing.remove_version(conn, version)
                        catalog.begin_deletion(conn, version, requested_at=layout.utcnow())
                        log.info("model %s expired (SCV_MODEL_TTL_DAYS=%d); removing it", version, self.ttl_days)
        with self.db.read() as conn:
            pending = catalog.pending_deletions(conn)
        for version in pending:
            self._loaded.pop(version)
            self._remove_objects(version)
        return len(pending)
