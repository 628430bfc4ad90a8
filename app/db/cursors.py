"""Opaque page cursors: the sort they belong to and the last item's key, with a checksum against tampering."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence

from app.errors import InvalidInput

_CHECK = 8  # hex digits of sha256 over the payload: enough to catch an edited or truncated cursor


def encode_cursor(sort: str, *key) -> str:
    """A cursor continuing after `key` in the order named `sort`."""
    payload = json.dumps([sort, *key], separators=(",", ":"))
    check = hashlib.sha256(payload.encode()).hexdigest()[:_CHECK]
    return base64.urlsafe_b64encode(f"{check}{payload}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, sort: str, kinds: Sequence[tuple[type, ...]]) -> tuple:
    """The key a cursor of `sort` continues after, each part of one of its `kinds` (a checksum stops edits, not a
    cursor made by hand); 422 naming `cursor` when it was altered, made for another sort or holds other types."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        check, payload = text[:_CHECK], text[_CHECK:]
        name, *key = json.loads(payload)
        if (hashlib.sha256(payload.encode()).hexdigest()[:_CHECK] == check and name == sort and len(key) == len(kinds)
                and all(type(part) in kind for part, kind in zip(key, kinds, strict=True))):
            return tuple(key)
    except (ValueError, TypeError, IndexError, KeyError, binascii.Error, UnicodeDecodeError):
        pass
    raise InvalidInput("invalid cursor: pass the `next` value of the previous page unchanged, with the same sort",
                       field="cursor")
