"""Static assets, served before the Worker is asked (``[assets]`` in ``opendo.toml``).

A request matches an asset when its decoded path names a file under the directory:
``/app.js`` is ``app.js``, ``/docs/`` is ``docs/index.html``, ``/about`` may be
``about.html``. Paths that climb out of the directory, contain NUL bytes, or name a hidden
file (any segment starting with ``.``) never match. With
``not_found_handling = "single-page-application"``, a browser navigation that matches no
file gets ``index.html``; every other unmatched request goes to the Worker.

Everything in the directory is public. What must never be served is kept out of it, not
filtered here: the config refuses an assets directory that holds the project file, the
Worker module or ``.opendo`` (and ``check_persist_dir`` one that overlaps a persist
directory), so the source, the secrets in ``.dev.vars`` and the object databases are not
under it.
"""

from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from ..api.http import Headers

__all__ = ["Asset", "Assets"]


@dataclass(frozen=True)
class Asset:
    path: Path
    content_type: str
    etag: str
    size: int


class Assets:
    def __init__(self, directory: Path, not_found_handling: str = "none") -> None:
        self.directory = directory.resolve()
        self.not_found_handling = not_found_handling

    def match(self, raw_path: str, headers: Headers) -> Asset | None:
        """The asset a GET for ``raw_path`` should get, or None to ask the Worker."""
        asset = self._lookup(raw_path)
        if asset is None and self.not_found_handling == "single-page-application":
            if _is_navigation(headers):
                asset = self._file(self.directory / "index.html")
        return asset

    def _lookup(self, raw_path: str) -> Asset | None:
        path = unquote(raw_path)
        if "\x00" in path or "\\" in path:
            return None
        parts = [p for p in path.split("/") if p]
        if any(p.startswith(".") for p in parts):
            return None  # hidden files, and every "." or ".." segment
        base = self.directory.joinpath(*parts)
        candidates = (
            [base / "index.html"]
            if path.endswith("/") or not parts
            else [base, base.with_name(base.name + ".html"), base / "index.html"]
        )
        for candidate in candidates:
            asset = self._file(candidate)
            if asset is not None:
                return asset
        return None

    def _file(self, candidate: Path) -> Asset | None:
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.directory):
            return None  # a symlink pointing outside
        try:
            stat = os.stat(resolved)
        except OSError:
            return None
        if not os.path.isfile(resolved):
            return None
        content_type = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in (
            "application/javascript",
            "application/json",
        ):
            content_type += "; charset=utf-8"
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        return Asset(resolved, content_type, etag, stat.st_size)


def _is_navigation(headers: Headers) -> bool:
    mode = headers.get("sec-fetch-mode")
    if mode is not None:
        return mode == "navigate"
    return "text/html" in (headers.get("accept") or "")
