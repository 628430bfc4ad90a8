"""A running job's checkpoints: stored under `<version>/checkpoints/` off the training thread, then recorded in the
catalog (fenced by the attempt); verified by sha256 before a new attempt resumes from one; removed when the job ends."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor

from app.errors import ServiceError, Unavailable
from app.jobs.queue import Claim, JobQueue, LeaseLost
from app.storage import layout
from app.storage.s3 import Store
from models.checkpoint import Checkpoint, CheckpointError

log = logging.getLogger(__name__)
FOLDER = "checkpoints/"


class Checkpoints:
    """Load, save and remove the checkpoints of jobs in one model bucket."""

    def __init__(self, *, store: Store, bucket: str, queue: JobQueue):
        self.store, self.bucket, self.queue = store, bucket, queue

    def load(self, version: str, *, fingerprint: str, setup: dict) -> tuple[Checkpoint | None, dict | None]:
        """The newest usable checkpoint and the job's `resumed_from` (None: never checkpointed). A checkpoint whose
        bytes fail their sha256, or that belongs to another request, is skipped for the one before; the note says so."""
        notes = []
        for entry in self.queue.checkpoints(version):
            where = f"the checkpoint at epoch {entry['epoch']} step {entry['step']}"
            try:
                blob = self.store.get_bytes(bucket=self.bucket, key=entry["key"])
                if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
                    raise CheckpointError("its bytes do not match their sha256")
                checkpoint = Checkpoint.from_bytes(blob)
                if checkpoint.meta.get("fingerprint") != fingerprint:
                    raise CheckpointError("it was made for another request or dataset")
            except Unavailable:
                raise  # storage is away: this attempt gives the job back rather than start over
            except (CheckpointError, ServiceError) as exc:
                reason = exc.detail if isinstance(exc, ServiceError) else str(exc)
                notes.append(f"{where} was not used: {reason}")
                log.warning("job %s: %s", version, notes[-1])
                continue
            resumed = {"epoch": checkpoint.epoch, "step": checkpoint.step,
                       "exact": checkpoint.meta.get("setup") == setup}
            if not resumed["exact"]:
                notes.append(f"resumed on {setup} from a checkpoint made on {checkpoint.meta.get('setup')}: the "
                             "weights are no longer bit-identical to an uninterrupted run")
            if notes:
                resumed["note"] = "; ".join(notes)
            return checkpoint, resumed
        if notes:
            return None, {"epoch": 1, "step": 0, "exact": True, "note": "; ".join(notes) + "; started over"}
        return None, None

    def discard(self, version: str) -> None:
        """Remove every checkpoint object of a job and its catalog row."""
        self.store.delete_prefix(bucket=self.bucket, prefix=layout.prefix(version) + FOLDER)
        self.queue.forget_checkpoints(version)

    def sweep(self) -> None:
        """Housekeeping: remove the checkpoints of jobs that ended however they ended (or were deleted)."""
        for version in self.queue.ended_checkpoints():
            self.discard(version)


class CheckpointWriter:
    """Takes checkpoints from the training thread and stores them from its own thread, newest first: a checkpoint
    still waiting when a newer one arrives is dropped. The catalog points at a checkpoint only once it is stored."""

    def __init__(self, checkpoints: Checkpoints, claim: Claim, fingerprint: str):
        self.checkpoints, self.claim, self.fingerprint = checkpoints, claim, fingerprint
        self._pool = ThreadPoolExecutor(1, "scv-checkpoints")
        self._waiting: Future | None = None
        self._lost = False  # another attempt holds the job: store nothing more

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(cancel_futures=True)  # the job is ending: a checkpoint not yet stored is not needed

    def __call__(self, checkpoint: Checkpoint) -> None:
        checkpoint.meta["fingerprint"] = self.fingerprint
        if self._waiting is not None:
            self._waiting.cancel()  # unless its store has begun: this newer one replaces it
        self._waiting = self._pool.submit(self._stored, checkpoint)

    def _stored(self, checkpoint: Checkpoint) -> None:
        if self._lost:
            return
        try:
            self._store(checkpoint)
        except LeaseLost:
            self._lost = True
        except ServiceError as exc:  # the next checkpoint tries again; the previous one stays valid
            log.warning("job %s: checkpoint at epoch %d step %d not stored: %s", self.claim.version,
                        checkpoint.epoch, checkpoint.step, exc.detail)
        except Exception:  # a future's exception is never shown: log it, as the thread before it did
            log.exception("job %s: checkpoint at epoch %d step %d failed", self.claim.version, checkpoint.epoch,
                          checkpoint.step)

    def _store(self, checkpoint: Checkpoint) -> None:
        store, bucket = self.checkpoints.store, self.checkpoints.bucket
        blob = checkpoint.to_bytes()
        name = f"{FOLDER}a{self.claim.attempt}-e{checkpoint.epoch}-s{checkpoint.step}.safetensors"
        key = layout.key(self.claim.version, name)
        store.put(bucket=bucket, key=key, data=blob)
        entry = {"key": key, "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob),
                 "epoch": checkpoint.epoch, "step": checkpoint.step, "attempt": self.claim.attempt}
        try:
            dropped = self.checkpoints.queue.record_checkpoint(self.claim, entry)
        except LeaseLost:
            store.delete(bucket=bucket, key=key)  # another attempt holds the job: leave its checkpoints alone
            raise
        if dropped and dropped["key"] != key:
            store.delete(bucket=bucket, key=dropped["key"])
