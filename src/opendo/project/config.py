"""``opendo.toml``: the project file, shaped like ``wrangler.toml``.

::

    name = "chat"
    main = "worker.py"                 # the Worker module (optionally "worker.py:Default")

    [vars]
    GREETING = "hello"

    [[durable_objects.bindings]]
    name = "CHAT"
    class_name = "Chat"

    [[migrations]]
    tag = "v1"
    new_sqlite_classes = ["Chat"]

    [assets]
    directory = "public"
    not_found_handling = "single-page-application"   # or "none"

    [runtime]
    idle_timeout = 70                  # seconds before an idle object is evicted
    open_objects = 2000                # objects with open storage; past it the longest idle
                                       # are evicted at once (default: RLIMIT_NOFILE / 10)

    [cluster]                          # opendo serve in a cluster (or --cluster URL ...)
    url = "postgresql://opendo@db.internal:5432/opendo"
    advertise = "10.0.0.5:7000"        # where the other nodes reach this one
    lease_seconds = 10

    [env.prod]                         # `--env prod`: these keys replace the top-level ones
    vars = { GREETING = "hi" }

Secrets never come from the TOML, which only names them (``[secrets] required = ["API_KEY"]``,
Wrangler's ``secrets.required``). Where their values come from depends on what runs
(``secrets_from``):

- ``"dev"`` (``opendo dev``, ``create_app``, the pytest plugin): ``.dev.vars`` (``KEY=value``
  lines) beside the file, or ``.dev.vars.<env>`` when an environment is selected. With
  ``secrets.required``, only those names, from that file or else the process environment, as
  ``wrangler dev`` does; one that is in neither is left out and named in ``missing_secrets``.
- ``"environ"`` (``opendo serve``): the process environment, for the names in
  ``secrets.required``; one that is not set is an error. ``.dev.vars`` is not read.

The cluster's node secret, ``OPENDO_CLUSTER_SECRET``, comes from the environment, or in
development from ``.dev.vars``. Every mistake is reported as a ``ConfigError`` that names the
file, the key and what was expected.

The assets directory is served to anyone, so it must hold nothing else: one that contains
the project file, the Worker module or opendo's own ``.opendo`` directory (the default
persist directory) is refused, as is — by ``check_persist_dir``, once the persist directory
is known — a persist directory that overlaps it.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.migrations import Migration, simulate
from . import wrangler

__all__ = [
    "CLUSTER_SECRET",
    "AssetsConfig",
    "Binding",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "Migration",
    "check_persist_dir",
    "load_config",
]

CONFIG_NAME = "opendo.toml"
CLUSTER_SECRET = "OPENDO_CLUSTER_SECRET"  # the nodes' shared secret: environment or .dev.vars
_NOT_FOUND_HANDLING = ("none", "single-page-application")
_TOP_KEYS = {
    "name",
    "main",
    "vars",
    "secrets",
    "durable_objects",
    "migrations",
    "assets",
    "runtime",
    "dev",
    "cluster",
    "env",
    "compatibility_date",
    "compatibility_flags",
}
_ENV_KEYS = _TOP_KEYS - {"env", "migrations"}


@dataclass(frozen=True)
class Binding:
    name: str
    class_name: str


@dataclass(frozen=True)
class AssetsConfig:
    directory: Path
    not_found_handling: str = "none"
    key: str = field(default="assets.directory", compare=False)  # where the file sets it


@dataclass(frozen=True)
class ClusterConfig:
    """The ``[cluster]`` table: what ``opendo serve --cluster ...`` takes as options."""

    url: str | None = None
    advertise: str | None = None
    lease_seconds: float | None = None
    listen: str | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    name: str
    main: Path
    entrypoint: str | None
    vars: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    required_secrets: tuple[str, ...] = ()  # [secrets] required
    missing_secrets: tuple[str, ...] = ()  # of those, the ones with no value (dev only)
    bindings: tuple[Binding, ...] = ()
    migrations: tuple[Migration, ...] = ()
    assets: AssetsConfig | None = None
    idle_timeout: float = 70.0
    hibernation_timeout: float = 10.0
    open_objects: int | None = None  # None: runtime.open_budget()
    dev_port: int | None = None
    dev_ip: str | None = None
    env_name: str | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    ignored: tuple[str, ...] = ()  # keys of a Wrangler file opendo has no use for

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def worker_secrets(self) -> dict[str, str]:
        """The secrets the Worker's ``env`` gets: all but the cluster's node secret."""
        return {k: v for k, v in self.secrets.items() if k != CLUSTER_SECRET}


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.env_prefix = ""
        self.from_env: set[str] = set()  # top-level keys that [env.NAME] replaced

    def fail(self, key: str, message: str) -> ConfigError:
        if key.split(".")[0].split("[")[0] in self.from_env:
            key = self.env_prefix + key
        return ConfigError(f"{self.path}: {key}: {message}")

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_kind(value)}")
        return value

    def string(self, value: Any, key: str, what: str = "a string") -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected {what}, got {_kind(value)}")
        return value

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"expected a list of class names (strings), got {_kind(value)}")
        return tuple(value)

    def keys(self, table: dict[str, Any], allowed: set[str], key: str) -> None:
        for k in table:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(where, f"unknown key; expected one of {', '.join(sorted(allowed))}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"the string {value!r}" if value else "an empty string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def find_config(location: str | Path) -> Path:
    """The project file: ``location`` itself, or in that directory ``opendo.toml`` — else
    Cloudflare's ``wrangler.json``, ``wrangler.jsonc`` or ``wrangler.toml`` (project.wrangler)."""
    path = Path(location)
    if path.is_dir():
        found = path / CONFIG_NAME
        if not found.is_file():
            found = wrangler.find_wrangler(path) or found
        path = found
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such file (expected an {CONFIG_NAME} project file, or Cloudflare's "
            f"{', '.join(wrangler.FILE_NAMES)})"
        )
    return path.resolve()


def load_config(
    location: str | Path = ".", env: str | None = None, secrets_from: str = "dev"
) -> Config:
    """Read ``opendo.toml`` from a directory (or the file itself), for environment ``env``;
    secrets from ``.dev.vars`` (``secrets_from="dev"``) or the environment (``"environ"``)."""
    if secrets_from not in ("dev", "environ"):
        raise ValueError(f"secrets_from is 'dev' or 'environ', not {secrets_from!r}")
    path = find_config(location)
    check = _Checker(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".json", ".jsonc"):
            data = wrangler.parse_jsonc(text, path)
        else:
            data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the file is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top")
    ignored: tuple[str, ...] = ()
    if path.name in wrangler.FILE_NAMES:
        data, ignored = wrangler.translate(data, path)
    check.keys(data, _TOP_KEYS, "")

    if env is not None:
        envs = check.table(data.get("env", {}), "env")
        if env not in envs:
            known = ", ".join(sorted(envs)) or "none are defined"
            raise ConfigError(f"{path}: env.{env}: no such environment ({known})")
        section = check.table(envs[env], f"env.{env}")
        check.keys(section, _ENV_KEYS, f"env.{env}")
        data = {**data, **section}
        check.env_prefix = f"env.{env}."
        check.from_env = set(section)

    name = check.string(data.get("name"), "name", "a project name (string)")
    main_value = check.string(
        data.get("main"), "main", 'the Worker module, e.g. "worker.py" or "worker.py:Default"'
    )
    main_file, _, entrypoint = main_value.partition(":")
    main = (path.parent / main_file).resolve()
    if main.suffix != ".py":
        raise check.fail("main", f"expected a Python file (*.py), got {main_file!r}")
    if not main.is_file():
        raise check.fail("main", f"the file {main} does not exist")
    if entrypoint and not entrypoint.isidentifier():
        raise check.fail("main", f"{entrypoint!r} after ':' is not a class name")

    vars_ = check.table(data.get("vars", {}), "vars")

    bindings: list[Binding] = []
    do = check.table(data.get("durable_objects", {}), "durable_objects")
    check.keys(do, {"bindings"}, "durable_objects")
    raw_bindings = do.get("bindings", [])
    if not isinstance(raw_bindings, list):
        raise check.fail("durable_objects.bindings", "expected an array of tables")
    seen: set[str] = set()
    for i, raw in enumerate(raw_bindings):
        key = f"durable_objects.bindings[{i}]"
        item = check.table(raw, key)
        check.keys(item, {"name", "class_name", "script_name", "environment"}, key)
        bname = check.string(item.get("name"), f"{key}.name", "a binding name (string)")
        if not bname.isidentifier():
            raise check.fail(f"{key}.name", f"{bname!r} is not a valid identifier")
        if bname in seen:
            raise check.fail(f"{key}.name", f"the binding {bname!r} is defined twice")
        seen.add(bname)
        cname = check.string(item.get("class_name"), f"{key}.class_name", "a class name (string)")
        bindings.append(Binding(bname, cname))

    migrations: list[Migration] = []
    raw_migrations = data.get("migrations", [])
    if not isinstance(raw_migrations, list):
        raise check.fail("migrations", "expected an array of tables ([[migrations]])")
    tags: set[str] = set()
    for i, raw in enumerate(raw_migrations):
        key = f"migrations[{i}]"
        item = check.table(raw, key)
        check.keys(
            item,
            {"tag", "new_classes", "new_sqlite_classes", "renamed_classes", "deleted_classes"},
            key,
        )
        tag = check.string(item.get("tag"), f"{key}.tag", "a unique tag (string)")
        if tag in tags:
            raise check.fail(f"{key}.tag", f"the tag {tag!r} is used twice; tags must be unique")
        tags.add(tag)
        renamed: list[tuple[str, str]] = []
        raw_renamed = item.get("renamed_classes", [])
        if not isinstance(raw_renamed, list):
            raise check.fail(
                f"{key}.renamed_classes",
                'expected an array of {from = "Old", to = "New"} tables, '
                f"got {_kind(raw_renamed)}",
            )
        for j, pair in enumerate(raw_renamed):
            rkey = f"{key}.renamed_classes[{j}]"
            pair = check.table(pair, rkey)
            check.keys(pair, {"from", "to"}, rkey)
            renamed.append(
                (
                    check.string(pair.get("from"), f"{rkey}.from"),
                    check.string(pair.get("to"), f"{rkey}.to"),
                )
            )
        migrations.append(
            Migration(
                tag=tag,
                new_classes=check.strings(item.get("new_classes", []), f"{key}.new_classes"),
                new_sqlite_classes=check.strings(
                    item.get("new_sqlite_classes", []), f"{key}.new_sqlite_classes"
                ),
                renamed_classes=tuple(renamed),
                deleted_classes=check.strings(
                    item.get("deleted_classes", []), f"{key}.deleted_classes"
                ),
            )
        )

    _check_classes(check, bindings, migrations)

    assets: AssetsConfig | None = None
    if "assets" in data:
        table = check.table(data["assets"], "assets")
        check.keys(table, {"directory", "not_found_handling", "binding"}, "assets")
        directory = check.string(table.get("directory"), "assets.directory", "a directory path")
        adir = (path.parent / directory).resolve()
        if not adir.is_dir():
            raise check.fail("assets.directory", f"the directory {adir} does not exist")
        _check_assets_hold_no_project_files(check, adir, main)
        handling = table.get("not_found_handling", "none")
        if handling not in _NOT_FOUND_HANDLING:
            raise check.fail(
                "assets.not_found_handling",
                f"expected one of {', '.join(map(repr, _NOT_FOUND_HANDLING))}, "
                f"got {_kind(handling)}",
            )
        key = (check.env_prefix if "assets" in check.from_env else "") + "assets.directory"
        assets = AssetsConfig(adir, handling, key)

    runtime = check.table(data.get("runtime", {}), "runtime")
    check.keys(runtime, {"idle_timeout", "hibernation_timeout", "open_objects"}, "runtime")
    idle = _seconds(check, runtime, "idle_timeout", 70.0)
    hibernation = _seconds(check, runtime, "hibernation_timeout", 10.0)
    open_objects = runtime.get("open_objects")
    if open_objects is not None and (
        isinstance(open_objects, bool) or not isinstance(open_objects, int) or open_objects < 1
    ):
        raise check.fail(
            "runtime.open_objects",
            f"expected a whole number of objects, at least 1, got {_kind(open_objects)}",
        )

    dev = check.table(data.get("dev", {}), "dev")
    check.keys(dev, {"port", "ip", "local_protocol"}, "dev")
    port = dev.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        raise check.fail("dev.port", f"expected a port number 0..65535, got {_kind(port)}")
    ip = dev.get("ip")
    if ip is not None:
        check.string(ip, "dev.ip", "an IP address")

    cluster = _cluster(check, check.table(data.get("cluster", {}), "cluster"))
    required = _required_secrets(check, data.get("secrets"))
    secrets, missing = _secrets(path, env, required, secrets_from)

    return Config(
        path=path,
        name=name,
        main=main,
        entrypoint=entrypoint or None,
        vars=dict(vars_),
        secrets=secrets,
        required_secrets=required,
        missing_secrets=missing,
        bindings=tuple(bindings),
        migrations=tuple(migrations),
        assets=assets,
        idle_timeout=idle,
        hibernation_timeout=hibernation,
        open_objects=open_objects,
        dev_port=port,
        dev_ip=ip,
        env_name=env,
        cluster=cluster,
        ignored=ignored,
    )


def _cluster(check: _Checker, table: dict[str, Any]) -> ClusterConfig:
    if "secret" in table:
        raise check.fail(
            "cluster.secret",
            "the node secret is never read from the TOML: set OPENDO_CLUSTER_SECRET in the "
            "environment or in .dev.vars",
        )
    check.keys(table, {"url", "advertise", "lease_seconds", "listen"}, "cluster")
    url = table.get("url")
    if url is not None:
        check.string(url, "cluster.url", "a PostgreSQL URL (postgresql://USER@HOST:PORT/DB)")
    for key in ("advertise", "listen"):
        if table.get(key) is not None:
            check.string(table[key], f"cluster.{key}", "HOST:PORT")
    lease = table.get("lease_seconds")
    if lease is not None and (
        isinstance(lease, bool) or not isinstance(lease, int | float) or not 1 <= lease <= 3600
    ):
        raise check.fail("cluster.lease_seconds", f"expected seconds 1..3600, got {_kind(lease)}")
    return ClusterConfig(
        url, table.get("advertise"), None if lease is None else float(lease), table.get("listen")
    )


def _check_classes(check: _Checker, bindings: list[Binding], migrations: list[Migration]) -> None:
    """The migrations make sense in order, and — once a project has any — each binding names
    a class they leave in place (as wrangler requires)."""
    outcome = simulate(migrations, check.fail)
    if not migrations:
        return
    for i, binding in enumerate(bindings):
        cname = binding.class_name
        if cname in outcome.labels:
            continue
        key = f"durable_objects.bindings[{i}].class_name"
        if cname in outcome.gone:
            how = outcome.gone[cname]
            if how.startswith("deleted"):
                raise check.fail(
                    key,
                    f"class {cname!r} is {how}, but the binding {binding.name!r} still names "
                    "it: remove the binding, then the migration deletes the class and the "
                    "data of all its objects",
                )
            raise check.fail(key, f"class {cname!r} was {how}: bind the new name")
        close = difflib.get_close_matches(cname, sorted(outcome.labels), n=1)
        if close:  # most likely a typo, not a class to create
            raise check.fail(
                key,
                f"class {cname!r} is not created by any migration; did you mean {close[0]!r}? "
                "(a new class goes into new_sqlite_classes of a new [[migrations]] entry)",
            )
        raise check.fail(
            key,
            f"class {cname!r} is not created by any migration: add it to new_sqlite_classes "
            "of a new [[migrations]] entry",
        )


def _check_assets_hold_no_project_files(check: _Checker, adir: Path, main: Path) -> None:
    own = [
        ("the project file", check.path),
        ("the Worker module", main),
        ("opendo's own directory", check.path.parent / ".opendo"),
    ]
    for what, path in own:
        if path.is_relative_to(adir):
            where = f"the directory {adir} contains {what} {path}"
        elif adir.is_relative_to(path):
            where = f"the directory {adir} is inside {what} {path}"
        else:
            continue
        raise check.fail(
            "assets.directory",
            f"{where}, which would be served to anyone: put the static files in a directory "
            'of their own (e.g. directory = "public")',
        )


def check_persist_dir(config: Config, persist: Path) -> None:
    """Refuse a persist directory that overlaps the assets directory (its object databases
    would be served). Call it wherever the persist directory is resolved."""
    if config.assets is None:
        return
    adir, persist = config.assets.directory, persist.resolve()
    if persist.is_relative_to(adir) or adir.is_relative_to(persist):
        raise ConfigError(
            f"{config.path}: {config.assets.key}: the directory {adir} and the persist "
            f"directory {persist} overlap, so object databases would be served to anyone: "
            "keep object storage apart from the assets (--persist-to a directory outside them)"
        )


def _seconds(check: _Checker, table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise check.fail(f"runtime.{key}", f"expected seconds > 0, got {_kind(value)}")
    return float(value)


def _required_secrets(check: _Checker, table: Any) -> tuple[str, ...]:
    if table is None:
        return ()
    check.keys(check.table(table, "secrets"), {"required"}, "secrets")
    names = table.get("required", [])
    if not isinstance(names, list) or not all(
        isinstance(n, str) and n.isidentifier() for n in names
    ):
        raise check.fail(
            "secrets.required", f"expected a list of names (identifiers), got {_kind(names)}"
        )
    return tuple(names)


def _secrets(
    path: Path, env: str | None, required: tuple[str, ...], secrets_from: str
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The secrets' values, and the required ones that have none (see the module's
    docstring)."""
    if secrets_from == "environ":
        missing = tuple(name for name in required if name not in os.environ)
        if missing:
            raise ConfigError(
                f"{path}: secrets.required: {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set in the environment "
                "(opendo serve takes secrets from the environment; .dev.vars is for opendo dev)"
            )
        found = {name: os.environ[name] for name in required}
        if CLUSTER_SECRET in os.environ:
            found[CLUSTER_SECRET] = os.environ[CLUSTER_SECRET]
        return found, ()
    values = _read_dev_vars(path.parent, env)
    if not required:
        return values, ()
    found = {}
    for name in (*required, CLUSTER_SECRET):
        if name in values:
            found[name] = values[name]
        elif name in os.environ:
            found[name] = os.environ[name]
    return found, tuple(name for name in required if name not in found)


def _read_dev_vars(root: Path, env: str | None) -> dict[str, str]:
    candidates = [root / f".dev.vars.{env}"] if env else []
    candidates.append(root / ".dev.vars")
    for file in candidates:
        if file.is_file():
            return _parse_dotenv(file)
    return {}


def _parse_dotenv(file: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: the file is not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"{file}:{number}: expected KEY=value, got {line[:60]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values
