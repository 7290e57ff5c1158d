"""Sources read safely. Tar archives: never extracted, every member's declared size checked
before it is read, a budget for the whole archive, the archive's digest checked on the bytes
read. Folders: walked without following a link out of the tree, every file read with a cap."""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from cvpipe.errors import DataError

#: Most bytes one archive member may declare (an official batch is about 31 MB; a photo a few
#: MB) and most bytes of all members read from one archive: a crafted archive (a gzip bomb)
#: is refused from its headers before it fills the memory.
MAX_MEMBER_BYTES = 256 << 20
MAX_ARCHIVE_BYTES = 8 << 30
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


class _Hashing(io.RawIOBase):
    """A file read once, front to back, hashing what it reads: what was parsed is what the
    checksum covers (a file swapped after its checksum was taken is caught)."""

    def __init__(self, path: Path, sha256: str) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed with the tar file that reads it
        self._hash = hashlib.sha256()
        self.expected = sha256

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - io's signature
        n = self._file.readinto(buffer)
        self._hash.update(memoryview(buffer)[:n])
        return n

    def close(self) -> None:
        self._file.close()
        super().close()

    def finish(self, path: Path) -> None:
        """Read what the parser left and compare the whole file's digest."""
        while chunk := self._file.read(1 << 20):
            self._hash.update(chunk)
        if self._hash.hexdigest() != self.expected:
            raise DataError(f"{path}: changed while it was read (its sha256 is no longer the one "
                            "checked); read it again")


@contextlib.contextmanager
def _open_tar(path: Path, sha256: str | None = None) -> Iterator[tarfile.TarFile]:
    """``path`` as a tar archive; with ``sha256``, read as one stream whose digest is checked
    once the block that reads it ends without an error (what it left unread is read then)."""
    stream = _Hashing(path, sha256) if sha256 is not None else None
    try:
        try:
            tar = (tarfile.open(path, "r:*") if stream is None else
                   tarfile.open(fileobj=io.BufferedReader(stream, 1 << 20), mode="r|*"))
        except _TAR_ERRORS as exc:
            raise DataError(f"{path}: not a readable tar archive ({exc})") from exc
        with tar:
            yield tar
        if stream is not None:  # read whole, without an error: was it the file checked?
            stream.finish(path)
    finally:
        if stream is not None:
            stream.close()


def _iter_members(tar: tarfile.TarFile, path: Path) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tar
    except _TAR_ERRORS as exc:
        raise DataError(f"{path}: archive is truncated or corrupt ({exc})") from exc


class _Budget:
    """Bytes still allowed from one archive (:data:`MAX_ARCHIVE_BYTES`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.left = MAX_ARCHIVE_BYTES

    def take(self, member: tarfile.TarInfo) -> None:
        if member.size > MAX_MEMBER_BYTES:
            raise DataError(f"{self.path}: member {member.name} declares {member.size:,} bytes, over "
                            f"the limit of {MAX_MEMBER_BYTES:,} for one file")
        self.left -= member.size
        if self.left < 0:
            raise DataError(f"{self.path}: the files read from this archive exceed "
                            f"{MAX_ARCHIVE_BYTES:,} bytes in all; split the dataset")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, budget: _Budget) -> bytes:
    budget.take(member)
    try:
        f = tar.extractfile(member)
        data = f.read() if f is not None else b""
    except _TAR_ERRORS as exc:
        raise DataError(f"{path}: archive is truncated or corrupt at {member.name} ({exc})") from exc
    if len(data) != member.size:
        raise DataError(f"{path}: archive is truncated at {member.name}")
    return data


def _files_under(root: Path) -> Iterator[Path]:
    """The files of a folder tree, in a stable order; one that is (or lies under) a link to
    somewhere outside the tree is an error, not read."""
    inside = root.resolve()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            if not f.resolve().is_relative_to(inside):
                raise DataError(f"{f}: a link to {f.resolve()}, outside the dataset's folder {root}; "
                                "copy the file in instead")
            yield f


def _read_file(path: Path) -> bytes:
    """A file's bytes, at most :data:`MAX_MEMBER_BYTES` (as an archive's member)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MEMBER_BYTES + 1)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(data) > MAX_MEMBER_BYTES:
        raise DataError(f"{path}: over the limit of {MAX_MEMBER_BYTES:,} bytes for one file")
    return data
