"""Settings of the prediction API: defaults, overridden by the environment, then by a dict.

Setting (environment variable, default):

* ``MODELS_DIR`` (``CVPIPE_MODELS_DIR``, ``./models``): the folder of models to serve;
* ``API_TOKEN`` (``CVPIPE_API_TOKEN``, none): bearer token required by predict and features;
  empty or unset means no authentication;
* ``REPORTS_DIR`` (``CVPIPE_REPORTS_DIR``, none): comparison reports listed by ``/v1/reports``
  and served under ``/reports/`` (``cvpipe serve --reports``);
* ``MAX_IMAGES`` (``CVPIPE_MAX_IMAGES``, 512): images per request;
* ``MAX_CONTENT_LENGTH`` (``CVPIPE_MAX_CONTENT_LENGTH``, 32 MiB): bytes per request body;
* ``MAX_PIXELS`` (``CVPIPE_MAX_PIXELS``, 40 megapixels): pixels per image, read from the
  header before decoding (decompression bombs);
* ``MAX_REQUEST_PIXELS`` (``CVPIPE_MAX_REQUEST_PIXELS``, 200 megapixels): pixels per request;
* ``MAX_DECODE_BYTES`` (``CVPIPE_MAX_DECODE_BYTES``, 256 MiB): memory one request's decoding
  may need (largest image decoded + the batch at the model's or the requested size), from
  the headers, before decoding;
* ``TOP_K`` (``CVPIPE_TOP_K``, 5): classes per image when the request does not say;
* ``WARMUP`` (``CVPIPE_WARMUP``, true): one prediction per model when the app is created;
* ``BATCH_LINGER_MS`` (``CVPIPE_BATCH_LINGER_MS``, 2): how long a model call may wait for
  requests already being decoded, to take them along (:mod:`service.batching`); 0 never waits
  (at most 10,000);
* ``BODY_TIMEOUT`` (``CVPIPE_BODY_TIMEOUT``, 30): seconds a request body may take to arrive
  under ``cvpipe serve`` before a 408 (:mod:`service.guard`); 0 turns the deadline off
  (at most 86,400);
* ``PREDICT_TIMEOUT`` (``CVPIPE_PREDICT_TIMEOUT``, 30): seconds a request waits for its model
  call before a 503 (a stuck model fails its requests instead of holding them forever;
  above 0, at most 86,400);
* ``ALLOWED_HOSTS`` (``CVPIPE_ALLOWED_HOSTS``, ``localhost,127.0.0.1,::1``): comma-separated
  names the ``Host`` header may give (``.example.org`` also allows its subdomains; ``*`` any):
  a web page elsewhere cannot reach a local API by DNS rebinding. ``cvpipe serve --host NAME``
  adds NAME.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cvpipe.config import ENV_MODELS_DIR, models_dir
from cvpipe.errors import ConfigError
from cvpipe.images import MAX_PIXELS

ENV_API_TOKEN = "CVPIPE_API_TOKEN"

#: setting -> (environment variable, type, default)
SETTINGS: dict[str, tuple[str, type, Any]] = {
    "API_TOKEN": (ENV_API_TOKEN, str, None),
    "REPORTS_DIR": ("CVPIPE_REPORTS_DIR", str, None),
    "MAX_IMAGES": ("CVPIPE_MAX_IMAGES", int, 512),
    "MAX_CONTENT_LENGTH": ("CVPIPE_MAX_CONTENT_LENGTH", int, 32 * 1024 * 1024),
    "MAX_PIXELS": ("CVPIPE_MAX_PIXELS", int, MAX_PIXELS),
    "MAX_REQUEST_PIXELS": ("CVPIPE_MAX_REQUEST_PIXELS", int, 200_000_000),
    "MAX_DECODE_BYTES": ("CVPIPE_MAX_DECODE_BYTES", int, 256 << 20),
    "TOP_K": ("CVPIPE_TOP_K", int, 5),
    "WARMUP": ("CVPIPE_WARMUP", bool, True),
    "BATCH_LINGER_MS": ("CVPIPE_BATCH_LINGER_MS", float, 2.0),
    "PREDICT_TIMEOUT": ("CVPIPE_PREDICT_TIMEOUT", float, 30.0),
    "BODY_TIMEOUT": ("CVPIPE_BODY_TIMEOUT", float, 30.0),
    "ALLOWED_HOSTS": ("CVPIPE_ALLOWED_HOSTS", str, "localhost,127.0.0.1,::1"),
}

#: The bounds of the float settings, (lowest, highest): a waiting time the threads' waits take
#: (``inf`` overflows them), and the predict timeout above 0 (at 0 every request would fail).
FLOAT_BOUNDS: dict[str, tuple[float, float]] = {
    "BATCH_LINGER_MS": (0.0, 10_000.0), "BODY_TIMEOUT": (0.0, 86_400.0),
    "PREDICT_TIMEOUT": (0.001, 86_400.0)}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(name: str, env: str, kind: type, raw: str) -> Any:
    if kind is bool:
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
        raise ConfigError(f"{env}={raw!r}: expected true or false")
    if kind is float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r}: expected a number") from None
        return _bounded(name, value, f"{env}={raw!r}")
    if kind is int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r}: expected an integer") from None
        if value < 1:
            raise ConfigError(f"{env}={raw!r}: must be at least 1")
        return value
    return raw


def load_settings(overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The API's settings: defaults, then ``environ`` (default ``os.environ``), then ``overrides``.

    Parameters
    ----------
    overrides : mapping, optional
        Settings by name (``"MAX_IMAGES"``, ...); they win over the environment. Keys that are
        not API settings are passed through (Flask configuration such as ``TESTING``).
    environ : mapping, optional
        Where the environment variables are read.

    Returns
    -------
    dict
        Every setting of :data:`SETTINGS` plus ``MODELS_DIR`` (a path string) and the
        overrides' extra keys.

    Raises
    ------
    ConfigError
        A variable or override that is not a valid value.
    """
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {"MODELS_DIR": str(models_dir(environ.get(ENV_MODELS_DIR)))}
    for name, (env, kind, default) in SETTINGS.items():
        raw = environ.get(env)
        out[name] = default if raw is None or (kind is not str and raw == "") else _parse(
            name, env, kind, raw)
    for name, value in (overrides or {}).items():
        if name in SETTINGS and SETTINGS[name][1] is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"setting {name}={value!r}: expected an integer of at least 1")
        if name in FLOAT_BOUNDS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"setting {name}={value!r}: expected a number")
            value = _bounded(name, float(value), f"setting {name}={value!r}")
        out[name] = value
    out["MODELS_DIR"] = str(out["MODELS_DIR"])
    out["ALLOWED_HOSTS"] = allowed_hosts(out["ALLOWED_HOSTS"])
    token = out["API_TOKEN"]
    if token and not token.strip():  # on, with a token no request could send
        raise ConfigError(f"{ENV_API_TOKEN} is blank: unset it (or set it empty) for no "
                          "authentication, or give a token")
    # empty: authentication off; the newline of `$(cat token-file)` is not part of the token
    out["API_TOKEN"] = token.strip() if token else None
    out["REPORTS_DIR"] = str(out["REPORTS_DIR"]) if out.get("REPORTS_DIR") else None
    return out


def _bounded(name: str, value: float, said: str) -> float:
    low, high = FLOAT_BOUNDS[name]
    if not low <= value <= high:  # NaN and inf fail too
        raise ConfigError(f"{said}: must be a number from {low:g} to {high:g}")
    return value


def allowed_hosts(value: str | list[str] | None) -> list[str] | None:
    """``ALLOWED_HOSTS`` as a list of lower-case names (IPv6 addresses without brackets;
    ``.name`` for a domain and its subdomains), or None for ``*`` (any host)."""
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value or [])]
    names = [n[1:-1] if n.startswith("[") and n.endswith("]") else n for n in names if n]
    if not names:
        raise ConfigError("CVPIPE_ALLOWED_HOSTS: give at least one host name (or * for any)")
    return None if "*" in names else sorted(set(names))


def host_allowed(header: str | None, allowed: list[str] | None) -> bool:
    """Whether a ``Host`` header (``name[:port]``, ``[v6 address][:port]``) names an allowed
    host. (Werkzeug's ``TRUSTED_HOSTS`` cannot name an IPv6 address.)"""
    if allowed is None:
        return True
    host = (header or "").strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return any(host == name or (name.startswith(".") and (host == name[1:] or host.endswith(name)))
               for name in allowed)
