"""Holding objects: byte-range locks in one ``<persist>/objects.lock`` per persist directory.

A process holds each object it has open, so that a second server, or an admin command that
would write, cannot write it meanwhile; and a migration that renames or deletes a class holds
every object of the class, stored or not.

An object is one byte of the lock file, at an offset derived from its class and id, locked
exclusively (a POSIX record lock, ``fcntl`` F_SETLK): holding needs no file of the object's
own. Holding an object also takes a shared lock on its class's byte, which a migration takes
exclusively (``hold_class``). Record locks belong to the process, and closing *any*
descriptor of the file drops all of them: so the process opens the lock file once and keeps
that descriptor while it holds anything there (it is closed when the last hold ends). Opens
of one object in this process (an instance reset while its last sync runs, and the next one)
share the lock by count. The operating system drops the locks when the process dies, so a
crashed server never leaves an object held.

The hold is the SQLite driver's fence: each hold records the newest epoch that opened the
object, and ``lost()`` — asked before every commit — says why a handle may no longer write:
a newer epoch has the object, or the lock file is not the one this process locked (it was
removed or replaced, so another process may hold the object now).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import sys
import threading
from pathlib import Path
from typing import NamedTuple

from ..core.errors import StorageError
from ..core.storage import FencedError

__all__ = [
    "LOCK_FILE",
    "Held",
    "ObjectInUseError",
    "hold",
    "hold_class",
    "holder_of",
    "lost",
    "release",
    "release_class",
]

LOCK_FILE = "objects.lock"


class ObjectInUseError(Exception):
    """Another process holds this object (a running server)."""


class Held(NamedTuple):
    """Where ``hold`` holds an object: what ``lost`` asks about."""

    persist: Path
    key: str  # the persist directory's real path
    offset: int


class _LockFile:
    """This process's one open descriptor of a persist directory's lock file, and what it
    holds there: each object (by offset) with how many opens share it and the newest epoch
    among them, each class (by offset) with how many of its objects are held, and the
    classes held exclusively. ``path`` and ``inode``: where it is, and which file it is."""

    __slots__ = ("fd", "path", "inode", "objects", "epochs", "classes", "exclusive")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = str(path)
        mine = os.fstat(fd)
        self.inode = (mine.st_dev, mine.st_ino)
        self.objects: dict[int, int] = {}
        self.epochs: dict[int, int] = {}
        self.classes: dict[int, int] = {}
        self.exclusive: set[int] = set()

    def empty(self) -> bool:
        return not self.objects and not self.exclusive


_lock_files: dict[str, _LockFile] = {}  # persist directory (real path) -> its lock file
_lock_mutex = threading.Lock()


def _offset(*parts: str) -> int:
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2  # 62 bits: a positive off_t, with room for 1


def _lock_place(path: Path) -> tuple[Path, int, int]:
    """For an object's database path ``<persist>/<Class>/<id>.sqlite``: the persist
    directory, and the bytes of the object and of its class in the lock file."""
    class_name = path.parent.name
    return path.parent.parent, _offset(class_name, path.stem), _offset("class", class_name)


def _lock_file(persist: Path) -> tuple[str, _LockFile]:
    """This process's lock file of ``persist`` (opened, and the directory made, if needed)."""
    key = os.path.realpath(persist)
    lock_file = _lock_files.get(key)
    if lock_file is None:
        try:
            persist.mkdir(parents=True, exist_ok=True)
            fd = os.open(persist / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot open {persist / LOCK_FILE} to hold objects there: "
                f"{exc.strerror or exc}; the persist directory must be writable"
            ) from None
        lock_file = _lock_files[key] = _LockFile(fd, persist / LOCK_FILE)
    return key, lock_file


def _replaced(lock_file: _LockFile) -> bool:
    """The lock file at its path is not the one this process locked."""
    try:
        there = os.stat(lock_file.path)
    except FileNotFoundError:
        return True
    return lock_file.inode != (there.st_dev, there.st_ino)


def _done_with(key: str, lock_file: _LockFile) -> None:
    if lock_file.empty():
        os.close(lock_file.fd)  # it holds nothing more: closing drops nothing still wanted
        del _lock_files[key]


def _try_lock(lock_file: _LockFile, offset: int, exclusive: bool) -> int | None:
    """Lock one byte without waiting: None if it is ours now, else the pid in the way (0 if
    unknown)."""
    kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.lockf(lock_file.fd, kind | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        return _lock_holder(lock_file.fd, offset) or 0
    return None


def _unlock(lock_file: _LockFile, offset: int) -> None:
    fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)


def _by(pid: int) -> str:
    return f"pid {pid}: a running opendo server?" if pid else "a running opendo server?"


def hold(path: Path, epoch: int = 0, *, alone: bool = False) -> Held:
    """Hold the object of the database at ``path`` for this process, opened with ``epoch``;
    or raise ObjectInUseError (another process holds it, or — with ``alone`` — this one
    does), or FencedError (this process has it open with a newer epoch)."""
    persist, offset, class_offset = _lock_place(path)
    with _lock_mutex:
        key, lock_file = _lock_file(persist)
        count = lock_file.objects.get(offset, 0)
        if count:
            if alone:
                raise ObjectInUseError(f"{path} is open in this process")
            latest = lock_file.epochs[offset]
            if epoch < latest:
                raise FencedError(
                    f"{path}: opened for epoch {epoch}, but this process has it open for "
                    f"the newer epoch {latest}"
                )
            lock_file.epochs[offset] = epoch
        else:
            if lock_file.objects and _replaced(lock_file):
                raise StorageError(
                    f"{persist / LOCK_FILE} was removed or replaced while this process held "
                    "objects in it, so another process may hold them now; restart this one"
                )
            if class_offset in lock_file.exclusive:
                raise ObjectInUseError(f"{path}: its class is being migrated in this process")
            classes = lock_file.classes.get(class_offset, 0)
            if classes == 0 and (pid := _try_lock(lock_file, class_offset, False)) is not None:
                _done_with(key, lock_file)
                raise ObjectInUseError(
                    f"{path}: its class is being renamed or deleted by another process ({_by(pid)})"
                )
            if (pid := _try_lock(lock_file, offset, True)) is not None:
                if classes == 0:
                    _unlock(lock_file, class_offset)
                _done_with(key, lock_file)
                raise ObjectInUseError(f"{path} is held by another process ({_by(pid)})")
            lock_file.classes[class_offset] = classes + 1
            lock_file.epochs[offset] = epoch
        lock_file.objects[offset] = count + 1
    return Held(persist, key, offset)


def release(path: Path) -> None:
    persist, offset, class_offset = _lock_place(path)
    with _lock_mutex:
        key = os.path.realpath(persist)
        lock_file = _lock_files[key]
        count = lock_file.objects.pop(offset)
        if count > 1:
            lock_file.objects[offset] = count - 1
            return
        del lock_file.epochs[offset]
        classes = lock_file.classes.pop(class_offset) - 1
        if classes:
            lock_file.classes[class_offset] = classes
        if lock_file.empty():
            _done_with(key, lock_file)  # drops both locks
            return
        _unlock(lock_file, offset)
        if not classes:
            _unlock(lock_file, class_offset)


def lost(held: Held, epoch: int) -> str | None:
    """Why a handle that ``held`` the object with ``epoch`` may no longer write (None: it
    may). Asked before every commit: a dictionary look-up and one ``stat``."""
    with _lock_mutex:
        lock_file = _lock_files.get(held.key)
        if lock_file is None or held.offset not in lock_file.objects:
            return "this process no longer holds it"
        latest = lock_file.epochs[held.offset]
        if latest > epoch:
            return f"the newer epoch {latest} has it open (this handle's is {epoch})"
        if _replaced(lock_file):
            return f"{lock_file.path} was removed or replaced, so another process may hold it now"
    return None


def hold_class(persist: Path, class_name: str) -> None:
    """Hold every object of a class, stored or not (to rename or delete the class), or raise
    ObjectInUseError: an exclusive lock on the class's byte, which every ``hold`` of one of
    its objects shares."""
    class_offset = _offset("class", class_name)
    with _lock_mutex:
        key, lock_file = _lock_file(persist)
        if lock_file.classes.get(class_offset) or class_offset in lock_file.exclusive:
            raise ObjectInUseError(f"an object of class {class_name!r} is open in this process")
        if (pid := _try_lock(lock_file, class_offset, True)) is not None:
            _done_with(key, lock_file)
            raise ObjectInUseError(
                f"an object of class {class_name!r} is held by another process ({_by(pid)})"
            )
        lock_file.exclusive.add(class_offset)


def release_class(persist: Path, class_name: str) -> None:
    class_offset = _offset("class", class_name)
    with _lock_mutex:
        key = os.path.realpath(persist)
        lock_file = _lock_files[key]
        lock_file.exclusive.remove(class_offset)
        if lock_file.empty():
            _done_with(key, lock_file)
        else:
            _unlock(lock_file, class_offset)


def holder_of(path: Path) -> int | None:
    """The pid of the process that holds the object of ``path``, or None."""
    persist, offset, _ = _lock_place(path)
    with _lock_mutex:
        lock_file = _lock_files.get(os.path.realpath(persist))
        if lock_file is not None:
            if offset in lock_file.objects:
                return os.getpid()  # F_GETLK does not report this process's own locks
            return _lock_holder(lock_file.fd, offset)
        try:
            fd = os.open(persist / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            return _lock_holder(fd, offset)
        finally:
            os.close(fd)  # this process holds nothing there: closing drops nothing


# struct flock, as F_GETLK reads and writes it
_FLOCK = "qqihh" if sys.platform == "darwin" else "hhqqi4x"


def _lock_holder(fd: int, offset: int) -> int | None:
    if sys.platform == "darwin":
        probe = struct.pack(_FLOCK, offset, 1, 0, fcntl.F_WRLCK, os.SEEK_SET)
    else:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
    if sys.platform == "darwin":
        _, _, pid, kind, _ = struct.unpack(_FLOCK, answer)
    else:
        kind, _, _, _, pid = struct.unpack(_FLOCK, answer)
    return None if kind == fcntl.F_UNLCK else int(pid)
