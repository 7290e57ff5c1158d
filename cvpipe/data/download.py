"""Download a file over HTTP(S) to a temporary name, verify it, then rename it into place."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from cvpipe.errors import ChecksumError, DataError

log = logging.getLogger(__name__)


def public_location(location: str) -> str:
    """``location`` without what must not be shown or stored: a URL's user, password, query
    and fragment (tokens often travel there). Local paths are returned as they are."""
    parts = urllib.parse.urlsplit(location)
    if not parts.scheme or not parts.netloc:
        return location
    return urllib.parse.urlunsplit((parts.scheme, _host(parts), parts.path, "", ""))


def _host(parts: urllib.parse.SplitResult) -> str:
    """``host[:port]`` of a URL, without user and password."""
    return f"{parts.hostname or ''}:{parts.port}" if parts.port else parts.hostname or ""


def download_key(url: str) -> str:
    """A folder name for what ``url`` downloads: a hash of the whole URL without its user,
    password and fragment (two URLs that end in the same file name are two downloads)."""
    parts = urllib.parse.urlsplit(url)
    bare = urllib.parse.urlunsplit((parts.scheme.lower(), _host(parts), parts.path, parts.query, ""))
    return "url-" + hashlib.sha256(bare.encode()).hexdigest()[:16]


def download(url: str, dest: Path, md5: str | None = None, timeout: float = 60.0,
             local_hint: str = "CVPIPE_CIFAR10_SOURCE (or --source)") -> Path:
    """Fetch ``url`` to ``dest``; with ``md5`` given, refuse a file whose MD5 differs.

    The bytes land in a temporary file of this download's own (``.<dest>.<random>.part``: two
    processes fetching the same file do not share one) and are renamed to ``dest`` only once
    complete and verified, so an interrupted or corrupt download never looks like a finished
    one; of two concurrent downloads, the last to finish replaces the other's equal file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    part = Path(name)
    digest = hashlib.md5()
    shown = public_location(url)
    log.info("downloading %s -> %s", shown, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
            if total is not None and out.tell() != total:
                raise DataError(f"download of {shown} ended early ({out.tell()} of {total} bytes)")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DataError(
            f"could not download {shown}: {exc}. Without network access, point "
            f"{local_hint} at a local copy."
        ) from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if md5 is not None and digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"download of {shown}: md5 {digest.hexdigest()} differs from the published {md5}"
        )
    os.replace(part, dest)
    return dest
