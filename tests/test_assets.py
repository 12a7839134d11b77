"""Static assets: which path names which file, and what never leaves the directory."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest
from conftest import START_DEADLINE, STOP_DEADLINE, OpendoProcess, run_opendo, serve

import opendo
from opendo import Headers
from opendo.server.assets import Asset, Assets

SECRET = b"TOP SECRET: must never be served\n"
INDEX = b"<!doctype html><title>index</title>\n"
ABOUT = b"<!doctype html><title>about</title>\n"
DOCS = b"<!doctype html><title>docs</title>\n"
APP_JS = b"console.log('app');\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def build_site(root: Path) -> Path:
    """A ``public`` directory under ``root``, with ``secret.txt`` beside it (outside)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "secret.txt").write_bytes(SECRET)
    public = root / "public"
    files = {
        "index.html": INDEX,
        "about.html": ABOUT,
        "docs/index.html": DOCS,
        "app.js": APP_JS,
        "style.css": b"body { color: red }\n",
        "data.json": b'{"a": 1}\n',
        "logo.png": PNG,
        "notes.txt": b"notes\n",
        "blob.unknownext": b"\x00\x01\x02",
        "hello world.txt": b"spaces\n",
        "static/app.txt": b"static\n",
        ".env": b"API_KEY=" + SECRET,
        ".dev.vars": b"API_KEY=" + SECRET,
        ".dev.vars.prod": b"API_KEY=" + SECRET,
        ".git/config": b"[core]\n" + SECRET,
        "static/.hidden": SECRET,
    }
    for name, data in files.items():
        path = public / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink(root / "secret.txt", public / "link-out.txt")
    os.symlink(root, public / "linkdir", target_is_directory=True)
    os.symlink(public / "about.html", public / "link-in.html")
    return public


@pytest.fixture
def public(tmp_path: Path) -> Path:
    return build_site(tmp_path / "site")


def match(assets: Assets, raw_path: str, **headers: str) -> Asset | None:
    return assets.match(raw_path, Headers({k.replace("_", "-"): v for k, v in headers.items()}))


def served(assets: Assets, raw_path: str, **headers: str) -> str | None:
    """The path (relative to the directory) of the file ``raw_path`` gets, or None."""
    asset = match(assets, raw_path, **headers)
    if asset is None:
        return None
    return asset.path.relative_to(assets.directory).as_posix()


# -- which file a path names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_path", "file"),
    [
        ("/app.js", "app.js"),
        ("/static/app.txt", "static/app.txt"),
        ("/", "index.html"),
        ("/index.html", "index.html"),
        ("/docs/", "docs/index.html"),
        ("/docs", "docs/index.html"),
        ("/docs/index.html", "docs/index.html"),
        ("/about", "about.html"),
        ("/about.html", "about.html"),
        ("/hello%20world.txt", "hello world.txt"),
        ("/static%2fapp.txt", "static/app.txt"),
        ("//static//app.txt", "static/app.txt"),
        ("/link-in.html", "about.html"),
    ],
)
def test_path_names_a_file(public: Path, raw_path: str, file: str) -> None:
    assert served(Assets(public), raw_path) == file


@pytest.mark.parametrize("raw_path", ["/nope", "/nope.js", "/about/", "/static", "/docs/nope"])
def test_no_file_means_the_worker(public: Path, raw_path: str) -> None:
    assert match(Assets(public), raw_path) is None


def test_asset_describes_the_file(public: Path) -> None:
    asset = match(Assets(public), "/app.js")

    assert asset is not None
    stat = (public / "app.js").stat()
    assert asset.path == (public / "app.js").resolve()
    assert asset.size == len(APP_JS)
    assert asset.etag == f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'


def test_etag_changes_with_the_content(public: Path) -> None:
    assets = Assets(public)
    before = match(assets, "/notes.txt")
    (public / "notes.txt").write_bytes(b"notes, edited\n")
    after = match(assets, "/notes.txt")

    assert before is not None and after is not None
    assert before.etag != after.etag
    assert after.size == len(b"notes, edited\n")


@pytest.mark.parametrize(
    ("raw_path", "content_types"),
    [
        ("/index.html", {"text/html; charset=utf-8"}),
        ("/about", {"text/html; charset=utf-8"}),
        ("/style.css", {"text/css; charset=utf-8"}),
        ("/notes.txt", {"text/plain; charset=utf-8"}),
        ("/data.json", {"application/json; charset=utf-8"}),
        ("/app.js", {"text/javascript; charset=utf-8", "application/javascript; charset=utf-8"}),
        ("/logo.png", {"image/png"}),
        ("/blob.unknownext", {"application/octet-stream"}),
    ],
)
def test_content_type(public: Path, raw_path: str, content_types: set[str]) -> None:
    asset = match(Assets(public), raw_path)

    assert asset is not None
    assert asset.content_type in content_types


# -- what is never served ----------------------------------------------------------------------

HIDDEN = [
    "/.env",
    "/.git/config",
    "/.git/",
    "/%2eenv",
    "/static/.hidden",
    "/.git%2fconfig",
    "/.dev.vars",
    "/.dev.vars.prod",
    "/%2Edev.vars",
    "/static/../.dev.vars",
]

TRAVERSAL = [
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/..%2fsecret.txt",
    "/..%2Fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/static/../../secret.txt",
    "/static/%2e%2e/%2e%2e/secret.txt",
    "/./../secret.txt",
    "/..\\secret.txt",
    "/%5c..%5csecret.txt",
    "/static\\..\\..\\secret.txt",
    "/..%5csecret.txt",
    "/app.js%00",
    "/app.js%00.png",
    "/%00/../secret.txt",
    "/link-out.txt",
    "/linkdir/secret.txt",
]


@pytest.mark.parametrize("raw_path", HIDDEN)
def test_hidden_files_are_never_served(public: Path, raw_path: str) -> None:
    assert match(Assets(public), raw_path) is None


@pytest.mark.parametrize("raw_path", TRAVERSAL)
def test_traversal_never_leaves_the_directory(public: Path, raw_path: str) -> None:
    assert match(Assets(public), raw_path) is None


@pytest.mark.parametrize("raw_path", HIDDEN + TRAVERSAL)
def test_spa_navigation_to_a_forbidden_path_gets_index_not_the_file(
    public: Path, raw_path: str
) -> None:
    assets = Assets(public, "single-page-application")

    assert served(assets, raw_path, sec_fetch_mode="navigate") == "index.html"


def test_symlinked_directory_itself_is_outside(public: Path) -> None:
    assert match(Assets(public), "/linkdir/") is None
    assert match(Assets(public), "/linkdir") is None


# -- single-page-application fallback ----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"sec_fetch_mode": "navigate"},
        {"sec_fetch_mode": "navigate", "accept": "*/*"},
        {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
        {"accept": "text/html"},
    ],
)
def test_spa_navigation_gets_index(public: Path, headers: dict[str, str]) -> None:
    assets = Assets(public, "single-page-application")

    assert served(assets, "/rooms/42", **headers) == "index.html"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"accept": "*/*"},
        {"accept": "application/json"},
        {"sec_fetch_mode": "cors"},
        {"sec_fetch_mode": "cors", "accept": "text/html"},
        {"sec_fetch_mode": "no-cors", "accept": "text/html"},
        {"sec_fetch_mode": "same-origin", "accept": "text/html"},
        {"sec_fetch_mode": "websocket", "accept": "text/html"},
    ],
)
def test_spa_fetch_goes_to_the_worker(public: Path, headers: dict[str, str]) -> None:
    assets = Assets(public, "single-page-application")

    assert match(assets, "/rooms/42", **headers) is None


def test_spa_existing_file_wins_over_index(public: Path) -> None:
    assets = Assets(public, "single-page-application")

    assert served(assets, "/app.js", sec_fetch_mode="navigate") == "app.js"
    assert served(assets, "/about", sec_fetch_mode="navigate") == "about.html"


def test_no_fallback_without_spa(public: Path) -> None:
    assert match(Assets(public), "/rooms/42", sec_fetch_mode="navigate") is None
    assert match(Assets(public, "none"), "/rooms/42", accept="text/html") is None


def test_spa_without_index_goes_to_the_worker(public: Path) -> None:
    (public / "index.html").unlink()
    assets = Assets(public, "single-page-application")

    assert match(assets, "/rooms/42", sec_fetch_mode="navigate") is None


# -- through a real server ---------------------------------------------------------------------

WORKER = """\
from opendo import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        body = await request.bytes()
        text = f"worker {request.method} {request.path} {len(body)}"
        return Response(text, headers={"x-from": "worker"})
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    build_site(root)
    (root / "worker.py").write_text(WORKER)
    (root / "opendo.toml").write_text(
        'name = "site"\nmain = "worker.py"\n\n'
        '[assets]\ndirectory = "public"\nnot_found_handling = "single-page-application"\n'
    )
    return root


def app_for(project: Path) -> opendo.App:
    return opendo.create_app(project, persist_to=project.parent / "state")


async def raw_request(address: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is; return the status, the headers and the body bytes."""
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def raw_get(target: bytes, method: bytes = b"GET", extra: bytes = b"") -> bytes:
    return (
        method
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        + extra
        + (b"\r\n")
    )


async def test_http_serves_a_file(project: Path) -> None:
    async with serve(app_for(project)) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            response = await client.get("/app.js?v=2")

    assert response.status_code == 200
    assert response.content == APP_JS
    assert response.headers["content-type"] in (
        "text/javascript; charset=utf-8",
        "application/javascript; charset=utf-8",
    )
    assert response.headers["content-length"] == str(len(APP_JS))
    assert response.headers["cache-control"] == "public, max-age=0, must-revalidate"
    assert response.headers["etag"].startswith('"')
    assert "x-from" not in response.headers


async def test_http_index_and_html_extension(project: Path) -> None:
    async with serve(app_for(project)) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            root = await client.get("/")
            docs = await client.get("/docs/")
            about = await client.get("/about")

    assert (root.status_code, root.content) == (200, INDEX)
    assert (docs.status_code, docs.content) == (200, DOCS)
    assert (about.status_code, about.content) == (200, ABOUT)
    assert about.headers["content-type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize("raw_path", HIDDEN + TRAVERSAL)
async def test_http_forbidden_paths_get_the_worker(project: Path, raw_path: str) -> None:
    target = raw_path.encode("latin-1")
    async with serve(app_for(project)) as address:
        status, headers, body = await raw_request(address, raw_get(target))

    assert status == 200
    assert headers["x-from"] == "worker"
    assert body == b"worker GET " + target + b" 0"
    assert b"SECRET" not in body


async def test_http_spa_navigation_and_fetch(project: Path) -> None:
    async with serve(app_for(project)) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            navigate = await client.get("/rooms/42", headers={"sec-fetch-mode": "navigate"})
            typed = await client.get("/rooms/42", headers={"accept": "text/html"})
            cors = await client.get(
                "/rooms/42", headers={"sec-fetch-mode": "cors", "accept": "text/html"}
            )
            anything = await client.get("/rooms/42", headers={"accept": "*/*"})

    assert navigate.content == INDEX
    assert typed.content == INDEX
    assert cors.text == "worker GET /rooms/42 0"
    assert anything.text == "worker GET /rooms/42 0"


async def test_http_etag_and_if_none_match(project: Path) -> None:
    async with serve(app_for(project)) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            first = await client.get("/style.css")
            etag = first.headers["etag"]
            again = await client.get("/style.css", headers={"if-none-match": etag})
            other = await client.get("/style.css", headers={"if-none-match": '"nope"'})

    assert first.status_code == 200
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert other.status_code == 200
    assert other.content == b"body { color: red }\n"


async def test_http_if_none_match_list(project: Path) -> None:
    async with serve(app_for(project)) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            etag = (await client.get("/style.css")).headers["etag"]
            listed = await client.get("/style.css", headers={"if-none-match": f'"old", {etag}'})

    assert listed.status_code == 304


async def test_http_head_of_an_asset_has_headers_and_no_body(project: Path) -> None:
    async with serve(app_for(project)) as address:
        status, headers, body = await raw_request(address, raw_get(b"/app.js", b"HEAD"))
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            get = await client.get("/app.js")

    assert status == 200
    assert headers["content-length"] == str(len(APP_JS))
    assert headers["etag"] == get.headers["etag"]
    assert headers["content-type"] == get.headers["content-type"]
    assert body == b""


async def test_http_head_of_the_worker_has_no_body(project: Path) -> None:
    async with serve(app_for(project)) as address:
        status, headers, body = await raw_request(address, raw_get(b"/api", b"HEAD"))

    assert status == 200
    assert headers["x-from"] == "worker"
    assert headers["content-length"] == str(len(b"worker HEAD /api 0"))
    assert body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_http_other_methods_on_an_asset_go_to_the_worker(project: Path, method: str) -> None:
    async with serve(app_for(project)) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            response = await client.request(method, "/app.js", content=b"12345")

    assert response.status_code == 200
    assert response.headers["x-from"] == "worker"
    assert response.text == f"worker {method} /app.js 5"


# -- the project's own files, over `opendo serve` ----------------------------------------------

SERVED_WORKER = """\
from opendo import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("worker", status=404)
"""


def served_project(root: Path, directory: str) -> Path:
    """A project whose assets are ``directory``; its config, Worker and secrets beside them."""
    (root / "public").mkdir(parents=True)
    (root / "public" / "index.html").write_bytes(INDEX)
    (root / "worker.py").write_text(SERVED_WORKER + "# " + SECRET.decode())
    (root / ".dev.vars").write_bytes(b"API_KEY=" + SECRET)
    (root / "opendo.toml").write_text(
        f'name = "site"\nmain = "worker.py"\n\n[assets]\ndirectory = "{directory}"\n'
    )
    return root


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def ready_or_exit(process: OpendoProcess) -> int | None:
    """The port once ``opendo`` is ready, or None when it exits first."""
    deadline = time.monotonic() + START_DEADLINE
    while (line := process.next_line("stdout", deadline)) is not None:
        if line.startswith("Ready on "):
            return int(line.rstrip().rpartition(":")[2])
    return None


def refused_start(process: OpendoProcess) -> tuple[int, str]:
    """(exit code, stderr) of an ``opendo`` that must not start; if it did start, what it
    served of the project's own files fails the test."""
    port = ready_or_exit(process)
    if port is not None:
        leaked = {p: http_get(port, p) for p in ("/opendo.toml", "/worker.py", "/index.html")}
        pytest.fail(f"opendo started on a refused assets directory and served {leaked}")
    return process.proc.wait(STOP_DEADLINE), process.drain_stderr()


@pytest.mark.parametrize("directory", [".", "public/.."])
def test_serve_refuses_assets_that_hold_the_project_files(tmp_path: Path, directory: str) -> None:
    root = served_project(tmp_path / "project", directory)

    args = ("serve", root, "--port", "0", "--persist-to", tmp_path / "state")
    with run_opendo(*args) as process:
        code, stderr = refused_start(process)

    assert code == 2
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [stderr.strip()]
    assert stderr.startswith(f"opendo: {(root / 'opendo.toml').resolve()}: assets.directory: ")
    assert "contains the project file" in stderr
    assert "a directory of their own" in stderr


def test_serve_with_assets_apart_serves_them_and_none_of_the_project(tmp_path: Path) -> None:
    root = served_project(tmp_path / "project", "public")

    args = ("serve", root, "--port", "0", "--persist-to", tmp_path / "state")
    with run_opendo(*args) as process:
        port = process.wait_ready()
        assert http_get(port, "/") == (200, INDEX)
        for path in (
            "/opendo.toml",
            "/worker.py",
            "/.dev.vars",
            "/../worker.py",
            "/%2e%2e/.dev.vars",
        ):
            assert http_get(port, path) == (404, b"worker"), path


def test_serve_refuses_a_persist_directory_inside_the_assets(tmp_path: Path) -> None:
    root = served_project(tmp_path / "project", "public")

    args = ("serve", root, "--port", "0", "--persist-to", root / "public" / "state")
    with run_opendo(*args) as process:
        code, stderr = refused_start(process)

    assert code == 2
    assert "Traceback" not in stderr
    # (after the notice that serve reads no .dev.vars: the project has one)
    refusal = stderr.splitlines()[-1]
    assert refusal.startswith(f"opendo: {(root / 'opendo.toml').resolve()}: assets.directory: ")
    assert "object databases would be served" in refusal
