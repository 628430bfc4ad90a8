"""Domain errors: each carries its HTTP status; `app.api.problems` renders them as problem+json."""


class ServiceError(Exception):
    """Base of every error a client may see. `detail` is safe to show: it never holds a secret."""

    status: int = 500
    title: str = "Internal error"
    slug: str = "internal"

    def __init__(self, detail: str, **extra):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type(self) -> str:
        return f"https://scv.dev/problems/{self.slug}"


class NotFound(ServiceError):
    status, title, slug = 404, "Not found", "not-found"


class DatasetNotFound(NotFound):
    def __init__(self, name: str):
        super().__init__(f"unknown dataset {name!r}; known datasets: mnist, fashion_mnist, cifar10, svhn, emnist",
                         dataset=name)


class DatasetNotSeeded(NotFound):
    slug = "dataset-not-seeded"

    def __init__(self, name: str):
        super().__init__(f"dataset {name!r} is not seeded yet; run `scv datasets seed {name}` (or `scv datasets "
                         f"seed {name} --from-dir DIR` for files already downloaded)", dataset=name)


class Conflict(ServiceError):
    status, title, slug = 409, "Conflict", "conflict"


class InvalidInput(ServiceError):
    """A request that passed schema validation but makes no sense (bad layers, wrong image size)."""

    status, title, slug = 422, "Invalid input", "invalid-input"

    def __init__(self, detail: str, *, field: str | None = None, **extra):
        # Same shape as a schema validation 422: `errors` lists the offending fields.
        named = {"field": field, "errors": [{"field": field, "message": detail}]} if field else {}
        super().__init__(detail, **named, **extra)


class PayloadTooLarge(ServiceError):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class IntegrityError(ServiceError):
    """Stored bytes do not match their recorded checksum or format; refused, never loaded."""

    status, title, slug = 502, "Stored object failed verification", "integrity"


class Unavailable(ServiceError):
    """A dependency (storage, the catalog database) did not answer; the client retries after `retry_after_s`."""

    status, title, slug = 503, "Service unavailable", "unavailable"
    retry_after_s = 5


class StorageUnavailable(Unavailable):
    title, slug = "Storage unavailable", "storage-unavailable"


class DatabaseUnavailable(Unavailable):
    title, slug = "Catalog database unavailable", "database-unavailable"


class NotReady(Unavailable):
    """/readyz: a dependency did not answer; says which (`storage` or `database`), never where it is."""

    def __init__(self, dependency: str):
        super().__init__(f"{dependency} did not answer; see the service's log", dependency=dependency)


class ObjectMissing(NotFound):
    """A storage key that does not exist; callers usually turn it into a more specific NotFound."""


class Accepted(Exception):
    """Not an error: the answer is being computed elsewhere (an analysis job); 202 with `Location` (the same URL: ask
    again there), `Retry-After` and `body` (what is known of the work so far)."""

    def __init__(self, body: dict, *, retry_after_s: int):
        super().__init__(body.get("detail", "accepted"))
        self.body, self.retry_after_s = body, retry_after_s
