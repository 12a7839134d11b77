"""``opendo tail``: the log of running servers, from their admin listeners' ``/logs``.

Each address (``PORT``, ``HOST:PORT`` or ``http://HOST:PORT``; one per worker of
``--workers N``) is read on a thread of its own and its lines are printed as they come,
merged: as text (``time level logger: message``) or, with ``as_json``, as the JSON the
server sends. The filters go to the server, which sends only what matches.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import IO

__all__ = ["TIMEOUT", "logs_url", "tail"]

# Seconds to reach an admin listener, and without a line from it (a quiet stream sends an
# empty one every 5): longer, and the server is taken as gone.
TIMEOUT = 30.0


def logs_url(address: str, filters: dict[str, str | None]) -> str:
    """The /logs URL of an admin listener's address, with the filters that are set."""
    address = address.strip()
    if address.isdigit():
        address = f"127.0.0.1:{address}"
    if "://" not in address:
        address = "http://" + address
    parts = urllib.parse.urlsplit(address)
    if parts.scheme != "http" or not parts.port:
        raise ValueError(
            f"{address!r} is not an admin listener's address: PORT, HOST:PORT or "
            "http://HOST:PORT (what --admin-port says)"
        )
    query = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
    return f"http://{parts.netloc}/logs" + (f"?{query}" if query else "")


def tail(
    urls: Sequence[str],
    *,
    as_json: bool = False,
    out: IO[str] = sys.stdout,
    err: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
) -> int:
    """Print the streams' lines until every stream ends; 0 if each was reached and read to
    its end, 1 if one could not be."""
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    failures: list[str] = []

    def read(url: str) -> None:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                err(f"opendo tail: reading {url}")
                for raw in response:
                    text = raw.decode("utf-8", "replace").strip()
                    if text:
                        lines.put((url, text))
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: {exc.code} {exc.read().decode(errors='replace').strip()}")
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            failures.append(
                f"cannot read {url}: {reason} (is the server running with --admin-port?)"
            )
        finally:
            lines.put((url, None))

    for url in urls:
        threading.Thread(target=read, args=(url,), daemon=True).start()
    open_streams = len(urls)
    while open_streams:
        url, text = lines.get()
        if text is None:
            open_streams -= 1
            continue
        out.write((text if as_json else _as_text(text)) + "\n")
        out.flush()
    for failure in failures:
        err(f"opendo tail: {failure}")
    return 1 if failures else 0


def _as_text(line: str) -> str:
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    text = f"{entry.get('time', '-')} {str(entry.get('level', '')).upper()} "
    text += f"{entry.get('logger', '')}: {entry.get('message', '')}"
    if entry.get("exception"):
        text += "\n" + str(entry["exception"])
    return text
