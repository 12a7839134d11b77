"""The data explorer: web pages on the admin listener (``/explorer``) that read the
objects' storage — what ``opendo objects list``, ``show`` and ``query`` print.

- ``/explorer``: the stored objects by class — id, name, size, alarm (at most
  ``LIST_LIMIT``; ``?class=Chat`` for one class).
- ``/explorer/<Class>/<id>``: one object — its alarm, its KV entries (decoded, each value
  shown up to ``VALUE_CHARS`` characters), its SQL tables with their row counts, and a form
  for one read-only SQL statement (``?sql=SELECT …``), whose rows (at most ``QUERY_LIMIT``)
  or refusal are shown below it.

Everything is read through the storage driver (``StorageDriver.objects``, ``inspect``,
``query``), on the admin listener's thread: the object's own database is never opened for
writing, and a query that writes is refused by the driver. Pages are plain HTML, every value
escaped; nothing on them runs script.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ..core.codec import decode
from ..core.errors import StorageError

__all__ = ["LIST_LIMIT", "QUERY_LIMIT", "VALUE_CHARS", "page"]

LIST_LIMIT = 1000  # objects listed on /explorer
QUERY_LIMIT = 200  # rows a query shows
VALUE_CHARS = 300  # characters of a value shown

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em 2em; color: #1d1d1f; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #d0d0d5; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f2f2f5; } td.mono, code { font-family: ui-monospace, monospace; }
textarea { width: 100%; max-width: 60em; font-family: ui-monospace, monospace; }
.error { color: #a00; } .muted { color: #777; } a { color: #0645ad; }
"""


def page(storage: Any, path: str, query: str) -> tuple[str, str]:
    """The status line and the HTML of an explorer page."""
    if not all(hasattr(storage, name) for name in ("objects", "inspect", "query")):
        return "404 Not Found", _html("Explorer", "<p>This storage cannot be explored.</p>")
    fields = urllib.parse.parse_qs(query)
    parts = [urllib.parse.unquote(p) for p in path.removeprefix("/explorer").split("/") if p]
    if not parts:
        return "200 OK", _listing(storage, fields.get("class", [None])[-1])
    if len(parts) == 2:
        return _object(storage, parts[0], parts[1], fields.get("sql", [""])[-1])
    return "404 Not Found", _html(
        "Not found", "<p>No such page: try <a href='/explorer'>the objects</a>.</p>"
    )


def _listing(storage: Any, class_name: str | None) -> str:
    rows: list[list[str]] = []
    more = False
    for count, stored in enumerate(storage.objects(class_name)):
        if count == LIST_LIMIT:
            more = True
            break
        link = f"/explorer/{_q(stored.class_name)}/{_q(stored.id)}"
        rows.append(
            [
                _e(stored.class_name),
                f"<a href='{link}'><code>{_e(stored.id[:16])}…</code></a>",
                _e(stored.name) if stored.name is not None else "<span class='muted'>-</span>",
                _e(f"{stored.size:,}"),
                _e(_when(stored.alarm_ms)),
            ]
        )
    title = "Objects" + (f" of {class_name}" if class_name else "")
    body = (
        _table(["class", "id", "name", "bytes", "alarm"], rows)
        if rows
        else ("<p class='muted'>Nothing is stored yet.</p>")
    )
    if more:
        body += f"<p class='muted'>The first {LIST_LIMIT} only.</p>"
    return _html(title, body)


def _object(storage: Any, class_name: str, id: str, sql: str) -> tuple[str, str]:
    if not class_name.isidentifier() or not re.fullmatch(r"[0-9a-f]{64}", id):
        body = "<p>An object's page is /explorer/&lt;Class&gt;/&lt;64 hex digits of its id&gt;.</p>"
        return "404 Not Found", _html("Not found", body)
    contents = storage.inspect(class_name, id)
    if contents is None:
        body = f"<p>{_e(class_name)} {_e(id)} has nothing stored.</p>"
        return "404 Not Found", _html("Not found", body)
    stored = contents.object
    title = f"{stored.class_name} {stored.name or stored.id[:16]}"
    body = "<p><a href='/explorer'>All objects</a></p>"
    body += _table(
        ["id", "name", "bytes", "alarm"],
        [[f"<code>{_e(stored.id)}</code>", _e(stored.name or "-"), _e(f"{stored.size:,}"),
          _e(_when(stored.alarm_ms))]],
    )  # fmt: skip
    entries = [
        [f"<code>{_e(_key(k))}</code>", f"<code>{_e(_value(v))}</code>"] for k, v in contents.kv
    ]
    body += "<h2>Key-value entries</h2>"
    body += _table(["key", "value"], entries) if entries else "<p class='muted'>None.</p>"
    body += "<h2>SQL tables</h2>"
    tables = [
        [f"<code>{_e(name)}</code>", _e(f"{rows:,}")] for name, rows in contents.tables.items()
    ]
    body += _table(["table", "rows"], tables) if tables else "<p class='muted'>None.</p>"
    body += (
        "<h2>Query</h2><form method='get'>"
        f"<textarea name='sql' rows='3' placeholder='SELECT * FROM …'>{_e(sql)}</textarea>"
        "<br><button type='submit'>Run (read-only)</button></form>"
    )
    if sql.strip():
        try:
            result = storage.query(class_name, id, sql, QUERY_LIMIT)
        except StorageError as exc:
            body += f"<p class='error' id='query-error'>{_e(str(exc))}</p>"
        else:
            if result is not None:
                shown = [[f"<code>{_e(_cell(c))}</code>" for c in row] for row in result.rows]
                body += _table(result.columns, shown, id="query-result")
                note = f"{len(result.rows)} row{'' if len(result.rows) == 1 else 's'}"
                if result.truncated:
                    note += f" (the first {QUERY_LIMIT})"
                body += f"<p class='muted'>{_e(note)}</p>"
    return "200 OK", _html(title, body)


def _html(title: str, body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{_e(title)} · opendo explorer</title><style>{_STYLE}</style></head>"
        f"<body><h1>{_e(title)}</h1>{body}</body></html>"
    )


def _table(head: Iterable[str], rows: list[list[str]], id: str = "") -> str:
    attribute = f" id='{id}'" if id else ""
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    lines = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attribute}><thead><tr>{cells}</tr></thead><tbody>{lines}</tbody></table>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _key(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _value(data: bytes) -> str:
    try:
        shown = repr(decode(data))
    except Exception as exc:  # shown, not raised: the page is for looking
        shown = f"(cannot be decoded: {exc})"
    return shown if len(shown) <= VALUE_CHARS else shown[:VALUE_CHARS] + "…"


def _cell(value: object) -> str:
    if isinstance(value, bytes):
        return "x'" + value.hex() + "'"
    return "NULL" if value is None else str(value)
