"""``opendo objects …``: list, inspect, export, import and delete objects in a persist
directory.

Reading is safe while a server runs (SQLite readers never block its writer, and an export is
a consistent snapshot through SQLite's backup API). Writing — import, delete — takes the
object's hold first, and refuses while a running server holds it.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .core.codec import decode
from .core.ids import NamespaceKey
from .core.migrations import MigrationError
from .storage.sqlite import (
    ALARM_TABLE,
    KV_TABLE,
    META_TABLE,
    RUNTIME_TABLES,
    hold,
    read_migrations,
    release,
)

__all__ = [
    "AdminError",
    "ObjectInfo",
    "delete",
    "export",
    "find",
    "import_",
    "namespace_key",
    "objects",
    "show",
]


class AdminError(Exception):
    """A request the admin commands cannot carry out; the message says why."""


@dataclass(frozen=True)
class ObjectInfo:
    class_name: str
    id: str
    name: str | None
    size: int
    alarm_ms: int | None
    path: Path

    @property
    def alarm(self) -> str | None:
        if self.alarm_ms is None:
            return None
        return datetime.fromtimestamp(self.alarm_ms / 1000, tz=UTC).isoformat()


def _read(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def _info(class_name: str, path: Path) -> ObjectInfo:
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    name = alarm = None
    conn = _read(path)
    try:
        row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'name'").fetchone()
        name = row[0] if row else None
        row = conn.execute(f"SELECT time_ms FROM {ALARM_TABLE}").fetchone()
        alarm = int(row[0]) if row else None
    except sqlite3.DatabaseError:
        pass  # an empty or foreign file: listed without name and alarm
    finally:
        conn.close()
    return ObjectInfo(class_name, path.stem, name, size, alarm, path)


def namespace_key(persist: Path, class_name: str) -> NamespaceKey:
    """The key of the class's ids: from its label, which migrations keep through renames."""
    try:
        labels = read_migrations(persist).labels
    except MigrationError as exc:
        raise AdminError(str(exc)) from None
    return NamespaceKey(labels.get(class_name, class_name))


def objects(persist: Path, class_name: str | None = None) -> Iterator[ObjectInfo]:
    """Every object stored under ``persist`` (of one class, if given), by class then id."""
    if not persist.is_dir():
        return
    for class_dir in sorted(persist.iterdir()):
        if not class_dir.is_dir() or (class_name and class_dir.name != class_name):
            continue
        for file in sorted(class_dir.glob("*.sqlite")):
            yield _info(class_dir.name, file)


def find(persist: Path, ref: str, class_name: str | None) -> ObjectInfo:
    """The object named by ``ref``: its 64-hex id, or the name it was made from (with the
    class, unless only one class has objects)."""
    ref = ref.strip()
    if len(ref) == 64 and all(c in "0123456789abcdef" for c in ref.lower()):
        matches = [o for o in objects(persist, class_name) if o.id == ref.lower()]
        if not matches:
            raise AdminError(f"no object with id {ref} under {persist}")
        if len(matches) > 1:
            several = ", ".join(o.class_name for o in matches)
            raise AdminError(f"id {ref} exists in several classes ({several}): give --namespace")
        return matches[0]
    classes = [class_name] if class_name else sorted({o.class_name for o in objects(persist)})
    found = []
    for cls in classes:
        path = persist / cls / f"{namespace_key(persist, cls).from_name(ref)}.sqlite"
        if path.exists():
            found.append(_info(cls, path))
    if not found:
        raise AdminError(f"no object named {ref!r} under {persist}")
    if len(found) > 1:
        raise AdminError(f"several classes have an object named {ref!r}: give --namespace")
    return found[0]


def show(info: ObjectInfo) -> dict[str, Any]:
    """Its name, alarm, KV entries (decoded) and SQL tables with row counts."""
    conn = _read(info.path)
    try:
        kv = {
            key.decode("utf-8", "surrogatepass"): decode(value)
            for key, value in conn.execute(f"SELECT key, value FROM {KV_TABLE} ORDER BY key")
        }
        tables = {}
        for (table,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ):
            if table in RUNTIME_TABLES or table.startswith("sqlite_"):
                continue
            quoted = '"' + table.replace('"', '""') + '"'
            tables[table] = conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
    finally:
        conn.close()
    return {
        "class": info.class_name,
        "id": info.id,
        "name": info.name,
        "size": info.size,
        "alarm": info.alarm,
        "kv": kv,
        "tables": tables,
    }


def export(info: ObjectInfo, output: Path) -> None:
    """A consistent copy of the object's database, as one SQLite file."""
    if output.exists():
        raise AdminError(f"{output} exists; choose another --output or remove it")
    source = _read(info.path)
    target = sqlite3.connect(output)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def import_(
    persist: Path, class_name: str, id: str, name: str | None, source: Path, *, replace: bool
) -> Path:
    """Put an exported database in place as object ``id`` of ``class_name`` (made from
    ``name``, if it was)."""
    conn = _read(source)
    try:
        ok = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = ?", (KV_TABLE,)
        ).fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise AdminError(f"{source} is not an opendo object export: {exc}") from None
    finally:
        conn.close()
    if not ok:
        raise AdminError(f"{source} is not an opendo object export (no {KV_TABLE} table)")
    target = persist / class_name / f"{id}.sqlite"
    target.parent.mkdir(parents=True, exist_ok=True)
    existed = target.exists()
    if existed and not replace:
        raise AdminError(f"object {id} of {class_name} exists; add --replace to overwrite it")
    hold(target)
    try:
        for extra in (Path(f"{target}-wal"), Path(f"{target}-shm")):
            extra.unlink(missing_ok=True)
        tmp = target.with_suffix(".importing")
        shutil.copyfile(source, tmp)
        conn = sqlite3.connect(tmp)
        try:
            with conn:  # the name it had where it was exported from is not its name here
                conn.execute(f"DELETE FROM {META_TABLE} WHERE key = 'name'")
                if name is not None:
                    conn.execute(
                        f"INSERT INTO {META_TABLE} (key, value) VALUES ('name', ?)", (name,)
                    )
        finally:
            conn.close()
        tmp.replace(target)
    finally:
        release(target)
    return target


def delete(info: ObjectInfo) -> None:
    """Remove the object's database (refused while a server holds it)."""
    hold(info.path)
    try:
        for path in (info.path, Path(f"{info.path}-wal"), Path(f"{info.path}-shm")):
            path.unlink(missing_ok=True)
    finally:
        release(info.path)
