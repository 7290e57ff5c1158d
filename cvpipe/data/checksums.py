"""File checksums, with a small memo so a cached load does not re-hash a large archive."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from cvpipe.errors import ChecksumError, ConfigError
from cvpipe.storage import write_json

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def file_digests(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of a file's bytes, one pass for all ``algorithms``."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            for h in hashers.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashers.items()}


def memo_digests(path: Path, memo_file: Path, algorithms: tuple[str, ...]) -> dict[str, str]:
    """Like :func:`file_digests`, remembered by (path, size, mtime) in ``memo_file``.

    A file whose size or modification time changed is hashed again, so an edited
    source is never mistaken for the one the cache was built from.
    """
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):  # damaged: a memo only saves time, so start a new one
        memo = {}
    known = memo.get(key)
    if not isinstance(known, dict) or not all(isinstance(v, str) for v in known.values()):
        known = {}
    missing = tuple(a for a in algorithms if a not in known)
    if missing:
        known.update(file_digests(path, missing))
        memo[key] = known
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            write_json(memo_file, memo)
        except OSError as exc:  # a read-only data root only costs a re-hash next time
            log.debug("could not save checksum memo: %s", exc)
    return {a: known[a] for a in algorithms}


def parse_expected(spec: str) -> tuple[str, str]:
    """Split ``"sha256:abc..."`` (or a bare 32/64-hex digest) into (algorithm, digest)."""
    spec = spec.strip().lower()
    if ":" in spec:
        algo, digest = spec.split(":", 1)
    elif len(spec) == 32:
        algo, digest = "md5", spec
    elif len(spec) == 64:
        algo, digest = "sha256", spec
    else:
        raise ConfigError(f"checksum {spec!r}: expected 'md5:<hex>' or 'sha256:<hex>'")
    if algo not in ("md5", "sha256") or not digest or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(f"checksum {spec!r}: expected 'md5:<hex>' or 'sha256:<hex>'")
    return algo, digest


def verify(path: Path, digests: dict[str, str], expected: tuple[str, str]) -> None:
    """Raise :class:`ChecksumError` unless ``digests`` holds the expected digest."""
    algo, want = expected
    got = digests[algo]
    if got != want:
        raise ChecksumError(
            f"{path}: {algo} checksum mismatch (expected {want}, got {got}); "
            "the file is corrupt, truncated or not the expected release"
        )
