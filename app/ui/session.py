"""The dashboard's session: a signed, expiring cookie that carries the session's CSRF token; no server state."""

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE = "scv_session"
LIFETIME_S = 12 * 3600


@dataclass(frozen=True)
class Session:
    """A signed-in (or, with no SCV_API_TOKEN, anonymous) browser session."""

    csrf: str
    expires: int


class SessionSigner:
    """Issues and checks session cookies: `payload.mac`, HMAC-SHA256 under a key derived from a secret.

    The secret is SCV_API_TOKEN, so changing the token ends every session; with no token, the storage secret
    key, which every replica shares and no browser knows.
    """

    def __init__(self, secret: str):
        self.key = hmac.new(secret.encode(), b"scv-ui-session-v1", hashlib.sha256).digest()

    def issue(self, *, now: float | None = None) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(csrf=secrets.token_urlsafe(24), expires=int((now or time.time()) + LIFETIME_S))
        payload = _encode(json.dumps({"csrf": session.csrf, "exp": session.expires}).encode())
        return session, f"{payload}.{self._mac(payload)}"

    def read(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie carries; None when it is absent, forged, malformed or expired."""
        payload, _, mac = (cookie or "").partition(".")
        if not payload or not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        try:
            data = json.loads(_decode(payload))
            session = Session(csrf=str(data["csrf"]), expires=int(data["exp"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        return session if session.expires > (now or time.time()) else None

    def _mac(self, payload: str) -> str:
        return _encode(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())


def csrf_matches(session: Session, given: str | None) -> bool:
    """Whether a form field or header carries this session's CSRF token."""
    return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())


def token_matches(expected: str, given: str) -> bool:
    """Whether the token typed at sign-in is SCV_API_TOKEN (constant time)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
