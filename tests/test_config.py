"""``opendo.toml`` and ``.dev.vars``: what parses, and the message of every mistake."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from opendo import ConfigError, Request, Runtime, load_config
from opendo.project.config import AssetsConfig, Binding, Migration

WORKER = """\
from opendo import DurableObject, Response, WorkerEntrypoint


class Chat(DurableObject):
    pass


class Counter(DurableObject):
    pass


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("default")
"""

MINIMAL = 'name = "app"\nmain = "worker.py"\n'


def write_project(
    root: Path, toml: str, *, worker: str = WORKER, files: dict[str, str] | None = None
) -> Path:
    """Write ``opendo.toml``, ``worker.py`` and ``files`` under ``root``; return ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "opendo.toml").write_text(textwrap.dedent(toml), encoding="utf-8")
    (root / "worker.py").write_text(worker, encoding="utf-8")
    for name, text in (files or {}).items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return root


def config_error(location: Path, env: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(location, env)
    return str(info.value)


def toml_path(root: Path) -> str:
    return str((root / "opendo.toml").resolve())


# -- what parses -------------------------------------------------------------------------------


FULL = """\
name = "chat"
main = "worker.py"
compatibility_date = "2025-01-01"

[vars]
GREETING = "hello"
LIMIT = 3
ENABLED = true

[[durable_objects.bindings]]
name = "CHAT"
class_name = "Chat"

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"

[[migrations]]
tag = "v1"
new_classes = ["Chat"]

[[migrations]]
tag = "v2"
new_sqlite_classes = ["Counter", "Extra"]

[[migrations]]
tag = "v3"
renamed_classes = [{ from = "Extra", to = "Renamed" }]
deleted_classes = ["Renamed"]

[assets]
directory = "public"
not_found_handling = "single-page-application"

[runtime]
idle_timeout = 12.5

[dev]
port = 9000
ip = "0.0.0.0"
"""


def test_full_file_parses_to_every_field(tmp_path: Path) -> None:
    root = write_project(tmp_path / "chat", FULL, files={"public/index.html": "<h1>hi</h1>"})

    config = load_config(root)

    assert config.path == (root / "opendo.toml").resolve()
    assert config.root == root.resolve()
    assert config.name == "chat"
    assert config.main == (root / "worker.py").resolve()
    assert config.entrypoint is None
    assert config.vars == {"GREETING": "hello", "LIMIT": 3, "ENABLED": True}
    assert config.secrets == {}
    assert config.bindings == (Binding("CHAT", "Chat"), Binding("COUNTER", "Counter"))
    assert config.migrations == (
        Migration("v1", new_classes=("Chat",)),
        Migration("v2", new_sqlite_classes=("Counter", "Extra")),
        Migration("v3", renamed_classes=(("Extra", "Renamed"),), deleted_classes=("Renamed",)),
    )
    assert config.assets == AssetsConfig((root / "public").resolve(), "single-page-application")
    assert config.idle_timeout == 12.5
    assert config.dev_port == 9000
    assert config.dev_ip == "0.0.0.0"
    assert config.env_name is None


def test_minimal_file_gets_the_defaults(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL)

    config = load_config(root)

    assert config.name == "app"
    assert config.vars == {}
    assert config.secrets == {}
    assert config.bindings == ()
    assert config.migrations == ()
    assert config.assets is None
    assert config.idle_timeout == 70.0
    assert isinstance(config.idle_timeout, float)
    assert config.dev_port is None
    assert config.dev_ip is None


def test_the_file_itself_can_be_named(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL)

    assert load_config(root / "opendo.toml").path == (root / "opendo.toml").resolve()


def test_assets_default_to_no_not_found_handling_and_idle_timeout_int_becomes_float(
    tmp_path: Path,
) -> None:
    root = write_project(
        tmp_path,
        MINIMAL + '[assets]\ndirectory = "site"\n[runtime]\nidle_timeout = 30\n',
        files={"site/a.txt": "a"},
    )

    config = load_config(root)

    assert config.assets == AssetsConfig((root / "site").resolve(), "none")
    assert config.idle_timeout == 30.0
    assert isinstance(config.idle_timeout, float)


def test_runtime_open_objects_is_a_whole_number_of_objects(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL + "[runtime]\nopen_objects = 500\n")
    assert load_config(root).open_objects == 500
    assert load_config(write_project(tmp_path / "b", MINIMAL)).open_objects is None
    for bad in ("0", "1.5", "true", '"many"'):
        root = write_project(
            tmp_path / f"bad{bad[:2]}", MINIMAL + f"[runtime]\nopen_objects = {bad}\n"
        )
        with pytest.raises(ConfigError, match="runtime.open_objects: expected a whole number"):
            load_config(root)


def test_main_with_a_class_sets_the_entrypoint(tmp_path: Path) -> None:
    root = write_project(tmp_path, 'name = "app"\nmain = "worker.py:Named"\n')

    config = load_config(root)

    assert config.main == (root / "worker.py").resolve()
    assert config.entrypoint == "Named"


def test_main_in_a_subdirectory(tmp_path: Path) -> None:
    root = write_project(
        tmp_path, 'name = "app"\nmain = "src/app.py"\n', files={"src/app.py": WORKER}
    )

    assert load_config(root).main == (root / "src" / "app.py").resolve()


# -- environments ------------------------------------------------------------------------------


ENVS = """\
name = "app"
main = "worker.py"

[vars]
FOO = "top"
BAR = "only-top"

[[durable_objects.bindings]]
name = "CHAT"
class_name = "Chat"

[runtime]
idle_timeout = 5

[env.staging]
name = "app-staging"
vars = { FOO = "staging" }

[env.prod]
runtime = { idle_timeout = 300 }
"""


def test_env_keys_replace_top_level_ones_and_the_rest_is_inherited(tmp_path: Path) -> None:
    root = write_project(tmp_path, ENVS)

    staging = load_config(root, "staging")

    assert staging.env_name == "staging"
    assert staging.name == "app-staging"
    assert staging.vars == {"FOO": "staging"}  # replaced, not merged: BAR is gone
    assert staging.bindings == (Binding("CHAT", "Chat"),)
    assert staging.idle_timeout == 5.0

    prod = load_config(root, "prod")

    assert prod.name == "app"
    assert prod.vars == {"FOO": "top", "BAR": "only-top"}
    assert prod.idle_timeout == 300.0


def test_without_env_the_env_sections_are_ignored(tmp_path: Path) -> None:
    root = write_project(tmp_path, ENVS)

    config = load_config(root)

    assert config.env_name is None
    assert config.name == "app"
    assert config.vars == {"FOO": "top", "BAR": "only-top"}


def test_unknown_env_lists_the_known_ones(tmp_path: Path) -> None:
    root = write_project(tmp_path, ENVS)

    message = config_error(root, "qa")

    assert toml_path(root) in message
    assert "env.qa" in message
    assert "no such environment" in message
    assert "prod, staging" in message


def test_unknown_env_when_none_are_defined(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL)

    message = config_error(root, "prod")

    assert toml_path(root) in message
    assert "env.prod" in message
    assert "none are defined" in message


def test_migrations_cannot_be_per_environment(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL + '[env.prod]\nmigrations = [{ tag = "v1" }]\n')

    message = config_error(root, "prod")

    assert toml_path(root) in message
    assert "env.prod.migrations: unknown key" in message


def test_env_section_must_be_a_table(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL + "[env]\nprod = 5\n")

    message = config_error(root, "prod")

    assert toml_path(root) in message
    assert "env.prod: expected a table, got a number (5)" in message


def test_bad_value_in_an_env_section_names_the_env_key(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL + "[env.prod]\nvars = 5\n")

    message = config_error(root, "prod")

    assert "env.prod.vars" in message


# -- secrets: .dev.vars ----------------------------------------------------------------------


DEV_VARS = """\
# a comment
   # an indented comment

API_KEY=abc123
QUOTED="hello world"
SINGLE='x=y'
SPACED = spaced value
EMPTY=
MISMATCHED="half'
"""


def test_dev_vars_become_secrets(tmp_path: Path) -> None:
    root = write_project(
        tmp_path, MINIMAL + '[vars]\nPUBLIC = "p"\n', files={".dev.vars": DEV_VARS}
    )

    config = load_config(root)

    assert config.secrets == {
        "API_KEY": "abc123",
        "QUOTED": "hello world",
        "SINGLE": "x=y",
        "SPACED": "spaced value",
        "EMPTY": "",
        "MISMATCHED": "\"half'",
    }
    assert config.vars == {"PUBLIC": "p"}


def test_env_specific_dev_vars_are_preferred(tmp_path: Path) -> None:
    root = write_project(
        tmp_path,
        ENVS,
        files={".dev.vars": "TOKEN=base\nONLY_BASE=1\n", ".dev.vars.staging": "TOKEN=staging\n"},
    )

    assert load_config(root, "staging").secrets == {"TOKEN": "staging"}  # not merged
    assert load_config(root, "prod").secrets == {"TOKEN": "base", "ONLY_BASE": "1"}
    assert load_config(root).secrets == {"TOKEN": "base", "ONLY_BASE": "1"}


def test_env_dev_vars_without_a_base_file(tmp_path: Path) -> None:
    root = write_project(tmp_path, ENVS, files={".dev.vars.prod": 'TOKEN="prod"\n'})

    assert load_config(root, "prod").secrets == {"TOKEN": "prod"}
    assert load_config(root, "staging").secrets == {}
    assert load_config(root).secrets == {}


def test_secrets_reach_the_workers_env(tmp_path: Path) -> None:
    root = write_project(
        tmp_path, MINIMAL + '[vars]\nPUBLIC = "p"\n', files={".dev.vars": "API_KEY=abc123\n"}
    )

    runtime = Runtime.from_config(load_config(root))

    assert runtime.env.API_KEY == "abc123"
    assert runtime.env.PUBLIC == "p"


REQUIRED = MINIMAL + '[secrets]\nrequired = ["API_KEY", "DB_PASSWORD"]\n'


def test_required_secrets_in_development_come_from_dev_vars_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_project(
        tmp_path, REQUIRED, files={".dev.vars": "API_KEY=from-file\nEXTRA=left-out\n"}
    )
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    config = load_config(root)
    assert config.required_secrets == ("API_KEY", "DB_PASSWORD")
    assert config.secrets == {"API_KEY": "from-file"}  # only the names it lists
    assert config.missing_secrets == ("DB_PASSWORD",)
    monkeypatch.setenv("DB_PASSWORD", "from-env")
    monkeypatch.setenv("API_KEY", "the file wins")
    config = load_config(root)
    assert config.secrets == {"API_KEY": "from-file", "DB_PASSWORD": "from-env"}
    assert config.missing_secrets == ()


def test_in_production_secrets_come_from_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_project(
        tmp_path, REQUIRED, files={".dev.vars": "API_KEY=from-file\nDB_PASSWORD=x\n"}
    )
    monkeypatch.setenv("API_KEY", "k")
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(root, secrets_from="environ")
    assert str(info.value) == (
        f"{root / 'opendo.toml'}: secrets.required: DB_PASSWORD is not set in the environment "
        "(opendo serve takes secrets from the environment; .dev.vars is for opendo dev)"
    )
    monkeypatch.setenv("DB_PASSWORD", "p")
    config = load_config(root, secrets_from="environ")
    assert config.secrets == {"API_KEY": "k", "DB_PASSWORD": "p"}  # .dev.vars is not read
    plain = write_project(tmp_path / "plain", MINIMAL, files={".dev.vars": "API_KEY=x\n"})
    assert load_config(plain, secrets_from="environ").secrets == {}


@pytest.mark.parametrize(
    "table", ['required = "API_KEY"', 'required = ["API-KEY"]', 'names = ["A"]']
)
def test_a_bad_secrets_table_says_what_is_expected(tmp_path: Path, table: str) -> None:
    message = config_error(write_project(tmp_path, MINIMAL + f"[secrets]\n{table}\n"))
    assert "secrets" in message and ("expected" in message or "names" in message), message


def test_wranglers_secrets_required_is_read(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "worker.py").write_text(WORKER, encoding="utf-8")
    (tmp_path / "wrangler.jsonc").write_text(
        '{"name": "w", "main": "worker.py", "secrets": {"required": ["API_KEY"]},}\n'
    )
    (tmp_path / ".dev.vars").write_text("API_KEY=k\n")
    config = load_config(tmp_path)
    assert config.required_secrets == ("API_KEY",) and config.secrets == {"API_KEY": "k"}
    assert "secrets" not in config.ignored


@pytest.mark.parametrize("line", ["JUST_A_KEY", "=value", "1ABC=x", "MY-KEY=x", "A B=c"])
def test_malformed_dev_vars_line(tmp_path: Path, line: str) -> None:
    root = write_project(tmp_path, MINIMAL, files={".dev.vars": f"GOOD=1\n# comment\n{line}\n"})

    message = config_error(root)

    assert f"{(root / '.dev.vars').resolve()}:3:" in message
    assert "expected KEY=value" in message
    assert repr(line) in message


def test_malformed_env_dev_vars_line_names_that_file(tmp_path: Path) -> None:
    root = write_project(tmp_path, ENVS, files={".dev.vars.prod": "oops\n"})

    message = config_error(root, "prod")

    assert f"{(root / '.dev.vars.prod').resolve()}:1:" in message
    assert "expected KEY=value" in message


def test_dev_vars_not_utf8(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL)
    (root / ".dev.vars").write_bytes(b"SECRET=caf\xe9\n")

    message = config_error(root)

    assert str((root / ".dev.vars").resolve()) in message


# -- the file itself -------------------------------------------------------------------------


def test_missing_file_in_a_directory(tmp_path: Path) -> None:
    message = config_error(tmp_path)

    assert str(tmp_path / "opendo.toml") in message
    assert "no such file" in message


def test_missing_file_named_directly(tmp_path: Path) -> None:
    message = config_error(tmp_path / "other.toml")

    assert str(tmp_path / "other.toml") in message
    assert "no such file" in message


def test_invalid_toml(tmp_path: Path) -> None:
    root = write_project(tmp_path, 'name = "app"\nmain "worker.py"\n')

    message = config_error(root)

    assert toml_path(root) in message
    assert "invalid TOML" in message
    assert "line 2" in message


def test_toml_not_utf8(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL)
    (root / "opendo.toml").write_bytes(b'name = "caf\xe9"\nmain = "worker.py"\n')

    message = config_error(root)

    assert toml_path(root) in message
    assert "not UTF-8" in message


# -- every mistake names the file, the key and what was expected --------------------------------

BINDING = '[[durable_objects.bindings]]\nname = "CHAT"\nclass_name = "Chat"\n'

BAD = [
    pytest.param('main = "worker.py"\n', "name", "expected a project name", id="missing-name"),
    pytest.param(
        'name = 5\nmain = "worker.py"\n', "name", "got a number (5)", id="name-not-a-string"
    ),
    pytest.param('name = ""\nmain = "worker.py"\n', "name", "got an empty string", id="empty-name"),
    pytest.param('name = "app"\n', "main", 'e.g. "worker.py"', id="missing-main"),
    pytest.param(
        'name = "app"\nmain = "worker.js"\n',
        "main",
        "expected a Python file (*.py), got 'worker.js'",
        id="main-not-py",
    ),
    pytest.param('name = "app"\nmain = "nope.py"\n', "main", "does not exist", id="main-missing"),
    pytest.param(
        'name = "app"\nmain = "worker.py:not-a-class"\n',
        "main",
        "'not-a-class' after ':' is not a class name",
        id="main-bad-entrypoint",
    ),
    pytest.param(
        MINIMAL + 'nmae = "x"\n', "nmae", "unknown key; expected one of", id="unknown-top-level"
    ),
    pytest.param(MINIMAL + "vars = 5\n", "vars", "expected a table", id="vars-not-a-table"),
    pytest.param(
        MINIMAL + "[durable_objects]\nbindings = 5\n",
        "durable_objects.bindings",
        "expected an array of tables",
        id="bindings-not-an-array",
    ),
    pytest.param(
        MINIMAL + "[durable_objects]\nbinding = []\n",
        "durable_objects.binding",
        "unknown key; expected one of bindings",
        id="unknown-key-in-durable_objects",
    ),
    pytest.param(
        MINIMAL + "durable_objects = { bindings = [5] }\n",
        "durable_objects.bindings[0]",
        "expected a table, got a number (5)",
        id="binding-not-a-table",
    ),
    pytest.param(
        MINIMAL + '[[durable_objects.bindings]]\nname = "CHAT"\nclass_name = 5\n',
        "durable_objects.bindings[0].class_name",
        "expected a class name (string), got a number (5)",
        id="class_name-not-a-string",
    ),
    pytest.param(
        MINIMAL + '[[durable_objects.bindings]]\nname = "CHAT"\n',
        "durable_objects.bindings[0].class_name",
        "expected a class name (string)",
        id="class_name-missing",
    ),
    pytest.param(
        MINIMAL + '[[durable_objects.bindings]]\nclass_name = "Chat"\n',
        "durable_objects.bindings[0].name",
        "expected a binding name (string)",
        id="binding-name-missing",
    ),
    pytest.param(
        MINIMAL + BINDING + BINDING,
        "durable_objects.bindings[1].name",
        "the binding 'CHAT' is defined twice",
        id="duplicate-binding",
    ),
    pytest.param(
        MINIMAL + '[[durable_objects.bindings]]\nname = "MY-CHAT"\nclass_name = "Chat"\n',
        "durable_objects.bindings[0].name",
        "'MY-CHAT' is not a valid identifier",
        id="binding-name-not-an-identifier",
    ),
    pytest.param(
        MINIMAL + BINDING + 'clas_name = "Chat"\n',
        "durable_objects.bindings[0].clas_name",
        "unknown key; expected one of class_name, environment, name, script_name",
        id="unknown-key-in-binding",
    ),
    pytest.param(
        MINIMAL + "migrations = 5\n",
        "migrations",
        "expected an array of tables",
        id="migrations-not-an-array",
    ),
    pytest.param(
        MINIMAL + '[[migrations]]\nnew_classes = ["Chat"]\n',
        "migrations[0].tag",
        "expected a unique tag (string)",
        id="migration-without-tag",
    ),
    pytest.param(
        MINIMAL + '[[migrations]]\ntag = "v1"\n[[migrations]]\ntag = "v2"\n[[migrations]]\n'
        'tag = "v1"\n',
        "migrations[2].tag",
        "the tag 'v1' is used twice",
        id="duplicate-migration-tag",
    ),
    pytest.param(
        MINIMAL + '[[migrations]]\ntag = "v1"\nnew_classes = "Chat"\n',
        "migrations[0].new_classes",
        "expected a list of class names (strings), got the string 'Chat'",
        id="new_classes-not-a-list",
    ),
    pytest.param(
        MINIMAL + '[[migrations]]\ntag = "v1"\nnew_sqlite_classes = ["Chat", 1]\n',
        "migrations[0].new_sqlite_classes",
        "expected a list of class names (strings)",
        id="new_sqlite_classes-with-a-number",
    ),
    pytest.param(
        MINIMAL + '[[migrations]]\ntag = "v1"\ndeleted_classes = [""]\n',
        "migrations[0].deleted_classes",
        "expected a list of class names (strings)",
        id="deleted_classes-with-an-empty-name",
    ),
    pytest.param(
        MINIMAL + '[[migrations]]\ntag = "v1"\nrenamed_classes = [{ from = "A" }]\n',
        "migrations[0].renamed_classes[0].to",
        "expected a string",
        id="renamed_classes-without-to",
    ),
    pytest.param(
        MINIMAL + '[[migrations]]\ntag = "v1"\nrenamed_classes = ["A"]\n',
        "migrations[0].renamed_classes[0]",
        "expected a table, got the string 'A'",
        id="renamed_classes-entry-not-a-table",
    ),
    pytest.param(
        MINIMAL + '[[migrations]]\ntag = "v1"\nnew_class = ["Chat"]\n',
        "migrations[0].new_class",
        "unknown key",
        id="unknown-key-in-migration",
    ),
    pytest.param(
        MINIMAL + '[assets]\ndirectory = "public"\nnot_found_handling = "spa"\n',
        "assets.not_found_handling",
        "expected one of 'none', 'single-page-application', got the string 'spa'",
        id="bad-not_found_handling",
    ),
    pytest.param(
        MINIMAL + '[assets]\ndirectory = "missing"\n',
        "assets.directory",
        "does not exist",
        id="missing-assets-directory",
    ),
    pytest.param(
        MINIMAL + "[assets]\nnot_found_handling = 'none'\n",
        "assets.directory",
        "expected a directory path",
        id="assets-without-directory",
    ),
    pytest.param(
        MINIMAL + '[assets]\ndirectory = "public"\ndir = "public"\n',
        "assets.dir",
        "unknown key",
        id="unknown-key-in-assets",
    ),
    pytest.param(
        MINIMAL + "[runtime]\nidle_timeout = 0\n",
        "runtime.idle_timeout",
        "expected seconds > 0, got a number (0)",
        id="idle_timeout-zero",
    ),
    pytest.param(
        MINIMAL + "[runtime]\nidle_timeout = -1.5\n",
        "runtime.idle_timeout",
        "expected seconds > 0, got a number (-1.5)",
        id="idle_timeout-negative",
    ),
    pytest.param(
        MINIMAL + '[runtime]\nidle_timeout = "70"\n',
        "runtime.idle_timeout",
        "expected seconds > 0, got the string '70'",
        id="idle_timeout-string",
    ),
    pytest.param(
        MINIMAL + "[runtime]\nidle_timeout = true\n",
        "runtime.idle_timeout",
        "expected seconds > 0, got a boolean (true)",
        id="idle_timeout-boolean",
    ),
    pytest.param(
        MINIMAL + "[runtime]\nidle = 5\n",
        "runtime.idle",
        "unknown key; expected one of hibernation_timeout, idle_timeout",
        id="unknown-key-in-runtime",
    ),
    pytest.param(
        MINIMAL + "[dev]\nport = 70000\n",
        "dev.port",
        "expected a port number 0..65535, got a number (70000)",
        id="port-too-big",
    ),
    pytest.param(
        MINIMAL + "[dev]\nport = -1\n",
        "dev.port",
        "expected a port number 0..65535",
        id="port-negative",
    ),
    pytest.param(
        MINIMAL + '[dev]\nport = "8787"\n',
        "dev.port",
        "expected a port number 0..65535, got the string '8787'",
        id="port-string",
    ),
    pytest.param(
        MINIMAL + "[dev]\nport = 8787.0\n",
        "dev.port",
        "expected a port number 0..65535",
        id="port-float",
    ),
    pytest.param(
        MINIMAL + "[dev]\nport = true\n",
        "dev.port",
        "expected a port number 0..65535, got a boolean (true)",
        id="port-boolean",
    ),
    pytest.param(
        MINIMAL + "[dev]\nip = 127\n",
        "dev.ip",
        "expected an IP address",
        id="ip-not-a-string",
    ),
    pytest.param(
        MINIMAL + "[dev]\nhost = 'x'\n",
        "dev.host",
        "unknown key",
        id="unknown-key-in-dev",
    ),
]


@pytest.mark.parametrize(("toml", "key", "expected"), BAD)
def test_mistake_names_file_key_and_expectation(
    tmp_path: Path, toml: str, key: str, expected: str
) -> None:
    root = write_project(tmp_path, toml, files={"worker.js": "", "public/index.html": ""})

    message = config_error(root)

    assert message.startswith(f"{toml_path(root)}: {key}: "), message
    assert expected in message


def test_renamed_classes_not_an_array(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL + '[[migrations]]\ntag = "v1"\nrenamed_classes = 5\n')

    message = config_error(root)

    assert message.startswith(f"{toml_path(root)}: migrations[0].renamed_classes: ")


def test_unknown_key_in_renamed_classes_entry(tmp_path: Path) -> None:
    root = write_project(
        tmp_path,
        MINIMAL
        + '[[migrations]]\ntag = "v1"\nrenamed_classes = [{ from = "A", to = "B", too = "C" }]\n',
    )

    message = config_error(root)

    assert message.startswith(f"{toml_path(root)}: migrations[0].renamed_classes[0].too: ")


def test_idle_timeout_nan(tmp_path: Path) -> None:
    root = write_project(tmp_path, MINIMAL + "[runtime]\nidle_timeout = nan\n")

    try:
        config = load_config(root)
    except ConfigError as exc:
        assert f"{toml_path(root)}: runtime.idle_timeout: " in str(exc)
    else:
        assert not math.isnan(config.idle_timeout)


# -- the assets directory holds only what may be served ----------------------------------------


@pytest.mark.parametrize(
    ("toml", "files", "contained"),
    [
        pytest.param(MINIMAL + '[assets]\ndirectory = "."\n', {}, "the project file", id="root"),
        pytest.param(
            MINIMAL + '[assets]\ndirectory = "./"\n', {}, "the project file", id="root-slash"
        ),
        pytest.param(
            MINIMAL + '[assets]\ndirectory = "public/.."\n',
            {"public/index.html": ""},
            "the project file",
            id="root-by-way-of-public",
        ),
        pytest.param(MINIMAL + '[assets]\ndirectory = ".."\n', {}, "the project file", id="parent"),
        pytest.param(
            'name = "app"\nmain = "site/worker.py"\n[assets]\ndirectory = "site"\n',
            {"site/worker.py": WORKER, "site/index.html": ""},
            "the Worker module",
            id="main-inside",
        ),
        pytest.param(
            'name = "app"\nmain = "site/src/worker.py"\n[assets]\ndirectory = "site"\n',
            {"site/src/worker.py": WORKER},
            "the Worker module",
            id="main-below",
        ),
        pytest.param(
            MINIMAL + '[assets]\ndirectory = ".opendo"\n',
            {".opendo/state/migrations.json": "{}"},
            "opendo's own directory",
            id="opendo-dir",
        ),
        pytest.param(
            MINIMAL + '[assets]\ndirectory = ".opendo/state"\n',
            {".opendo/state/Chat/x.sqlite": ""},
            "opendo's own directory",
            id="inside-the-default-persist-dir",
        ),
        pytest.param(
            MINIMAL + '[assets]\ndirectory = "public"\n[env.prod]\nassets = { directory = "." }\n',
            {"public/index.html": ""},
            "the project file",
            id="env-section",
        ),
    ],
)
def test_assets_directory_with_the_projects_own_files_is_refused(
    tmp_path: Path, toml: str, files: dict[str, str], contained: str
) -> None:
    root = write_project(tmp_path / "project", toml, files=files)
    env = "prod" if "[env.prod]" in toml else None
    key = "env.prod.assets.directory" if env else "assets.directory"

    message = config_error(root, env)

    assert message.startswith(f"{toml_path(root)}: {key}: "), message
    assert contained in message
    assert "would be served" in message
    assert "a directory of their own" in message


def test_assets_directory_symlinked_to_the_project_is_refused(tmp_path: Path) -> None:
    root = write_project(tmp_path / "project", MINIMAL + '[assets]\ndirectory = "public"\n')
    (root / "public").symlink_to(root, target_is_directory=True)

    message = config_error(root)

    assert message.startswith(f"{toml_path(root)}: assets.directory: "), message
    assert "the project file" in message


def test_assets_directory_beside_the_project_files_is_accepted(tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "project",
        MINIMAL + '[assets]\ndirectory = "public"\n',
        files={"public/index.html": "", ".opendo/state/migrations.json": "{}"},
    )

    config = load_config(root)

    assert config.assets == AssetsConfig((root / "public").resolve(), "none")


@pytest.mark.parametrize(
    "persist",
    ["public/state", "public", "public/.state", "public/assets/.."],
    ids=["inside", "same", "hidden-inside", "same-by-way-of-a-subdir"],
)
def test_persist_directory_inside_the_assets_is_refused(tmp_path: Path, persist: str) -> None:
    from opendo.project.config import check_persist_dir

    root = write_project(
        tmp_path / "project",
        MINIMAL + '[assets]\ndirectory = "public"\n',
        files={"public/index.html": "", "public/assets/app.js": ""},
    )
    config = load_config(root)

    with pytest.raises(ConfigError) as info:
        check_persist_dir(config, root / persist)

    message = str(info.value)
    assert message.startswith(f"{toml_path(root)}: assets.directory: "), message
    assert str((root / persist).resolve()) in message
    assert "object databases would be served" in message
    assert "--persist-to" in message


def test_assets_inside_the_persist_directory_is_refused(tmp_path: Path) -> None:
    """Where every directory is a class's storage (and a class could be named "public")."""
    from opendo.project.config import check_persist_dir

    root = write_project(
        tmp_path / "project",
        MINIMAL + '[assets]\ndirectory = "data/public"\n',
        files={"data/public/index.html": ""},
    )
    config = load_config(root)

    with pytest.raises(ConfigError, match="object databases would be served"):
        check_persist_dir(config, root / "data")


@pytest.mark.parametrize("assets", [True, False], ids=["with-assets", "without-assets"])
def test_persist_directory_apart_from_the_assets_is_accepted(tmp_path: Path, assets: bool) -> None:
    from opendo.project.config import check_persist_dir

    toml = MINIMAL + ('[assets]\ndirectory = "public"\n' if assets else "")
    root = write_project(tmp_path / "project", toml, files={"public/index.html": ""})
    config = load_config(root)

    for persist in (root / ".opendo" / "state", root / "state", root / "publicity", tmp_path / "s"):
        check_persist_dir(config, persist)


# -- Runtime.from_config: what the main module must define ---------------------------------------


def test_runtime_binds_the_classes_and_finds_default(tmp_path: Path) -> None:
    root = write_project(tmp_path, FULL, files={"public/index.html": ""})

    runtime = Runtime.from_config(load_config(root))

    assert runtime.worker is not None
    assert runtime.worker.__name__ == "Default"
    assert sorted(runtime.namespaces) == ["CHAT", "COUNTER"]
    assert runtime.namespaces["CHAT"].object_class.__name__ == "Chat"
    assert runtime.env.GREETING == "hello"
    assert runtime.idle_timeout == 12.5


async def test_named_entrypoint_is_the_worker(tmp_path: Path) -> None:
    worker = WORKER + (
        "\n\nclass Named(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n"
        '        return Response("named")\n'
    )
    root = write_project(tmp_path, 'name = "app"\nmain = "worker.py:Named"\n', worker=worker)

    runtime = Runtime.from_config(load_config(root))
    response = await runtime.fetch(Request("http://localhost/"))

    assert await response.text() == "named"


async def test_the_only_entrypoint_is_the_worker(tmp_path: Path) -> None:
    worker = (
        "from opendo import Response, WorkerEntrypoint\n\n\n"
        "class Api(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n"
        '        return Response("api")\n'
    )
    root = write_project(tmp_path, MINIMAL, worker=worker)

    runtime = Runtime.from_config(load_config(root))
    response = await runtime.fetch(Request("http://localhost/"))

    assert await response.text() == "api"


def runtime_error(root: Path) -> str:
    config = load_config(root)
    with pytest.raises(ConfigError) as info:
        Runtime.from_config(config)
    return str(info.value)


def test_runtime_class_name_missing_in_main(tmp_path: Path) -> None:
    root = write_project(
        tmp_path, MINIMAL + '[[durable_objects.bindings]]\nname = "X"\nclass_name = "Missing"\n'
    )

    message = runtime_error(root)

    assert message.startswith(f"{toml_path(root)}: durable_objects.bindings[0].class_name: ")
    assert "worker.py defines no class 'Missing'" in message


@pytest.mark.parametrize("class_name", ["Default", "helper", "VALUE"])
def test_runtime_class_name_not_a_durable_object(tmp_path: Path, class_name: str) -> None:
    worker = WORKER + "\n\ndef helper():\n    pass\n\n\nVALUE = 3\n"
    root = write_project(
        tmp_path,
        MINIMAL
        + BINDING
        + f'[[durable_objects.bindings]]\nname = "X"\nclass_name = "{class_name}"\n',
        worker=worker,
    )

    message = runtime_error(root)

    assert message.startswith(f"{toml_path(root)}: durable_objects.bindings[1].class_name: ")
    assert f"{class_name!r} must be a subclass of opendo.DurableObject" in message


def test_runtime_no_entrypoint(tmp_path: Path) -> None:
    worker = (
        "from opendo import DurableObject, WorkerEntrypoint\n\n\n"
        "class Chat(DurableObject):\n    pass\n"
    )
    root = write_project(tmp_path, MINIMAL, worker=worker)

    message = runtime_error(root)

    assert message.startswith(f"{toml_path(root)}: main: ")
    assert "worker.py defines no WorkerEntrypoint subclasses" in message
    assert 'main = "file.py:ClassName"' in message


def test_runtime_two_entrypoints_and_no_default(tmp_path: Path) -> None:
    worker = (
        "from opendo import WorkerEntrypoint\n\n\n"
        "class One(WorkerEntrypoint):\n    pass\n\n\n"
        "class Two(WorkerEntrypoint):\n    pass\n"
    )
    root = write_project(tmp_path, MINIMAL, worker=worker)

    message = runtime_error(root)

    assert message.startswith(f"{toml_path(root)}: main: ")
    assert "worker.py defines 2 WorkerEntrypoint subclasses" in message
    assert "call it Default" in message


def test_runtime_named_entrypoint_missing(tmp_path: Path) -> None:
    root = write_project(tmp_path, 'name = "app"\nmain = "worker.py:Nope"\n')

    message = runtime_error(root)

    assert message.startswith(f"{toml_path(root)}: main: ")
    assert "worker.py defines no WorkerEntrypoint subclass named 'Nope'" in message


def test_runtime_named_entrypoint_not_an_entrypoint(tmp_path: Path) -> None:
    root = write_project(tmp_path, 'name = "app"\nmain = "worker.py:Chat"\n')

    message = runtime_error(root)

    assert message.startswith(f"{toml_path(root)}: main: ")
    assert "no WorkerEntrypoint subclass named 'Chat'" in message


# -- [cluster] ------------------------------------------------------------------------------------

CLUSTER = MINIMAL + textwrap.dedent(
    """
    [cluster]
    url = "postgresql://opendo@127.0.0.1:5432/opendo"
    advertise = "127.0.0.1:7000"
    lease_seconds = 5
    """
)


def test_the_cluster_table_gives_the_cluster_options(tmp_path: Path) -> None:
    from opendo.project.cluster import cluster_options

    config = load_config(write_project(tmp_path, CLUSTER))
    options = cluster_options(config)
    assert options is not None
    assert (options.url, options.advertise, options.lease_seconds) == (
        "postgresql://opendo@127.0.0.1:5432/opendo",
        "127.0.0.1:7000",
        5.0,
    )
    # the command line wins
    options = cluster_options(config, advertise="127.0.0.1:7100", lease_seconds=3, workers=2)
    assert options is not None
    assert (options.advertise, options.lease_seconds, options.workers) == ("127.0.0.1:7100", 3, 2)
    assert cluster_options(load_config(write_project(tmp_path / "plain", MINIMAL))) is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('secret = "s3cr3t"', "cluster.secret: the node secret is never read from the TOML"),
        ("port = 1", "cluster.port: unknown key; expected one of advertise, lease_seconds"),
        ("lease_seconds = 0", "cluster.lease_seconds: expected seconds 1..3600, got a number (0)"),
        ("url = 5", "cluster.url: expected a PostgreSQL URL"),
    ],
)
def test_a_bad_cluster_table_is_refused(tmp_path: Path, table: str, message: str) -> None:
    root = write_project(tmp_path, MINIMAL + f"[cluster]\n{table}\n")
    assert message in config_error(root)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "mysql://x/y"}, "expected a PostgreSQL URL"),
        ({"url": "postgresql://x/y"}, "cluster mode needs --advertise HOST:PORT"),
        ({"url": "postgresql://x/y", "advertise": "nowhere"}, "--advertise 'nowhere'"),
        ({"advertise": "127.0.0.1:7000"}, "--advertise and --lease-seconds need --cluster URL"),
    ],
)
def test_bad_cluster_options_are_refused(
    tmp_path: Path, kwargs: dict[str, str], message: str
) -> None:
    from opendo.project.cluster import cluster_options

    config = load_config(write_project(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match=message):
        cluster_options(config, **kwargs)


def test_the_node_secret_comes_from_dev_vars_and_never_reaches_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opendo.project.cluster import cluster_secret

    monkeypatch.delenv("OPENDO_CLUSTER_SECRET", raising=False)
    root = write_project(
        tmp_path, CLUSTER, files={".dev.vars": "OPENDO_CLUSTER_SECRET=" + "k" * 32 + "\nA=1\n"}
    )
    config = load_config(root)
    assert cluster_secret(config) == b"k" * 32
    runtime = Runtime.from_config(config)
    assert runtime.env.A == "1"
    assert not hasattr(runtime.env, "OPENDO_CLUSTER_SECRET")
    monkeypatch.setenv("OPENDO_CLUSTER_SECRET", "e" * 20)  # the environment wins
    assert cluster_secret(config) == b"e" * 20
    monkeypatch.setenv("OPENDO_CLUSTER_SECRET", "short")
    with pytest.raises(ConfigError, match="is 5 bytes; it must be at least 16"):
        cluster_secret(config)
    monkeypatch.delenv("OPENDO_CLUSTER_SECRET")
    (root / ".dev.vars").write_text("A=1\n")
    with pytest.raises(
        ConfigError, match="needs the nodes' shared secret in OPENDO_CLUSTER_SECRET"
    ):
        cluster_secret(load_config(root))


def test_the_reference_configuration_example_loads(tmp_path: Path) -> None:
    reference = Path(__file__).resolve().parent.parent / "docs" / "reference" / "configuration.md"
    example = reference.read_text(encoding="utf-8").split("```toml\n", 1)[1].split("```", 1)[0]
    root = write_project(tmp_path, example, files={"public/index.html": "hi"})
    config = load_config(root)
    assert config.vars == {"GREETING": "hello"}
    assert config.required_secrets == ("API_KEY",)
    assert [b.class_name for b in config.bindings] == ["Chat"]
    assert load_config(root, "prod").vars == {"GREETING": "hi"}
