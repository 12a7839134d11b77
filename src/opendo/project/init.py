"""``opendo init``: a new project from a template, that runs and whose tests pass.

The templates are files under ``templates/<name>/`` (``.tmpl`` at the end of each name, so
no tool takes them for this package's own code; ``gitignore`` becomes ``.gitignore``), with
``{{name}}`` replaced by the project's name: the directory's, made of letters, digits and
dashes. Nothing is overwritten: a directory that already holds a project file, or any file a
template would write, is refused before anything is written.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from ..core.errors import ConfigError
from . import wrangler
from .config import CONFIG_NAME

__all__ = ["TEMPLATES", "init_project"]

TEMPLATES = {
    "counter": "a counter per name, in durable storage (GET /counter/<name>)",
    "chat": "a chat room per name over WebSockets, with hibernation (/room/<name>)",
    "cloudflare": "a Cloudflare Python Worker as Wrangler reads it (wrangler.jsonc, workers)",
}


def init_project(directory: Path, template: str = "counter") -> list[Path]:
    """Write the template into ``directory`` (made if missing); the files written."""
    if template not in TEMPLATES:
        raise ConfigError(f"no template {template!r}: the templates are {', '.join(TEMPLATES)}")
    source = resources.files(__package__).joinpath("templates", template)
    files = dict(_walk(source, ""))
    name = _project_name(directory)
    taken = [p for p in (CONFIG_NAME, *wrangler.FILE_NAMES) if (directory / p).exists()]
    taken += [p for p in files if (directory / p).exists() and p not in taken]
    if taken:
        raise ConfigError(
            f"{directory} already has {', '.join(sorted(taken))}: opendo init writes a new "
            "project and overwrites nothing (choose an empty or new directory)"
        )
    written = []
    for relative, text in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace("{{name}}", name), encoding="utf-8")
        written.append(target)
    return written


def _walk(folder: Traversable, prefix: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            found += _walk(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".tmpl"):
            name = entry.name.removesuffix(".tmpl")
            name = ".gitignore" if name == "gitignore" else name
            found.append((prefix + name, entry.read_text(encoding="utf-8")))
    return found


def _project_name(directory: Path) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", directory.resolve().name.lower()).strip("-")
    return name or "opendo-project"
