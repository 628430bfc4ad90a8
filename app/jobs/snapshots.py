"""A training job's snapshots: the weights at initialisation and after every `snapshot_every`-th epoch and the last,
stored as model files while the job trains, fenced like its model, carried by its checkpoints, listed in its metadata.

Each is stored from the training thread before that epoch's checkpoint is taken, and every checkpoint carries the
entries stored so far: an attempt that resumes from a checkpoint finds the snapshots of the epochs before it stored
(bit-identical to what it would store itself), and stores the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.jobs.lease import Lease
from app.registry import publishing
from app.storage.s3 import Store

if TYPE_CHECKING:
    from torch import nn

    from models.checkpoint import Checkpoint


class Snapshots:
    """The training loop's `on_weights`: stores the model file of each kept epoch (0, every `every`-th and the
    run's last, none when `every` is 0) and remembers its entry (`epoch`, `size_bytes`, `sha256`, `metrics`: the
    epoch's history entry, null for epoch 0)."""

    def __init__(self, *, store: Store, bucket: str, version: str, every: int, lease: Lease,
                 model_file: Callable[[nn.Module], bytes], resume: Checkpoint | None):
        self.store, self.bucket, self.version, self.lease, self.model_file = store, bucket, version, lease, model_file
        self.every = every
        self.entries: list[dict[str, Any]] = list(resume.meta.get("snapshots", [])) if resume is not None else []

    def __call__(self, epoch: int, model: nn.Module, entry: dict[str, float] | None, last: bool) -> None:
        if self.every <= 0 or not (epoch % self.every == 0 or last):
            return
        blob = self.model_file(model)
        self.lease.renew_now()  # a worker that lost its job must not overwrite the snapshots of the one that holds it
        publishing.store_snapshot(self.store, bucket=self.bucket, version=self.version, epoch=epoch, blob=blob)
        self.entries = [e for e in self.entries if e["epoch"] != epoch] + [
            {"epoch": epoch, "size_bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
             "metrics": dict(entry) if entry is not None else None}]

    def carried_by(self, save: Callable[[Checkpoint], None]) -> Callable[[Checkpoint], None]:
        """`save` (the checkpoint writer) with each checkpoint carrying the entries of the snapshots stored so far."""
        def save_with_entries(checkpoint: Checkpoint) -> None:
            checkpoint.meta["snapshots"] = list(self.entries)
            save(checkpoint)
        return save_with_entries
