"""Cloudflare's project files as they are: ``wrangler.json``, ``wrangler.jsonc``, ``wrangler.toml``.

A project without an ``opendo.toml`` is read from its Wrangler configuration, looked for in
Wrangler's order (``wrangler.json``, ``wrangler.jsonc``, ``wrangler.toml``). JSON may have
comments (``//``, ``/* */``) and trailing commas, as Wrangler allows. Its keys fall in three
kinds:

- the keys opendo reads (``name``, ``main``, ``vars``, ``secrets``, ``durable_objects``,
  ``migrations``, ``assets``, ``env``, and opendo's own ``runtime``, ``dev``, ``cluster``),
  checked as in ``opendo.toml``;
- keys that ask for something opendo does not provide (a KV namespace, an R2 bucket, a cron
  trigger, …): errors that name the key, since the Worker would fail without it;
- everything else (``$schema``, ``compatibility_date``, ``observability``, ``workers_dev``,
  ``placement``, ``routes``, …): accepted, and listed once when the server starts.

``exports``, Wrangler's declarative alternative to ``migrations``, declares the live Durable
Object classes (``{"Chat": {"type": "durable-object", "storage": "sqlite"}}``); opendo reads it
as one migration that creates them. Its other states (deleted, renamed, transferred) are
refused with what to write instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError

__all__ = ["FILE_NAMES", "find_wrangler", "parse_jsonc", "translate"]

FILE_NAMES = ("wrangler.json", "wrangler.jsonc", "wrangler.toml")

OPENDO_KEYS = {
    "name", "main", "vars", "secrets", "durable_objects", "migrations", "assets", "env",
    "runtime", "dev", "cluster",
}  # fmt: skip
# Bindings and features the Worker would use, which opendo does not provide.
MISSING = {
    "kv_namespaces": "KV namespaces",
    "r2_buckets": "R2 buckets",
    "d1_databases": "D1 databases",
    "services": "service bindings",
    "queues": "queues",
    "ai": "Workers AI",
    "vectorize": "Vectorize indexes",
    "hyperdrive": "Hyperdrive",
    "analytics_engine_datasets": "Analytics Engine",
    "browser": "Browser Rendering",
    "workflows": "Workflows",
    "dispatch_namespaces": "dispatch namespaces",
    "mtls_certificates": "mTLS certificates",
    "send_email": "Email",
    "pipelines": "Pipelines",
    "containers": "Containers",
    "secrets_store_secrets": "the Secrets Store",
    "images": "Images",
    "version_metadata": "version metadata",
    "unsafe": "unsafe bindings",
    "triggers": "cron triggers",
    "tail_consumers": "tail Workers",
}
_DEV_KEYS = {"port", "ip", "local_protocol"}
_ASSETS_IGNORED = {"html_handling"}


def find_wrangler(directory: Path) -> Path | None:
    for name in FILE_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def parse_jsonc(text: str, path: Path) -> Any:
    """JSON with ``//`` and ``/* */`` comments and trailing commas (Wrangler's dialect)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ConfigError(f"{path}: a /* comment */ is not closed")
            out.append(" " * (end + 2 - i))  # keeps the error positions of json's messages
            i = end + 2
        elif c in "]}":
            k = len(out) - 1
            while k >= 0 and out[k].isspace():
                k -= 1
            if k >= 0 and out[k] == ",":
                out[k] = " "  # a trailing comma
            out.append(c)
            i += 1
        else:
            out.append(c)
            i += 1
    try:
        return json.loads("".join(out))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None


def translate(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A Wrangler configuration as opendo's keys, and the keys opendo has no use for."""
    ignored: list[str] = []
    top = _section(data, path, "", ignored)
    if "exports" in data:
        if "migrations" in data:
            raise ConfigError(
                f"{path}: exports: use either exports or migrations, not both (opendo reads "
                "one history of the Durable Object classes)"
            )
        top["migrations"] = [_exports(data["exports"], path)]
    if "env" in top:
        envs = top["env"]
        if isinstance(envs, dict):
            top["env"] = {
                name: _section(section, path, f"env.{name}.", ignored)
                if isinstance(section, dict)
                else section
                for name, section in envs.items()
            }
    return top, tuple(ignored)


def _section(data: dict[str, Any], path: Path, prefix: str, ignored: list[str]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in data.items():
        if key in MISSING:
            if key == "triggers" and not (isinstance(value, dict) and value.get("crons")):
                ignored.append(prefix + key)
                continue
            raise ConfigError(
                f"{path}: {prefix}{key}: opendo does not provide {MISSING[key]}; remove it, "
                "or run this Worker on Cloudflare"
            )
        if key == "exports":
            continue  # (translate's)
        if key not in OPENDO_KEYS:
            ignored.append(prefix + key)
            continue
        if key == "dev" and isinstance(value, dict):
            ignored += [f"{prefix}dev.{k}" for k in value if k not in _DEV_KEYS]
            value = {k: v for k, v in value.items() if k in _DEV_KEYS}
        if key == "assets" and isinstance(value, dict):
            if value.get("run_worker_first"):
                raise ConfigError(
                    f"{path}: {prefix}assets.run_worker_first: opendo serves assets before "
                    "the Worker; remove it"
                )
            ignored += [f"{prefix}assets.{k}" for k in value if k in _ASSETS_IGNORED]
            value = {
                k: v for k, v in value.items() if k not in _ASSETS_IGNORED | {"run_worker_first"}
            }
        kept[key] = value
    return kept


def _exports(exports: Any, path: Path) -> dict[str, Any]:
    if not isinstance(exports, dict):
        raise ConfigError(f"{path}: exports: expected a map of class name to export")
    classes = []
    for name, export in exports.items():
        key = f"exports.{name}"
        if not isinstance(export, dict):
            raise ConfigError(f'{path}: {key}: expected a table, e.g. {{"type": "durable-object"}}')
        kind = export.get("type", "durable-object")
        if kind != "durable-object":
            raise ConfigError(f"{path}: {key}.type: opendo runs Durable Objects only, not {kind!r}")
        state = export.get("state", "created")
        if state != "created":
            raise ConfigError(
                f"{path}: {key}.state: {state!r} is not read by opendo yet; write the class's "
                "history as [[migrations]] (renamed_classes, deleted_classes) instead of exports"
            )
        classes.append(name)
    return {"tag": "exports", "new_sqlite_classes": classes}
