"""An object's changes as pages: read from SQLite's write-ahead log, shipped, applied to images.

In cluster mode an object's SQLite database on its owner is a cache; what PostgreSQL keeps is
the database's *pages*. SQLite in WAL mode appends every page a transaction changes to the
``-wal`` file, as a frame (a 24-byte header and the page), and marks a transaction's last
frame as its commit, with the database's size in pages after it. A checkpoint copies the
frames into the database file verbatim. So the pages of the frames a commit appended are
exactly what that commit changed, and applying them in order to an image of the database (then
cutting it to the committed size) gives the database a checkpoint would leave: byte for byte.

``WalReader`` reads the frames a connection appended since it last looked — right after each
commit, on the connection's thread, with nothing else writing the file (the cluster's cache is
locked exclusively) — up to the last commit frame: frames after it belong to a transaction
that rolled back, and the next transaction overwrites them. The header's salts change when
SQLite starts the log again (after a ``TRUNCATE`` checkpoint, which its owner runs once the
log has grown, having read it); a new salt means reading from the first frame again. Frames
whose salts are not the header's are not the log's.

A ``Changes`` is the pages of one or more commits (the last write of each page wins) and the
database's size after them; ``encode`` makes it bytes for the log (compressed), ``apply`` lays
it onto an image.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

__all__ = ["Changes", "WalReader", "apply", "decode", "encode"]

_HEADER = struct.Struct(">IIIIII")  # magic, version, page size, checkpoint seq, salt1, salt2
_HEADER_BYTES = 32
_FRAME = struct.Struct(">IIII")  # page number, size after commit (0: not a commit), salt1, salt2
_FRAME_BYTES = 24
_MAGIC = (0x377F0682, 0x377F0683)

_RECORD = struct.Struct(">4sIII")  # b"ODP1", page size, database size in pages, page count
_RECORD_MAGIC = b"ODP1"
_COMPRESSION = 1  # zlib level: pages of a small object are mostly zeros; speed matters more


@dataclass(slots=True)
class Changes:
    """Pages by number (1-based) and the database's size in pages after them."""

    page_size: int = 0
    size: int = 0
    pages: dict[int, bytes] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.size > 0

    def add(self, later: Changes) -> None:
        """Take the pages of commits made after ours."""
        self.page_size = later.page_size
        self.size = later.size
        self.pages.update(later.pages)

    @property
    def nbytes(self) -> int:
        return len(self.pages) * self.page_size


class WalReader:
    """The frames appended to one database's ``-wal`` file since the last ``read``."""

    __slots__ = ("path", "_fd", "_offset", "_salts", "frames")

    def __init__(self, database: str | os.PathLike[str]) -> None:
        self.path = f"{os.fspath(database)}-wal"
        self._fd: int | None = None
        self._offset = _HEADER_BYTES
        self._salts: tuple[int, int] | None = None
        self.frames = 0  # frames in the log now (where the next read starts)

    def read(self) -> Changes:
        """The pages of the transactions committed since the last call (empty: none)."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return Changes()
        fd = self._fd
        head = os.pread(fd, _HEADER_BYTES, 0)
        if len(head) < _HEADER_BYTES:
            self._restart(None)
            return Changes()
        magic, _, page_size, _, salt1, salt2 = _HEADER.unpack_from(head)
        if magic not in _MAGIC:
            raise ValueError(f"{self.path} is not a SQLite write-ahead log")
        if self._salts != (salt1, salt2):
            self._restart((salt1, salt2))
        frame = _FRAME_BYTES + page_size
        end = os.fstat(fd).st_size
        data = os.pread(fd, end - self._offset, self._offset) if end > self._offset else b""
        changes = Changes(page_size)
        pending: dict[int, bytes] = {}
        taken = 0
        for start in range(0, len(data) - frame + 1, frame):
            number, size, s1, s2 = _FRAME.unpack_from(data, start)
            if (s1, s2) != (salt1, salt2):
                break  # not of this log: what follows is stale
            pending[number] = data[start + _FRAME_BYTES : start + frame]
            if size:  # a commit: what it and the frames before it changed
                changes.pages.update(pending)
                changes.size = size
                pending = {}
                taken = start + frame
        self._offset += taken
        self.frames = (self._offset - _HEADER_BYTES) // frame
        return changes

    def _restart(self, salts: tuple[int, int] | None) -> None:
        self._salts = salts
        self._offset = _HEADER_BYTES
        self.frames = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def encode(changes: Changes) -> bytes:
    """``changes`` as one compressed record of the log."""
    numbers = sorted(changes.pages)
    parts = [
        _RECORD.pack(_RECORD_MAGIC, changes.page_size, changes.size, len(numbers)),
        struct.pack(f">{len(numbers)}I", *numbers),
        *(changes.pages[n] for n in numbers),
    ]
    return zlib.compress(b"".join(parts), _COMPRESSION)


def decode(record: bytes) -> Changes:
    data = zlib.decompress(record)
    magic, page_size, size, count = _RECORD.unpack_from(data)
    if magic != _RECORD_MAGIC:
        raise ValueError("not a record of opendo's page log")
    at = _RECORD.size
    numbers = struct.unpack_from(f">{count}I", data, at)
    at += 4 * count
    pages = {}
    for n in numbers:
        pages[n] = data[at : at + page_size]
        at += page_size
    return Changes(page_size, size, pages)


def apply(image: bytearray, changes: Changes) -> None:
    """Lay ``changes`` onto ``image`` (a database file's bytes): its pages, then its size."""
    page = changes.page_size
    end = changes.size * page
    if len(image) < end:
        image.extend(bytes(end - len(image)))
    for number, data in changes.pages.items():
        if number <= changes.size:
            image[(number - 1) * page : number * page] = data
    del image[end:]
