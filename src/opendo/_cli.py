"""The ``opendo`` command: ``opendo dev``, ``opendo serve``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ._app import Runtime
from ._config import ConfigError, load_config

__all__ = ["main"]


@click.group()
@click.version_option(package_name="opendo")
def main() -> None:
    """opendo: Durable Objects for Python."""


def _run(
    project: Path,
    port: int | None,
    ip: str | None,
    persist_to: Path | None,
    env: str | None,
    reload: bool,
    log_level: str,
) -> None:
    from ._server import serve

    try:
        config = load_config(project, env)
        Runtime.from_config(config)  # import the Worker module: fail now, and clearly
        serve(
            config.root,
            host=ip or config.dev_ip or "127.0.0.1",
            port=port
            if port is not None
            else (8787 if config.dev_port is None else config.dev_port),
            env=env,
            persist_to=(persist_to or config.root / ".opendo" / "state").resolve(),
            reload=reload,
            log_level=log_level,
        )
    except ConfigError as exc:
        click.echo(f"opendo: {exc}", err=True)
        sys.exit(2)


_options = [
    click.argument("project", default=".", type=click.Path(path_type=Path)),
    click.option(
        "--port",
        type=click.IntRange(0, 65535),
        default=None,
        help="Port to listen on (0 picks a free one). Default: [dev] port or 8787.",
    ),
    click.option("--ip", default=None, help="Address to listen on. Default: 127.0.0.1."),
    click.option(
        "--persist-to",
        type=click.Path(path_type=Path),
        default=None,
        help="Directory for object storage. Default: PROJECT/.opendo/state.",
    ),
    click.option("--env", default=None, help="Use the [env.NAME] section of opendo.toml."),
    click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
        help="What the server logs (to stderr).",
    ),
]


F = TypeVar("F", bound=Callable[..., Any])


def _with_options(f: F) -> F:
    for option in reversed(_options):
        f = option(f)
    return f


@main.command()
@_with_options
@click.option(
    "--reload/--no-reload",
    default=True,
    show_default=True,
    help="Restart when a source file changes.",
)
def dev(
    project: Path,
    port: int | None,
    ip: str | None,
    persist_to: Path | None,
    env: str | None,
    log_level: str,
    reload: bool,
) -> None:
    """Run PROJECT (a directory with opendo.toml) locally for development."""
    _run(project, port, ip, persist_to, env, reload, log_level)


@main.command()
@_with_options
def serve(
    project: Path,
    port: int | None,
    ip: str | None,
    persist_to: Path | None,
    env: str | None,
    log_level: str,
) -> None:
    """Run PROJECT in production (no reloading)."""
    _run(project, port, ip, persist_to, env, False, log_level)
