"""The model registry: page, describe, stream, delete, expire, alias and load the models in the catalog."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from app.db.engine import Database
from app.lru import LRU
from app.registry.aliases import Aliases
from app.registry.deletion import Deletion
from app.registry.files import Files
from app.registry.listing import Listing
from app.settings import Settings
from app.storage.cache import LocalCache
from app.storage.s3 import Store


class ModelRegistry(Listing, Aliases, Files, Deletion):
    """The catalog says which models exist; storage holds their bytes.

    A model row appears in the transaction that marks its job `succeeded`, after its objects are stored, so
    every listed model has its bytes. A delete removes the rows first and the objects after, recording the
    deletion until every object is gone: an interrupted delete is finished by `finish_deletions()`.
    """

    def __init__(self, *, store: Store, settings: Settings, db: Database, loaded_models: int = 4):
        self.store, self.bucket, self.db = store, settings.minio_model_bucket, db
        self.ttl_days, self._loaded = settings.model_ttl_days, LRU(loaded_models)  # version -> (sha, net, meta)
        self.cache = LocalCache.from_settings(settings)  # shared with the dataset cache, and with other processes
        self._filler = ThreadPoolExecutor(1, "scv-cache-fill")  # fills after downloads, one at a time
        self._suspect: set[str] = set()  # sha256 of models whose stored bytes a fill found to differ
        # where and how loaded networks run
        self.device, self.precision, self.cpu_bf16 = settings.device, settings.precision, settings.cpu_bf16
        self.max_bytes = settings.analysis_max_bytes  # activation memory of one predict request
        # Predictions and analyses run their networks on one thread, one at a time: the process holds one budget
        # of activations however many requests arrive (torch uses every core for one already), and each reuses
        # the buffers the one before freed (with glibc they stay in the arena of the thread that freed them).
        self._computer = ThreadPoolExecutor(1, "scv-compute")
