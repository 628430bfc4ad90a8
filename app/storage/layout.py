"""The model bucket's key layout (SPEC §4) and the one place where a version ID becomes a key."""

import re
import secrets
from datetime import UTC, datetime

from app.errors import InvalidInput

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_VERSION = re.compile(VERSION_PATTERN)

MODEL_FILE, METADATA_FILE, JOB_FILE = "model.safetensors", "metadata.json", "job.json"
SNAPSHOTS = "snapshots/"  # `<version>/snapshots/<epoch>.safetensors`: the model's weights after that epoch
ANALYSES = "analyses/"  # `<version>/analyses/<key>.json`: a stored analysis result, keyed by what it depends on
# An analysis job's ID: `~` is outside the version pattern, so it can never be a training job's (a model's) version.
ANALYSIS_JOB = "analysis~"
_ANALYSIS_JOB = re.compile(r"^analysis~[0-9a-f]{64}$")


def validate_version(version: str, *, field: str = "version") -> str:
    """Return `version` if it is a safe ID, else raise InvalidInput naming `field` (a version, or an alias: it
    follows the same pattern); runs before any key is built."""
    if not is_valid_version(version):
        shown = repr(version[:40] + ("…" if len(version) > 40 else "")) if isinstance(version, str) else "?"
        raise InvalidInput(
            f"invalid {field} {shown}: use 1-128 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, without '..'", field=field)
    return version


def is_valid_version(version: str) -> bool:
    """True for a safe version ID (see validate_version)."""
    return isinstance(version, str) and bool(_VERSION.fullmatch(version)) and ".." not in version


def new_version(dataset: str) -> str:
    """A fresh, time-sortable version ID such as `mnist-20261129-142600-3fa2c1`."""
    return f"{dataset}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def key(version: str, name: str) -> str:
    """`<version>/<name>` for a validated version."""
    return f"{validate_version(version)}/{name}"


def prefix(version: str) -> str:
    """`<version>/`: every object of one version lives under it."""
    return f"{validate_version(version)}/"


def snapshot_key(version: str, epoch: int) -> str:
    """`<version>/snapshots/<epoch>.safetensors`: the model file of the weights kept after `epoch` (0: at init)."""
    return key(version, f"{SNAPSHOTS}{int(epoch)}.safetensors")


def snapshots_prefix(version: str) -> str:
    """`<version>/snapshots/`: every snapshot of one version."""
    return prefix(version) + SNAPSHOTS


def analysis_key(version: str, digest: str) -> str:
    """`<version>/analyses/<digest>.json`: the stored result of an analysis of the model `version`."""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"an analysis key is a sha256 hex digest, got {digest!r}")
    return key(version, f"{ANALYSES}{digest}.json")


def is_analysis_job(job_id: str) -> bool:
    """True for the ID of an analysis job (`analysis~<sha256 of the analysis>`), never a model's version."""
    return bool(_ANALYSIS_JOB.fullmatch(job_id))


def validate_job_id(job_id: str) -> str:
    """A training job's version or an analysis job's ID, else InvalidInput."""
    return job_id if is_analysis_job(job_id) else validate_version(job_id)


def utcnow() -> str:
    """The current time as ISO 8601 UTC, the format of every timestamp the service writes."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
