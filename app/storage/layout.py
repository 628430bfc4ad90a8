"""The model bucket's key layout (SPEC §4) and the one place where a version ID becomes a key."""

import re
import secrets
from datetime import UTC, datetime

from app.errors import InvalidInput

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_VERSION = re.compile(VERSION_PATTERN)

MODEL_FILE, METADATA_FILE, JOB_FILE = "model.safetensors", "metadata.json", "job.json"
SNAPSHOTS = "snapshots/"  # `<version>/snapshots/<epoch>.safetensors`: the model's weights after that epoch


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


def utcnow() -> str:
    """The current time as ISO 8601 UTC, the format of every timestamp the service writes."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
