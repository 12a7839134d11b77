"""The chat example in a real browser: Debian's Chromium driven by Playwright (sync API), against
the real ``opendo serve`` (``run_opendo``) on 127.0.0.1.

Needs /usr/bin/chromium (``apt-get install -y chromium``); no browser is ever downloaded.
Without it this module is skipped, unless OPENDO_REQUIRE_BROWSER=1 (CI sets it): then it
fails. ``OPENDO_UPDATE_SCREENSHOT=1`` makes ``test_screenshot`` rewrite docs/chat.png.

Every page gets its own browser context: its own localStorage (the saved display name) and
sessionStorage (the ids that are "me"), as two people on two machines would have. Nothing
here sleeps: every wait is one of Playwright's expectations, with an explicit timeout.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CHAT, ROOT, run_opendo

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE = os.environ.get("OPENDO_REQUIRE_BROWSER") == "1"

try:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        Dialog,
        Locator,
        Page,
        expect,
        sync_playwright,
    )
except ImportError as error:  # a dev dependency; say so rather than fail to collect
    MISSING: str | None = f"the playwright package is missing ({error}): pip install -e '.[dev]'"
else:
    MISSING = None
if MISSING is None and not CHROMIUM.exists():
    MISSING = f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`"
if MISSING is not None:
    if REQUIRE:
        pytest.fail(
            f"browser tests required (OPENDO_REQUIRE_BROWSER=1), but {MISSING}", pytrace=False
        )
    pytest.skip(MISSING, allow_module_level=True)

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT = 10_000  # ms: bound of an expectation that must come true (and of a page action)
RECONNECT = 25_000  # ms: a page's backoff after a restart (0.5, 1, 2, 4, 8 s ...)
DESKTOP = {"width": 1100, "height": 700}
PHONE = {"width": 390, "height": 844}
SCREENSHOT = ROOT / "docs" / "chat.png"

expect.set_options(timeout=WAIT)  # every expectation below waits up to this, never sleeps

# Runs before chat.js in every page: keeps the page's WebSockets reachable from the test
# (window.__sockets), so a test can send a raw frame through the page's own connection.
KEEP_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.__sockets.push(this);
    }
  };
})();
"""

# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``opendo serve examples/chat`` for the module; each test uses its own rooms."""
    state = tmp_path_factory.mktemp("chat-state")
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", state) as process:
        yield f"http://127.0.0.1:{process.wait_ready()}"


@pytest.fixture(scope="module")
def base_workers_2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``opendo serve examples/chat --workers 2``: a page's connections land in either
    worker, and a room lives in one of them."""
    state = tmp_path_factory.mktemp("chat-state-workers")
    args = ("serve", CHAT, "--port", "0", "--persist-to", state, "--workers", "2")
    with run_opendo(*args) as process:
        yield f"http://127.0.0.1:{process.wait_ready()}"


class People:
    """Opens pages, one browser context each, and records what must never happen in them:
    a dialog (``alert`` and the like) or an uncaught script error."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []

    def open(self, url: str, **options: Any) -> Page:
        options.setdefault("viewport", DESKTOP)
        context = self.browser.new_context(color_scheme="light", **options)
        self.contexts.append(context)
        context.add_init_script(KEEP_SOCKETS)
        page = context.new_page()
        page.set_default_timeout(WAIT)

        def on_dialog(dialog: Dialog) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.goto(url)
        return page

    def join(self, url: str, name: str | None = None, **options: Any) -> Page:
        """Open a room page, wait until it is connected, and set its name if given."""
        page = self.open(url, **options)
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        if name is not None:
            set_name(page, name)
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def people(browser: Browser) -> Iterator[People]:
    crowd = People(browser)
    try:
        yield crowd
        assert crowd.dialogs == [], "a page opened a dialog"
        assert crowd.errors == [], "a page threw"
    finally:
        crowd.close()


# -- helpers --------------------------------------------------------------------------------------


def set_name(page: Page, name: str) -> None:
    """Type a display name and press Enter, as a person does; wait for the server's word."""
    page.fill("#name", name)
    page.press("#name", "Enter")
    expect(page.locator("#status")).to_have_text(f"connected as {name}")


def say(page: Page, text: str) -> None:
    """Type a message in the box and press Enter."""
    page.fill("#input", text)
    page.press("#input", "Enter")
    expect(page.locator("#input")).to_have_value("")


def messages(page: Page) -> Locator:
    return page.locator("#messages li.message:not(.system)")


def system_lines(page: Page) -> Locator:
    return page.locator("#messages li.message.system")


MINE = re.compile(r"\bmine\b")


def expect_messages(page: Page, expected: list[tuple[str, str, bool]]) -> None:
    """The page's messages (system lines aside), in order, as (sender shown, text, mine)."""
    items = messages(page)
    expect(items.locator(".text")).to_have_text([text for _, text, _ in expected])
    expect(items.locator(".sender")).to_have_text([sender for sender, _, _ in expected])
    for index, (_, _, mine) in enumerate(expected):
        if mine:
            expect(items.nth(index)).to_have_class(MINE)
        else:
            expect(items.nth(index)).not_to_have_class(MINE)


def my_id(page: Page) -> int:
    """This page's id on its current connection, from the member list."""
    expect(page.locator("#users li.me")).to_have_count(1)
    return int(page.locator("#users li.me").get_attribute("data-id") or "0")


def no_horizontal_scroll(page: Page) -> None:
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
        " document.body.scrollWidth]"
    )
    scroll, client, body = widths
    assert scroll <= client and body <= client, f"scrolls sideways: {widths}"


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["workers-1", "workers-2"])
def test_two_people_chat(people: People, request: pytest.FixtureRequest, workers: int) -> None:
    base = request.getfixturevalue("base" if workers == 1 else "base_workers_2")
    room = "two-people"
    ada = people.join(f"{base}/{room}")
    bob = people.join(f"{base}/{room}")
    expect(ada).to_have_title(re.compile(re.escape(room)))
    expect(bob.locator("#room")).to_have_text(room)

    # Both see both, by id, before any name is set.
    for page in (ada, bob):
        expect(page.locator("#users li")).to_have_count(2)
        expect(page.locator("#user-count")).to_have_text("2 here")
    expect(ada.locator("#users li.me")).to_have_attribute("data-id", "1")
    expect(bob.locator("#users li.me")).to_have_attribute("data-id", "2")
    expect(ada.locator("#users li")).to_have_text(["user 1 (you)", "user 2"])

    set_name(ada, "Ada")
    set_name(bob, "Bob")
    expect(ada.locator("#users li")).to_have_text(["Ada (you)", "Bob"])
    expect(bob.locator("#users li")).to_have_text(["Ada", "Bob (you)"])
    for page in (ada, bob):
        ids = page.locator("#users li").evaluate_all("items => items.map(i => i.dataset.id)")
        assert ids == ["1", "2"]

    # The join, and the name changes, as system lines.
    expect(system_lines(ada)).to_have_text(
        ["user 2 joined", "you are now Ada", "user 2 is now Bob"]
    )
    expect(system_lines(bob)).to_have_text(["user 1 is now Ada", "you are now Bob"])

    say(ada, "hello from Ada")
    expect_messages(bob, [("Ada", "hello from Ada", False)])
    say(bob, "hi Ada, Bob here")
    expect_messages(ada, [("me", "hello from Ada", True), ("Bob", "hi Ada, Bob here", False)])
    expect_messages(bob, [("Ada", "hello from Ada", False), ("me", "hi Ada, Bob here", True)])
    expect(messages(ada).first.locator("time")).to_have_text(re.compile(r"^\d\d:\d\d$"))


@pytest.mark.slow
def test_pages_see_each_other_in_whichever_worker_they_land(
    people: People, base_workers_2: str
) -> None:
    """Pairs of pages in rooms of their own, with two workers: whether a pair landed in one
    worker or in both (the other one relays), each page sees the other and what it says."""
    for n in range(3):
        url = f"{base_workers_2}/pair-{n}"
        ada = people.join(url, "Ada")
        bob = people.join(url, "Bob")
        for page in (ada, bob):
            expect(page.locator("#users li")).to_have_count(2)
        say(ada, f"hello {n} from Ada")
        say(bob, f"hello {n} from Bob")
        expect_messages(
            ada, [("me", f"hello {n} from Ada", True), ("Bob", f"hello {n} from Bob", False)]
        )
        expect_messages(
            bob, [("Ada", f"hello {n} from Ada", False), ("me", f"hello {n} from Bob", True)]
        )


def test_html_is_shown_as_text(people: People, base: str) -> None:
    room = "html"
    payload = "<img src=x onerror=alert(1)>"
    name = "<img src=y onerror=alert(2)>"  # 28 characters: a valid name
    ada = people.join(f"{base}/{room}")
    bob = people.join(f"{base}/{room}")

    set_name(ada, name)
    say(ada, payload)
    expect_messages(ada, [("me", payload, True)])
    expect_messages(bob, [(name, payload, False)])
    # A third page gets both from the history and the member list (presence).
    carol = people.join(f"{base}/{room}")
    expect_messages(carol, [(name, payload, False)])
    expect(carol.locator("#users li").first).to_have_text(name)

    for page in (ada, bob, carol):
        text = messages(page).locator(".text")
        assert text.evaluate_all("nodes => nodes.map(n => n.textContent)") == [payload]
        assert text.evaluate_all("nodes => nodes.map(n => n.children.length)") == [0]
        expect(page.locator("#messages img, #users img, #user-summary img")).to_have_count(0)
    expect(system_lines(bob)).to_have_text([f"user 1 is now {name}", "user 3 joined"])
    assert people.dialogs == []


ADA_BEFORE = "before the restart, from Ada"
BOB_BEFORE = "before the restart, from Bob"


@pytest.mark.timeout(120)
def test_pages_reconnect_after_a_restart(people: People, tmp_path: Path) -> None:
    state = tmp_path / "state"
    room = "restart"
    with run_opendo("serve", CHAT, "--port", "0", "--persist-to", state) as first:
        port = first.wait_ready()
        url = f"http://127.0.0.1:{port}/{room}"
        ada = people.join(url, "Ada")
        bob = people.join(url, "Bob")
        say(ada, ADA_BEFORE)
        say(bob, BOB_BEFORE)
        expect_messages(ada, [("me", ADA_BEFORE, True), ("Bob", BOB_BEFORE, False)])
        expect_messages(bob, [("Ada", ADA_BEFORE, False), ("me", BOB_BEFORE, True)])
        old_ids = {my_id(ada), my_id(bob)}
        assert old_ids == {1, 2}

        assert first.stop(signal.SIGTERM) == 0
    for page in (ada, bob):
        expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        expect(page.locator("#input")).to_be_disabled()

    # The same port: the pages reconnect to the address they have.
    with run_opendo("serve", CHAT, "--port", str(port), "--persist-to", state) as second:
        assert second.wait_ready() == port
        for page in (ada, bob):
            expect(page.locator("#status")).to_have_attribute(
                "data-state", "connected", timeout=RECONNECT
            )
        # Each page sends its saved name again on its own.
        expect(ada.locator("#status")).to_have_text("connected as Ada")
        expect(bob.locator("#status")).to_have_text("connected as Bob")
        for page in (ada, bob):
            expect(page.locator("#users li")).to_have_count(2)
        # (in the order of the new ids: whichever page reconnected first)
        expect(ada.locator("#users li.me")).to_have_text("Ada (you)")
        expect(ada.locator("#users li:not(.me)")).to_have_text("Bob")
        expect(bob.locator("#users li.me")).to_have_text("Bob (you)")
        expect(bob.locator("#users li:not(.me)")).to_have_text("Ada")
        # New ids (the counter is kept, ids are never reused)...
        new_ids = {my_id(ada), my_id(bob)}
        assert len(new_ids) == 2 and min(new_ids) > max(old_ids)

        # ... yet the history is back, and the old own messages are still "me".
        expect_messages(ada, [("me", ADA_BEFORE, True), ("Bob", BOB_BEFORE, False)])
        expect_messages(bob, [("Ada", ADA_BEFORE, False), ("me", BOB_BEFORE, True)])

        say(bob, "after the restart")
        expect_messages(
            ada,
            [
                ("me", ADA_BEFORE, True),
                ("Bob", BOB_BEFORE, False),
                ("Bob", "after the restart", False),
            ],
        )
        expect_messages(
            bob,
            [
                ("Ada", ADA_BEFORE, False),
                ("me", BOB_BEFORE, True),
                ("me", "after the restart", True),
            ],
        )


def test_a_bad_frame_is_refused_to_its_sender_only(people: People, base: str) -> None:
    room = "bad-frame"
    ada = people.join(f"{base}/{room}", "Ada")
    bob = people.join(f"{base}/{room}", "Bob")
    say(ada, "first")
    expect_messages(bob, [("Ada", "first", False)])
    bob_lines = system_lines(bob).all_text_contents()
    ada_lines = system_lines(ada).all_text_contents()

    # A raw frame that is not JSON, through Ada's page's own connection.
    assert ada.evaluate("window.__sockets.length") == 1
    ada.evaluate("window.__sockets[0].send('this is not JSON')")
    error = ada.locator("#messages li.message.system.error")
    expect(error).to_have_count(1)
    expect(error).to_have_text('expected a JSON object, like {"text": "hi"}')
    expect(ada.locator("#messages li.message").last).to_have_class(
        re.compile(r"\bsystem\b.*\berror\b")
    )
    expect(system_lines(ada)).to_have_count(len(ada_lines) + 1)

    # Still connected, and can still send. The server answers frames in order, so by the time
    # Bob has Ada's next message, an error frame to him would have come before it.
    expect(ada.locator("#status")).to_have_attribute("data-state", "connected")
    say(ada, "still here")
    expect_messages(ada, [("me", "first", True), ("me", "still here", True)])
    expect_messages(bob, [("Ada", "first", False), ("Ada", "still here", False)])
    expect(bob.locator("#messages li.message.error")).to_have_count(0)
    expect(system_lines(bob)).to_have_text(bob_lines)
    expect(bob.locator("#messages li.message").last).to_have_text(re.compile("still here"))


def test_landing_page(people: People, base: str) -> None:
    page = people.open(f"{base}/")
    expect(page.locator("#landing")).to_be_visible()
    expect(page.locator("#chat")).to_be_hidden()

    # New room: a random name, and a room that works.
    page.click("#new-room")
    expect(page).to_have_url(re.compile(rf"^{re.escape(base)}/[a-z0-9]{{8}}$"))
    room = page.url.rsplit("/", 1)[1]
    expect(page.locator("#chat")).to_be_visible()
    expect(page.locator("#room")).to_have_text(room)
    expect(page).to_have_title(re.compile(re.escape(room)))
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    say(page, "first in a new room")
    expect_messages(page, [("me", "first in a new room", True)])
    friend = people.join(page.url)
    expect_messages(friend, [("user 1", "first in a new room", False)])

    # Join by name: the form goes to that room (escaped in the path, shown as typed).
    page = people.open(f"{base}/")
    page.fill("#join-name", "  team standup ")
    page.press("#join-name", "Enter")
    expect(page).to_have_url(f"{base}/team%20standup")
    expect(page.locator("#room")).to_have_text("team standup")
    expect(page).to_have_title(re.compile("team standup"))
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    say(page, "standup time")
    expect_messages(page, [("me", "standup time", True)])

    # The Join button does the same; an empty name goes nowhere.
    page = people.open(f"{base}/")
    page.click("#join-form button[type=submit]")
    expect(page).to_have_url(f"{base}/")
    page.fill("#join-name", "team standup")
    page.click("#join-form button[type=submit]")
    expect(page).to_have_url(f"{base}/team%20standup")
    expect_messages(page, [("user 1", "standup time", False)])


def test_phone_layout(people: People, base: str) -> None:
    room = "a-phone-room-with-a-rather-long-name-that-must-wrap"
    options = {"viewport": PHONE, "is_mobile": True, "has_touch": True}
    ada = people.join(f"{base}/{room}", "Ada", **options)
    bob = people.join(f"{base}/{room}", "Bob", **options)
    say(bob, "a long word: " + "x" * 200)
    say(ada, "see https://example.com/" + "a/very/long/path/" * 10)
    expect(messages(ada)).to_have_count(2)

    no_horizontal_scroll(ada)
    for locator in ("#input", "#send", "#people-toggle", "#name", "#status"):
        expect(ada.locator(locator)).to_be_in_viewport()
    expect(ada.locator("#send")).to_be_enabled()

    # The member list is folded into one line; a tap opens it.
    toggle = ada.locator("#people-toggle")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(ada.locator("#user-count")).to_have_text("2 here")
    expect(ada.locator("#user-summary")).to_have_text("you, Bob")
    expect(ada.locator("#users")).to_be_hidden()
    toggle.tap()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(ada.locator("#users")).to_be_visible()
    expect(ada.locator("#users li")).to_have_text(["Ada (you)", "Bob"])
    for item in ada.locator("#users li").all():
        expect(item).to_be_in_viewport()
    no_horizontal_scroll(ada)
    expect(ada.locator("#input")).to_be_in_viewport()
    toggle.tap()
    expect(ada.locator("#users")).to_be_hidden()

    # Sending by tapping Send works too.
    ada.locator("#input").fill("sent from a phone")
    ada.locator("#send").tap()
    expect_messages(
        bob,
        [
            ("me", "a long word: " + "x" * 200, True),
            ("Ada", "see https://example.com/" + "a/very/long/path/" * 10, False),
            ("Ada", "sent from a phone", False),
        ],
    )
    no_horizontal_scroll(bob)


def test_screenshot(people: People, base: str, tmp_path: Path) -> None:
    """Two people chatting, side by side; docs/chat.png with OPENDO_UPDATE_SCREENSHOT=1."""
    room = "lobby"
    size = {"width": 700, "height": 620}  # each window: still the wide layout (> 40rem)
    ada = people.join(f"{base}/{room}", "Ada", viewport=size)
    bob = people.join(f"{base}/{room}", "Bob", viewport=size)
    lines = [
        (ada, "Hi Bob! Is the new room working for you?"),
        (bob, "Works here. Every path is a room, so this one is /lobby."),
        (ada, "And it keeps the last 100 messages, even across a restart."),
        (bob, "Nice: one Durable Object per room, in plain Python."),
    ]
    for count, (page, text) in enumerate(lines, 1):
        say(page, text)
        expect(messages(ada)).to_have_count(count)
        expect(messages(bob)).to_have_count(count)
    for page in (ada, bob):
        page.locator("#input").blur()

    shots = [base64.b64encode(page.screenshot()).decode() for page in (ada, bob)]
    frame = people.open("about:blank", viewport={"width": 2 * size["width"] + 36, "height": 660})
    frame.set_content(
        "<body style='margin:0;padding:12px;display:flex;gap:12px;background:#cbd2dc'>"
        + "".join(
            f"<img alt='' src='data:image/png;base64,{shot}' style='display:block;"
            "border-radius:8px;box-shadow:0 2px 10px rgba(0,0,0,.25)'>"
            for shot in shots
        )
        + "</body>"
    )
    expect(frame.locator("img")).to_have_count(2)
    frame.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    png = frame.screenshot(full_page=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    target = SCREENSHOT if os.environ.get("OPENDO_UPDATE_SCREENSHOT") == "1" else tmp_path / "c.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png)


# -- the data explorer (the admin listener's /explorer) ---------------------------------------

EXPLORER_SHOT = ROOT / "docs" / "explorer.png"


def test_the_explorer_shows_objects_their_storage_and_read_only_queries(
    people: People, tmp_path: Path
) -> None:
    """docs/explorer.png with OPENDO_UPDATE_SCREENSHOT=1."""
    args = ["serve", CHAT, "--port", "0", "--admin-port", "0", "--persist-to", tmp_path / "s"]
    with run_opendo(*args) as process:
        deadline = time.monotonic() + 20
        admin = None
        while admin is None:
            line = process.next_line("stderr", deadline)
            assert line is not None, process.stderr_text()
            if match := re.search(r"Admin on (http://127\.0\.0\.1:\d+)", line):
                admin = match.group(1)
        base = f"http://127.0.0.1:{process.wait_ready()}"
        ada = people.join(f"{base}/kitchen", "Ada")
        for count, text in enumerate(
            ["Soup is on the stove", "Who took the last <b>bread</b>?"], 1
        ):
            say(ada, text)
            expect(messages(ada)).to_have_count(count)

        page = people.open(f"{admin}/", viewport={"width": 1000, "height": 760})
        expect(page.locator("h1")).to_have_text("Objects")  # / leads to /explorer
        row = page.locator("tr", has_text="kitchen")
        expect(row).to_contain_text("Chat")
        row.locator("a").click()
        expect(page.locator("h1")).to_have_text("Chat kitchen")
        expect(page.locator("table", has_text="messages")).to_contain_text("2")

        page.fill("textarea[name=sql]", "SELECT name, text FROM messages ORDER BY seq")
        page.click("button[type=submit]")
        result = page.locator("#query-result")
        expect(result.locator("tbody tr")).to_have_count(2)
        expect(result).to_contain_text("Who took the last <b>bread</b>?")  # as text, escaped
        expect(result).to_contain_text("Ada")
        png = page.screenshot(full_page=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        update = os.environ.get("OPENDO_UPDATE_SCREENSHOT") == "1"
        (EXPLORER_SHOT if update else tmp_path / "explorer.png").write_bytes(png)

        page.fill("textarea[name=sql]", "DELETE FROM messages")
        page.click("button[type=submit]")
        expect(page.locator("#query-error")).to_contain_text("only queries that read")
        say(ada, "still here")  # nothing was deleted, and the room carries on
        expect(messages(ada)).to_have_count(3)
