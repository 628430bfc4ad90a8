"""Opaque page cursors: the sort they belong to and the last item's key, signed against tampering."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress

from itsdangerous import BadData, URLSafeSerializer

from app.errors import InvalidInput

# The key is no secret: the signature stops an edited or truncated cursor, not one made by hand.
_SIGNED = URLSafeSerializer("scv-page-cursor")


def encode_cursor(sort: str, *key) -> str:
    """A cursor continuing after `key` in the order named `sort`."""
    return _SIGNED.dumps([sort, *key])


def decode_cursor(cursor: str, *, sort: str, kinds: Sequence[tuple[type, ...]]) -> tuple:
    """The key a cursor of `sort` continues after, each part of one of its `kinds`; 422 naming `cursor` when it was
    altered, made for another sort or holds other types."""
    with suppress(BadData, ValueError, TypeError):
        name, *key = _SIGNED.loads(cursor)
        if name == sort and len(key) == len(kinds) and all(
                type(part) in kind for part, kind in zip(key, kinds, strict=True)):
            return tuple(key)
    raise InvalidInput("invalid cursor: pass the `next` value of the previous page unchanged, with the same sort",
                       field="cursor")
