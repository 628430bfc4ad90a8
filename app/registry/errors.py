"""What the registry refuses: a model or alias that is missing, expired, not stored yet or still named."""

from app.errors import Conflict, NotFound


class ModelNotFound(NotFound):
    def __init__(self, version: str, detail: str | None = None, **extra):
        super().__init__(detail or f"no model with version {version!r}; list models with GET /models",
                         version=version, **extra)


class ModelExpired(NotFound):
    slug = "model-expired"

    def __init__(self, version: str, expires_at: str):
        super().__init__(f"model {version!r} expired at {expires_at} (SCV_MODEL_TTL_DAYS); it is no longer "
                         "served and is being removed", version=version, expires_at=expires_at)


class ModelNotReady(Conflict):
    slug = "model-not-ready"

    def __init__(self, version: str, status: str):
        super().__init__(f"model {version!r} is not stored yet: its training job is {status}; follow it at "
                         f"/train/{version}", version=version, job_status=status, job=f"/train/{version}")


class SnapshotNotFound(NotFound):
    slug = "snapshot-not-found"

    def __init__(self, version: str, epoch: int, *, kept: list[int], every: int | None):
        if every is None:
            why = "it was stored without snapshots"
        else:
            which = f"epochs {', '.join(map(str, kept))}" if kept else "none"
            why = f"with snapshot_every={every} its job kept {which}"
        super().__init__(f"model {version!r} has no snapshot of epoch {epoch}: {why}; list them with "
                         f"GET /models/{version}/snapshots", version=version, epoch=epoch, snapshot_every=every,
                         kept=kept)


class AliasNotFound(NotFound):
    slug = "alias-not-found"

    def __init__(self, alias: str):
        super().__init__(f"no alias {alias!r}; list aliases with GET /aliases", alias=alias)


class ModelAliased(Conflict):
    slug = "model-aliased"

    def __init__(self, version: str, aliases: list[str]):
        named = ", ".join(repr(a) for a in aliases)
        super().__init__(f"model {version!r} is named by alias {named}; move or delete the alias first "
                         "(DELETE /aliases/{alias})", version=version, aliases=aliases)
