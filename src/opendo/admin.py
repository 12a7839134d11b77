"""``opendo objects …``: list, inspect, export, import and delete objects in a persist
directory, or in a cluster's PostgreSQL (``--cluster URL``).

Everything goes through the storage driver of where the objects are (``SqliteDriver`` for a
persist directory, ``ClusterDriver`` for a cluster), whose admin operations are part of the
``StorageDriver`` protocol. Reading is safe while servers run (SQLite readers never block its
writer, and an export is a consistent snapshot; a cluster's object is read as a new owner
would restore it). Writing — import, delete — takes the object first, and refuses while a
running server (or node) holds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .core.codec import decode
from .core.errors import StorageError
from .core.ids import NamespaceKey
from .core.migrations import MigrationError
from .core.storage import QueryResult, SqlError, StorageDriver, StoredObject
from .project.cluster import driver_for, where_shown

__all__ = [
    "AdminError",
    "ObjectInfo",
    "Where",
    "delete",
    "export",
    "find",
    "import_",
    "namespace_key",
    "objects",
    "query",
    "show",
]


Where = Path | str  # a persist directory, or a cluster's PostgreSQL URL


class AdminError(Exception):
    """A request the admin commands cannot carry out; the message says why."""


@dataclass(frozen=True)
class ObjectInfo:
    class_name: str
    id: str
    name: str | None
    size: int
    alarm_ms: int | None
    persist: Where

    @property
    def alarm(self) -> str | None:
        if self.alarm_ms is None:
            return None
        return datetime.fromtimestamp(self.alarm_ms / 1000, tz=UTC).isoformat()

    @property
    def driver(self) -> StorageDriver:
        return _driver(self.persist)


def _driver(where: Where) -> StorageDriver:
    return driver_for(where)


def _info(persist: Where, stored: StoredObject) -> ObjectInfo:
    return ObjectInfo(
        stored.class_name, stored.id, stored.name, stored.size, stored.alarm_ms, persist
    )


def namespace_key(persist: Where, class_name: str) -> NamespaceKey:
    """The key of the class's ids: from its label, which migrations keep through renames."""
    try:
        labels = _driver(persist).read_migrations().labels
    except MigrationError as exc:
        raise AdminError(str(exc)) from None
    return NamespaceKey(labels.get(class_name, class_name))


def objects(persist: Where, class_name: str | None = None) -> Iterator[ObjectInfo]:
    """Every object stored in ``persist`` (of one class, if given), by class then id."""
    for stored in _driver(persist).objects(class_name):
        yield _info(persist, stored)


HEX = "0123456789abcdef"
PREFIX_MIN = 6  # hex digits of an id prefix, at least


def find(persist: Where, ref: str, class_name: str | None) -> ObjectInfo:
    """The object named by ``ref``: its 64-hex id, the name it was made from (with the
    class, unless only one class has objects), or a unique prefix of its id (6 digits or
    more)."""
    ref = ref.strip()
    if len(ref) == 64 and all(c in "0123456789abcdef" for c in ref.lower()):
        matches = [o for o in objects(persist, class_name) if o.id == ref.lower()]
        if not matches:
            raise AdminError(f"no object with id {ref} in {where_shown(persist)}")
        if len(matches) > 1:
            several = ", ".join(o.class_name for o in matches)
            raise AdminError(f"id {ref} exists in several classes ({several}): give --namespace")
        return matches[0]
    driver = _driver(persist)
    classes = [class_name] if class_name else sorted({o.class_name for o in driver.objects()})
    found = []
    for cls in classes:
        stored = driver.stored(cls, namespace_key(persist, cls).from_name(ref))
        if stored is not None:
            found.append(_info(persist, stored))
    if not found and PREFIX_MIN <= len(ref) < 64 and all(c in HEX for c in ref.lower()):
        found = [o for o in objects(persist, class_name) if o.id.startswith(ref.lower())]
        if len(found) > 1:
            ids = ", ".join(f"{o.class_name} {o.id[:12]}…" for o in found[:5])
            raise AdminError(f"the id prefix {ref} is not unique ({ids}): give more of it")
    if not found:
        raise AdminError(
            f"no object named {ref!r} (nor an id that starts so) in {where_shown(persist)}"
        )
    if len(found) > 1:
        raise AdminError(f"several classes have an object named {ref!r}: give --namespace")
    return found[0]


def show(info: ObjectInfo) -> dict[str, Any]:
    """Its name, alarm, KV entries (decoded) and SQL tables with row counts."""
    try:
        contents = info.driver.inspect(info.class_name, info.id)
    except StorageError as exc:
        raise AdminError(str(exc)) from None
    if contents is None:
        raise AdminError(f"{info.class_name} {info.id} has nothing stored any more")
    return {
        "class": info.class_name,
        "id": info.id,
        "name": info.name,
        "size": info.size,
        "alarm": info.alarm,
        "kv": {key.decode("utf-8", "surrogatepass"): decode(value) for key, value in contents.kv},
        "tables": contents.tables,
    }


def query(info: ObjectInfo, sql: str, limit: int) -> QueryResult:
    """One read-only SQL statement on the object's database (its KV, alarm and name tables,
    ``_opendo_kv`` and so on, included); its first ``limit`` rows."""
    try:
        result = info.driver.query(info.class_name, info.id, sql, limit)
    except SqlError as exc:
        raise AdminError(f"query refused: {exc}") from None
    except StorageError as exc:
        raise AdminError(str(exc)) from None
    if result is None:
        raise AdminError(f"{info.class_name} {info.id} has nothing stored any more")
    return result


def export(info: ObjectInfo, output: Path) -> None:
    """A consistent copy of the object's database, as one SQLite file."""
    if output.exists():
        raise AdminError(f"{output} exists; choose another --output or remove it")
    try:
        info.driver.export_to(info.class_name, info.id, output)
    except StorageError as exc:
        raise AdminError(str(exc)) from None


def import_(
    persist: Where, class_name: str, id: str, name: str | None, source: Path, *, replace: bool
) -> str:
    """Put an exported database in place as object ``id`` of ``class_name`` (made from
    ``name``, if it was); where it was put."""
    driver = _driver(persist)
    if not replace and driver.stored(class_name, id) is not None:
        raise AdminError(f"object {id} of {class_name} exists; add --replace to overwrite it")
    try:
        return driver.import_from(class_name, id, name, source, replace=replace)
    except StorageError as exc:
        raise AdminError(str(exc)) from None


def delete(info: ObjectInfo) -> None:
    """Remove the object's database (refused while a server holds it)."""
    try:
        info.driver.delete(info.class_name, info.id)
    except StorageError as exc:
        raise AdminError(str(exc)) from None
