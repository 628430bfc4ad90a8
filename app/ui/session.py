"""The dashboard's session: a signed, expiring cookie that carries the session's CSRF token; the catalog keeps
only the sessions signed out before their cookies expired, so a copied cookie stops working at sign-out."""

import hashlib
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import delete, select

from app.db.engine import Database, dialect_insert
from app.db.tables import EndedSession

COOKIE = "scv_session"
LIFETIME_S = 12 * 3600


@dataclass(frozen=True)
class Session:
    """A signed-in (or, with no SCV_API_TOKEN, anonymous) browser session."""

    csrf: str
    expires: float  # seconds since the epoch

    @property
    def key(self) -> str:
        """What the catalog knows the session by (not the CSRF token itself)."""
        return hashlib.sha256(self.csrf.encode()).hexdigest()


class SessionSigner:
    """Issues and checks session cookies, signed and timestamped by itsdangerous (as Starlette's own sessions are).

    The secret is SCV_API_TOKEN, so changing the token ends every session; with no token, the storage secret
    key, which every replica shares and no browser knows.
    """

    def __init__(self, secret: str):
        self.serializer = URLSafeTimedSerializer(secret, salt="scv-ui-session-v1",
                                                 signer_kwargs={"digest_method": hashlib.sha256})

    def issue(self) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(csrf=secrets.token_urlsafe(24), expires=time.time() + LIFETIME_S)
        return session, self.serializer.dumps({"csrf": session.csrf})

    def read(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie carries; None when it is absent, forged, malformed or older than LIFETIME_S."""
        try:
            data, signed_at = self.serializer.loads(cookie or "", return_timestamp=True)
            session = Session(csrf=str(data["csrf"]), expires=signed_at.timestamp() + LIFETIME_S)
        except (BadData, KeyError, TypeError):
            return None
        return session if session.expires > (now or time.time()) else None


def end_session(db: Database, session: Session) -> None:
    """Refuse the session's cookie on every replica from now on (sign-out); forget sessions that expired."""
    with db.write() as conn:
        conn.execute(delete(EndedSession).where(EndedSession.until < time.time()))
        conn.execute(dialect_insert(conn, EndedSession).values(session=session.key, until=session.expires)
                     .on_conflict_do_nothing())


def has_ended(db: Database, session: Session) -> bool:
    """Whether the session was signed out."""
    with db.read() as conn:
        return conn.execute(select(EndedSession.session).where(EndedSession.session == session.key)).first() is not None
