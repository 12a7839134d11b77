"""Migrations: how a project's Durable Object classes appear, get renamed and go away.

As in ``wrangler.toml``, ``opendo.toml`` lists them::

    [[migrations]]
    tag = "v1"
    new_sqlite_classes = ["Chat"]

    [[migrations]]
    tag = "v2"
    renamed_classes = [{ from = "Chat", to = "Room" }]   # the objects and their data move

    [[migrations]]
    tag = "v3"
    deleted_classes = ["Archive"]                        # its objects' data is removed

Each migration is applied once per persist directory, in the order of the list; the tags
applied so far are recorded there (``migrations.json``). Within one migration, new classes
come first, then renames, then deletions.

A class keeps its namespace through renames: ids made before ``Chat`` became ``Room`` stay
valid, and ``id_from_name("lobby")`` still finds the same object. A namespace's ids derive
from its *label* — the name the class had when a migration created it (or its own name, for
a class bound without migrations), made unique with the tag when an earlier class used it.

This module is pure: ``simulate`` checks a list and computes the labels; ``pending`` compares
a list with what a persist directory records; ``apply`` drives a storage driver through the
steps (``rename_class``, ``delete_class``, ``write_migrations``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Migration",
    "MigrationError",
    "MigrationRecord",
    "Outcome",
    "apply",
    "pending",
    "simulate",
]


@dataclass(frozen=True)
class Migration:
    tag: str
    new_classes: tuple[str, ...] = ()
    new_sqlite_classes: tuple[str, ...] = ()
    renamed_classes: tuple[tuple[str, str], ...] = ()
    deleted_classes: tuple[str, ...] = ()


class MigrationError(Exception):
    """The migrations cannot be applied to this persist directory; the message says why."""


@dataclass(frozen=True)
class MigrationRecord:
    """What a persist directory records: the tags applied, in order, and each class's label."""

    applied: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"applied": list(self.applied), "labels": dict(sorted(self.labels.items()))}

    @classmethod
    def from_json(cls, data: Any) -> MigrationRecord:
        if (
            not isinstance(data, dict)
            or not isinstance(applied := data.get("applied"), list)
            or not all(isinstance(tag, str) for tag in applied)
            or not isinstance(labels := data.get("labels", {}), dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            raise ValueError('expected {"applied": [tags], "labels": {class: label}}')
        return cls(tuple(applied), dict(labels))


@dataclass(frozen=True)
class Outcome:
    """The classes after a list of migrations: the live ones with their labels, and how each
    class that is gone went (``"deleted by migration 'v3'"``)."""

    labels: dict[str, str]
    gone: dict[str, str]


Fail = Callable[[str, str], Exception]  # (config key, message) -> the exception to raise


def simulate(migrations: Sequence[Migration], fail: Fail) -> Outcome:
    """Walk the list: every class it renames or deletes must exist at that point, every class
    it creates (or renames to) must not. ``fail(key, message)`` makes the error."""
    live: dict[str, str] = {}
    gone: dict[str, str] = {}
    used_labels: set[str] = set()
    for i, m in enumerate(migrations):
        key = f"migrations[{i}]"
        for field_name in ("new_classes", "new_sqlite_classes"):
            for j, name in enumerate(getattr(m, field_name)):
                if name in live:
                    raise fail(
                        f"{key}.{field_name}[{j}]",
                        f"class {name!r} already exists (an earlier migration created it); "
                        "each class is created once",
                    )
                label = name if name not in used_labels else f"{name}@{m.tag}"
                used_labels.add(label)
                live[name] = label
                gone.pop(name, None)
        for j, (old, new) in enumerate(m.renamed_classes):
            where = f"{key}.renamed_classes[{j}]"
            if old not in live:
                raise fail(f"{where}.from", _missing(old, gone, "renamed"))
            if new in live:
                raise fail(f"{where}.to", f"class {new!r} already exists; rename to a new name")
            live[new] = live.pop(old)
            gone.pop(new, None)
            gone[old] = f"renamed to {new!r} by migration {m.tag!r}"
        for j, name in enumerate(m.deleted_classes):
            if name not in live:
                raise fail(f"{key}.deleted_classes[{j}]", _missing(name, gone, "deleted"))
            del live[name]
            gone[name] = f"deleted by migration {m.tag!r}"
    return Outcome(live, gone)


def _missing(name: str, gone: dict[str, str], verb: str) -> str:
    if name in gone:
        return f"class {name!r} cannot be {verb}: it was {gone[name]}"
    return (
        f"class {name!r} cannot be {verb}: no earlier migration creates it "
        "(new_classes or new_sqlite_classes)"
    )


def pending(migrations: Sequence[Migration], record: MigrationRecord) -> list[Migration]:
    """The migrations still to apply, given what the persist directory records.

    The applied tags must be the start of the list: a migration applied cannot be removed
    from it, reordered, or preceded by one added later.
    """
    tags = [m.tag for m in migrations]
    for i, tag in enumerate(record.applied):
        if tag not in tags:
            raise MigrationError(
                f"the persist directory has applied migration {tag!r}, which opendo.toml no "
                "longer lists: a migration cannot be removed once applied"
            )
        if i >= len(tags) or tags[i] != tag:
            new = tags[i]
            raise MigrationError(
                f"migration {new!r} comes before {tag!r} in opendo.toml, but {tag!r} is "
                f"already applied: add new migrations at the end of the list"
            )
    return list(migrations[len(record.applied) :])


class MigrationTarget(Protocol):
    """What ``apply`` needs of a storage driver."""

    def read_migrations(self) -> MigrationRecord: ...

    def write_migrations(self, record: MigrationRecord) -> None: ...

    def rename_class(self, old: str, new: str) -> None: ...

    def delete_class(self, name: str) -> None: ...


def apply(target: MigrationTarget, migrations: Sequence[Migration]) -> dict[str, str]:
    """Apply what is pending, recording each migration as it completes; the labels of the
    classes that exist afterwards. A step repeated after a crash finds its work done."""
    record = target.read_migrations()
    todo = pending(migrations, record)
    applied = list(record.applied)
    for m in todo:
        for old, new in m.renamed_classes:
            target.rename_class(old, new)
        for name in m.deleted_classes:
            target.delete_class(name)
        applied.append(m.tag)
        done = simulate(migrations[: len(applied)], _internal)
        target.write_migrations(MigrationRecord(tuple(applied), done.labels))
    return simulate(migrations, _internal).labels


def _internal(key: str, message: str) -> Exception:
    # The list was checked when the config was loaded.
    return MigrationError(f"{key}: {message}")
