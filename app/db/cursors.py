"""Opaque page cursors: the sort they belong to and the last item's key, with a checksum against tampering."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from app.errors import InvalidInput

_CHECK = 8  # hex digits of sha256 over the payload: enough to catch an edited or truncated cursor


def encode_cursor(sort: str, *key) -> str:
    """A cursor continuing after `key` in the order named `sort`."""
    payload = json.dumps([sort, *key], separators=(",", ":"))
    check = hashlib.sha256(payload.encode()).hexdigest()[:_CHECK]
    return base64.urlsafe_b64encode(f"{check}{payload}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, sort: str) -> tuple:
    """The key a cursor of `sort` continues after; 422 naming `cursor` when it was altered or made for another sort."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        check, payload = text[:_CHECK], text[_CHECK:]
        values = json.loads(payload)
        if hashlib.sha256(payload.encode()).hexdigest()[:_CHECK] == check and values[0] == sort:
            return tuple(values[1:])
    except (ValueError, TypeError, IndexError, KeyError, binascii.Error, UnicodeDecodeError):
        pass
    raise InvalidInput("invalid cursor: pass the `next` value of the previous page unchanged, with the same sort",
                       field="cursor")
