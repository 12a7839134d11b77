"""The ``opendo`` command: ``opendo dev``, ``opendo serve``."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .core.errors import StorageError
from .core.migrations import MigrationError, pending
from .project.config import ConfigError, check_persist_dir, load_config
from .project.loader import Runtime
from .server.gateway import LIMIT_HELP, Limits
from .storage.sqlite import check_persist_directory, read_migrations

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
    limits: dict[str, Any],
    workers: int = 1,
    cluster: dict[str, Any] | None = None,
    operations: dict[str, Any] | None = None,
) -> None:
    from .project.cluster import cluster_driver, cluster_options, cluster_secret
    from .project.serve import serve
    from .server.admin import AdminOptions

    ops = operations or {}
    admin = None
    if ops.get("admin_port") is not None:
        admin = AdminOptions(ops.get("admin_ip") or "127.0.0.1", ops["admin_port"])

    try:
        chosen = Limits(**{k: v for k, v in limits.items() if v is not None})
    except ValueError as exc:
        click.echo(f"opendo: {exc}", err=True)
        sys.exit(2)
    production = operations is not None and operations.get("production", False)
    secrets_from = "environ" if production else "dev"
    try:
        config = load_config(project, env, secrets_from)
        if config.missing_secrets:
            click.echo(
                f"opendo: {config.path.name}: secrets.required: "
                f"{', '.join(config.missing_secrets)} not in .dev.vars nor in the environment; "
                "the Worker's env will not have "
                + ("it" if len(config.missing_secrets) == 1 else "them"),
                err=True,
            )
        if production and not config.required_secrets and _dev_vars(config.root):
            click.echo(
                f"opendo: opendo serve does not read {_dev_vars(config.root)} (it is for "
                "opendo dev): list the secrets the Worker needs under [secrets] required and "
                "set them in the environment",
                err=True,
            )
        if config.ignored:
            click.echo(
                f"opendo: {config.path.name}: keys opendo has no use for, ignored: "
                + ", ".join(config.ignored),
                err=True,
            )
        Runtime.from_config(config)  # import the Worker module: fail now, and clearly
        persist = (persist_to or config.root / ".opendo" / "state").resolve()
        check_persist_dir(config, persist)  # not inside the assets
        check_persist_directory(persist)  # a read-only or full one: refused now, clearly
        options = cluster_options(config, workers=workers, **(cluster or {}))
        if options is None:
            pending(config.migrations, read_migrations(persist))  # and these, in the server
        else:
            cluster_secret(config)  # there, or refused now
            pending(config.migrations, cluster_driver(options).read_migrations())
        # [dev] is opendo dev's; opendo serve listens where its options say.
        dev_ip, dev_port = (None, None) if production else (config.dev_ip, config.dev_port)
        serve(
            config.root,
            host=ip or dev_ip or "127.0.0.1",
            port=port if port is not None else (8787 if dev_port is None else dev_port),
            env=env,
            persist_to=persist,
            reload=reload,
            log_level=log_level,
            limits=chosen,
            workers=workers,
            cluster=options,
            admin=admin,
            log_format=ops.get("log_format") or "text",
            access_log=ops.get("access_log", True),
            secrets_from=secrets_from,
        )
    except (ConfigError, MigrationError, StorageError) as exc:
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
    click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="The log's lines: text, or one JSON object each.",
    ),
    click.option(
        "--access-log/--no-access-log",
        default=True,
        show_default=True,
        help="A line per request: method, path, status, milliseconds, class and object.",
    ),
    click.option(
        "--admin-port",
        type=click.IntRange(0, 65535),
        default=None,
        help="Serve /metrics, /healthz and /readyz on this port (0 picks a free one; with "
        "--workers N each worker takes the first free of PORT..PORT+N-1). Default: off.",
    ),
    click.option(
        "--admin-ip",
        default="127.0.0.1",
        show_default=True,
        help="Address the admin listener listens on.",
    ),
]

_OPERATIONS = ("log_format", "access_log", "admin_port", "admin_ip")


def _dev_vars(root: Path) -> str | None:
    """The name of a .dev.vars file in ``root``, if there is one."""
    found = sorted(p.name for p in root.glob(".dev.vars*") if p.is_file())
    return found[0] if found else None


for _field in dataclasses.fields(Limits):
    _default = None if _field.name == "max_connections" else _field.default
    _options.append(
        click.option(
            "--" + _field.name.replace("_", "-"),
            _field.name,
            type=click.IntRange(min=1) if _field.type == "int" else click.FloatRange(min=0.001),
            default=None,
            help=LIMIT_HELP[_field.name] + ("" if _default is None else f" Default: {_default}."),
        )
    )


F = TypeVar("F", bound=Callable[..., Any])


def _with_options(f: F) -> F:
    for option in reversed(_options):
        f = option(f)
    return f


_LIMIT_NAMES = tuple(f.name for f in dataclasses.fields(Limits))


def _limits(options: dict[str, Any]) -> dict[str, Any]:
    return {name: options.pop(name) for name in _LIMIT_NAMES}


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
    **limits: Any,
) -> None:
    """Run PROJECT (a directory with opendo.toml) locally for development."""
    ops = {name: limits.pop(name) for name in _OPERATIONS}
    _run(project, port, ip, persist_to, env, reload, log_level, _limits(limits), operations=ops)


class _Workers(click.ParamType[int, Any]):
    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else (os.cpu_count() or 1)
            )
        try:
            count = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a number of processes (or auto)", param, ctx)
        if count < 1:
            self.fail(f"{count} is not a number of processes: at least 1", param, ctx)
        return count


@main.command()
@_with_options
@click.option(
    "--workers",
    type=_Workers(),
    default="1",
    show_default=True,
    help="Server processes on one port (auto: one per core). Each object lives in one of them; "
    "the others forward to it.",
)
@click.option(
    "--cluster",
    "cluster_url",
    default=None,
    metavar="postgresql://USER@HOST:PORT/DB",
    help="Serve as a node of the cluster whose objects this PostgreSQL database keeps "
    "(the node secret: OPENDO_CLUSTER_SECRET). Default: [cluster] url, else none.",
)
@click.option(
    "--advertise",
    default=None,
    metavar="HOST:PORT",
    help="Where the other nodes reach this one (with --workers N: PORT..PORT+N-1). "
    "Default: [cluster] advertise.",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(1, 3600),
    default=None,
    help="How long a node keeps its objects without renewing its lease; a failover takes "
    "about this long. Default: [cluster] lease_seconds, else 10.",
)
def serve(
    project: Path,
    port: int | None,
    ip: str | None,
    persist_to: Path | None,
    env: str | None,
    log_level: str,
    workers: int,
    cluster_url: str | None,
    advertise: str | None,
    lease_seconds: float | None,
    **limits: Any,
) -> None:
    """Run PROJECT in production (no reloading)."""
    cluster = {"url": cluster_url, "advertise": advertise, "lease_seconds": lease_seconds}
    ops = {name: limits.pop(name) for name in _OPERATIONS}
    ops["production"] = True
    _run(
        project,
        port,
        ip,
        persist_to,
        env,
        False,
        log_level,
        _limits(limits),
        workers,
        cluster,
        ops,
    )


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--template",
    type=click.Choice(["counter", "chat", "cloudflare"]),
    default="counter",
    show_default=True,
    help="counter: a counter per name; chat: a WebSocket chat room per name, hibernating; "
    "cloudflare: a Cloudflare Python Worker with its wrangler.jsonc.",
)
def init(directory: Path, template: str) -> None:
    """Make a new project in DIRECTORY (default: here) that runs with `opendo dev` and whose
    tests pass with `pytest`; nothing is overwritten."""
    from .project.init import init_project

    try:
        written = init_project(directory, template)
    except ConfigError as exc:
        click.echo(f"opendo init: {exc}", err=True)
        sys.exit(2)
    for path in written:
        click.echo(f"  {path}")
    shown = "" if directory.resolve() == Path.cwd() else f" {directory}"
    click.echo(f"Made a {template} project. Next: opendo dev{shown}   and: pytest{shown}")


@main.command()
@click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS...")
@click.option("--class", "class_name", default=None, help="Only requests this class answered.")
@click.option("--object", "object_name", default=None, help="Only requests of this object.")
@click.option("--status", default=None, help="Only requests with this status: 404, or 5xx.")
@click.option("--json", "as_json", is_flag=True, help="The lines as JSON, as the server sends.")
def tail(
    addresses: tuple[str, ...],
    class_name: str | None,
    object_name: str | None,
    status: str | None,
    as_json: bool,
) -> None:
    """Follow the log of running servers: ADDRESS is an admin listener (PORT, HOST:PORT) of
    `opendo serve --admin-port`, one per worker. With a filter, only access log lines."""
    from .server.tail import logs_url
    from .server.tail import tail as follow

    filters = {"class": class_name, "object": object_name, "status": status}
    try:
        urls = [logs_url(address, filters) for address in addresses]
    except ValueError as exc:
        click.echo(f"opendo tail: {exc}", err=True)
        sys.exit(2)
    try:
        sys.exit(follow(urls, as_json=as_json))
    except KeyboardInterrupt:
        sys.exit(0)


# -- opendo objects ---------------------------------------------------------------------------


@main.group()
def objects() -> None:
    """List, inspect, export, import and delete the objects of a project's storage."""


def _admin_options(f: F) -> F:
    f = click.option(
        "--namespace",
        "namespace",
        default=None,
        help="A binding (e.g. CHAT) or class (e.g. Chat) to limit to.",
    )(f)
    f = click.option(
        "--persist-to",
        type=click.Path(path_type=Path),
        default=None,
        help="The storage directory. Default: PROJECT/.opendo/state.",
    )(f)
    f = click.option(
        "--cluster",
        "cluster_url",
        default=None,
        metavar="postgresql://USER@HOST:PORT/DB",
        help="The objects of this cluster instead (default: [cluster] url of the project, "
        "if --persist-to is not given).",
    )(f)
    f = click.option(
        "--project",
        type=click.Path(path_type=Path),
        default=Path("."),
        show_default=True,
        help="The project directory (its opendo.toml maps bindings to classes).",
    )(f)
    return f


def _where(
    project: Path, persist_to: Path | None, namespace: str | None, cluster_url: str | None = None
) -> tuple[Path | str, str | None]:
    """Where the objects are (a persist directory, or a cluster's URL), and the class."""
    class_name = namespace
    try:
        config = load_config(project)
    except ConfigError:
        config = None
    if config is not None and namespace is not None:
        bound = {binding.name: binding.class_name for binding in config.bindings}
        classes = set(bound.values())
        for migration in config.migrations:
            classes.update(migration.new_classes, migration.new_sqlite_classes)
            classes.update(migration.deleted_classes, *migration.renamed_classes)
        if namespace in bound:
            class_name = bound[namespace]
        elif namespace not in classes:
            from .admin import AdminError

            named = ", ".join(f"{b} ({c})" for b, c in bound.items()) or "none"
            raise AdminError(
                f"--namespace {namespace!r}: {config.path.name} has no binding or class of that "
                f"name (its bindings: {named})"
            )
    if cluster_url is not None:
        return cluster_url, class_name
    if persist_to is None and config is not None and config.cluster.url is not None:
        return config.cluster.url, class_name
    root = config.root if config is not None else project
    return (persist_to or root / ".opendo" / "state"), class_name


def _admin(action: Callable[[], None]) -> None:
    from .admin import AdminError
    from .storage.sqlite import ObjectInUseError

    try:
        action()
    except (AdminError, ObjectInUseError, StorageError) as exc:
        click.echo(f"opendo: {exc}", err=True)
        sys.exit(1)


@objects.command("list")
@_admin_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def objects_list(
    project: Path,
    persist_to: Path | None,
    cluster_url: str | None,
    namespace: str | None,
    as_json: bool,
) -> None:
    """Every stored object: class, id, the name it was made from, size, alarm."""
    import json

    from .admin import AdminError
    from .admin import objects as stored
    from .project.cluster import where_shown

    try:
        persist, class_name = _where(project, persist_to, namespace, cluster_url)
        rows = list(stored(persist, class_name))
    except (AdminError, StorageError) as exc:
        click.echo(f"opendo: {exc}", err=True)
        sys.exit(1)
    if as_json:
        for o in rows:
            record = {
                "class": o.class_name,
                "id": o.id,
                "name": o.name,
                "size": o.size,
                "alarm": o.alarm,
            }
            click.echo(json.dumps(record))
        return
    if not rows:
        click.echo(f"no objects in {where_shown(persist)}")
        return
    click.echo(f"{'CLASS':<12} {'ID':<64} {'SIZE':>9}  {'ALARM':<25} NAME")
    for o in rows:
        click.echo(
            f"{o.class_name:<12} {o.id:<64} {o.size:>9}  {o.alarm or '-':<25} "
            f"{'-' if o.name is None else o.name}"
        )


@objects.command("show")
@click.argument("ref")
@_admin_options
def objects_show(
    ref: str, project: Path, persist_to: Path | None, cluster_url: str | None, namespace: str | None
) -> None:
    """Keys and values, SQL tables with row counts, of object REF (an id or a name)."""
    from .admin import find, show

    def run() -> None:
        persist, class_name = _where(project, persist_to, namespace, cluster_url)
        info = show(find(persist, ref, class_name))
        click.echo(f"{info['class']} {info['id']}")
        click.echo(f"  name:  {info['name'] if info['name'] is not None else '-'}")
        click.echo(f"  size:  {info['size']} bytes")
        click.echo(f"  alarm: {info['alarm'] or '-'}")
        click.echo(f"  keys ({len(info['kv'])}):")
        for key, value in info["kv"].items():
            click.echo(f"    {key!r}: {value!r:.200}")
        click.echo(f"  tables ({len(info['tables'])}):")
        for table, count in info["tables"].items():
            click.echo(f"    {table}: {count} rows")

    _admin(run)


@objects.command("query")
@click.argument("ref")
@click.argument("sql")
@_admin_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Rows shown at most.",
)
def objects_query(
    ref: str,
    sql: str,
    project: Path,
    persist_to: Path | None,
    cluster_url: str | None,
    namespace: str | None,
    as_json: bool,
    limit: int,
) -> None:
    """Run one read-only SQL statement (SELECT, or a PRAGMA such as table_info) on object
    REF's database (an id, a name, or a unique id prefix); safe while the server runs."""
    import json

    from .admin import find, query

    def shown(value: object) -> object:
        if isinstance(value, bytes):
            return "x'" + value.hex() + "'"
        return value

    def run() -> None:
        persist, class_name = _where(project, persist_to, namespace, cluster_url)
        result = query(find(persist, ref, class_name), sql, limit)
        if as_json:
            for row in result.rows:
                record = {c: shown(v) for c, v in zip(result.columns, row, strict=True)}
                click.echo(json.dumps(record))
        else:
            cells = [[str(shown(v)) for v in row] for row in result.rows]
            widths = [
                min(40, max([len(c), *(len(r[i]) for r in cells)]))
                for i, c in enumerate(result.columns)
            ]
            for line in [result.columns, *cells]:
                click.echo(
                    "  ".join(v[:40].ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                )
            n = len(result.rows)
            click.echo(f"({n} row{'s' if n != 1 else ''})", err=True)
        if result.truncated:
            click.echo(f"(more rows than --limit {limit}; only the first shown)", err=True)

    _admin(run)


@objects.command("export")
@click.argument("ref")
@_admin_options
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the SQLite file. Default: ./<id>.sqlite",
)
def objects_export(
    ref: str,
    project: Path,
    persist_to: Path | None,
    cluster_url: str | None,
    namespace: str | None,
    output: Path | None,
) -> None:
    """Write object REF's storage to one SQLite file (safe while the server runs)."""
    from .admin import export, find

    def run() -> None:
        persist, class_name = _where(project, persist_to, namespace, cluster_url)
        info = find(persist, ref, class_name)
        target = output or Path(f"{info.id}.sqlite")
        export(info, target)
        click.echo(f"exported {info.class_name} {info.id} to {target}")

    _admin(run)


@objects.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_admin_options
@click.option("--id", "id_", default=None, help="The object's id (64 hex digits).")
@click.option("--name", default=None, help="Or the name its id is made from.")
@click.option("--replace", is_flag=True, help="Overwrite the object if it exists.")
def objects_import(
    file: Path,
    project: Path,
    persist_to: Path | None,
    cluster_url: str | None,
    namespace: str | None,
    id_: str | None,
    name: str | None,
    replace: bool,
) -> None:
    """Put an exported FILE in place as an object of --namespace (refused while held)."""
    from .admin import AdminError, import_, namespace_key

    def run() -> None:
        persist, class_name = _where(project, persist_to, namespace, cluster_url)
        if class_name is None:
            raise AdminError("give --namespace: the binding or class the object belongs to")
        if (id_ is None) == (name is None):
            raise AdminError("give either --id or --name")
        key = namespace_key(persist, class_name)
        try:
            object_id = key.from_string(id_) if id_ is not None else key.from_name(name or "")
        except ValueError as exc:
            raise AdminError(str(exc)) from None
        target = import_(persist, class_name, str(object_id), name, file, replace=replace)
        click.echo(f"imported {file} as {class_name} {object_id} ({target})")

    _admin(run)


@objects.command("delete")
@click.argument("ref")
@_admin_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def objects_delete(
    ref: str,
    project: Path,
    persist_to: Path | None,
    cluster_url: str | None,
    namespace: str | None,
    yes: bool,
) -> None:
    """Delete object REF's storage (refused while a running server holds it)."""
    from .admin import delete, find

    def run() -> None:
        persist, class_name = _where(project, persist_to, namespace, cluster_url)
        info = find(persist, ref, class_name)
        label = f"{info.class_name} {info.id}" + (f" ({info.name})" if info.name else "")
        if not yes and not click.confirm(f"delete {label}?", default=False):
            click.echo("nothing deleted")
            return
        delete(info)
        click.echo(f"deleted {label}")

    _admin(run)
