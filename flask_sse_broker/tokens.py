"""Client tokens: a signed capability to resume a client id.

A token proves that its holder was given the client id by this app, so it can
reconnect as that client (keeping its server-side subscriptions and direct
messages) and change its topics. Client ids may be guessable (a user id), so
the id alone must never be enough: the token is signed with the app's
``SECRET_KEY`` through itsdangerous and cannot be forged without it.
"""

from __future__ import annotations

import logging
import secrets

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer

logger = logging.getLogger("flask_sse_broker")

#: Separates these signatures from any other use of the app's secret key.
SALT = "flask-sse-broker.client-token"
#: Anything longer is rejected before its signature is checked.
MAX_TOKEN_LENGTH = 512

_fallback_key: str | None = None


def _secret_key() -> str | bytes:
    global _fallback_key
    key = current_app.secret_key
    if key:
        return key
    if _fallback_key is None:
        logger.warning(
            "SECRET_KEY is not set: client tokens are signed with a random key of this "
            "process and will not be accepted by other workers or after a restart"
        )
        _fallback_key = secrets.token_hex(32)
    return _fallback_key


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(_secret_key(), salt=SALT)


def make_token(client_id: str) -> str:
    """Sign ``client_id`` into a token (needs an app context)."""
    return _serializer().dumps(client_id)


def load_token(token: object) -> str | None:
    """Return the client id a token was made for, or ``None`` if it is not a
    token this app signed."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        client_id = _serializer().loads(token)
    except BadSignature:
        return None
    return client_id if isinstance(client_id, str) else None
