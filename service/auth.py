"""Optional bearer-token authentication of the predict and features endpoints.

On when ``CVPIPE_API_TOKEN`` (setting ``API_TOKEN``) is non-empty: those endpoints then need
``Authorization: Bearer <token>``. The comparison takes constant time.
"""

from __future__ import annotations

import hmac

from flask import current_app, request

from service.errors import ApiError

_CHALLENGE = 'Bearer realm="cvpipe"'


def authorised() -> bool:
    """True when authentication is off or the request carries the valid token (never raises)."""
    try:
        check_token()
    except ApiError:
        return False
    return True


def check_token() -> None:
    """Raise a 401 :class:`ApiError` unless authentication is off or the request carries the token."""
    token = current_app.config.get("API_TOKEN")
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not header or scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "unauthorized", "This endpoint needs the header "
                       "'Authorization: Bearer <token>' (the server's CVPIPE_API_TOKEN).",
                       headers={"WWW-Authenticate": _CHALLENGE})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "invalid_token", "The bearer token is not valid.",
                       headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'})
