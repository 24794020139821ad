"""What the browser tests share: a JupyterLab server on 127.0.0.1 serving one notebook, and
driving its cells from Playwright (run a cell, wait for the kernel to be idle)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CHROMIUM = "/usr/bin/chromium"
#: Debian's headless Chromium, asking for nothing beyond the pages it is given.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_notebook(path: Path, sources: Sequence[str]) -> None:
    """A notebook of code cells with these sources, for the python3 kernel."""
    document = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for source in sources
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(document))


@contextmanager
def lab_server(
    tmp_path: Path, notebook: str, sources: Sequence[str], log_name: str
) -> Iterator[tuple[str, str]]:
    """JupyterLab on 127.0.0.1 (a free port, a random token, a temporary root, config and
    settings) serving `notebook` made of `sources`; yields (base url, token), always stops
    it, and keeps its log as test-output/`log_name`."""
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / notebook, sources)
    settings = tmp_path / "settings"
    quiet = settings / "@jupyterlab" / "apputils-extension"
    quiet.mkdir(parents=True)
    # No news pop-up, no update check: nothing asks to leave 127.0.0.1.
    (quiet / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "PYTHONPATH": str(REPO),
    }
    log_path = tmp_path / "jupyter.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                "--LabApp.news_url=",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly",
                "--ServerApp.terminals_enabled=False",
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            give_up = time.monotonic() + 90
            while True:
                if server.poll() is not None:
                    raise RuntimeError("jupyter lab exited: " + log_path.read_text())
                try:
                    with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > give_up:
                        raise RuntimeError("jupyter lab did not start in 90 s") from None
                    time.sleep(0.3)
            yield base, token
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait(timeout=10)
            OUTPUT.mkdir(exist_ok=True)
            shutil.copy(log_path, OUTPUT / log_name)


def wait_idle(page: Any, timeout_ms: int = 60_000) -> None:
    """Wait until the kernel is connected and idle (toolbar indicator and status bar)."""
    page.wait_for_function(
        "() => {"
        " const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');"
        " const bar = document.querySelector('#jp-main-statusbar');"
        " return indicator && indicator.getAttribute('data-status') === 'idle'"
        "  && bar && /\\|\\s*Idle/.test(bar.innerText);"
        "}",
        timeout=timeout_ms,
    )


def run_cell(page: Any, index: int, *, until_done: bool = False) -> Any:
    """Run cell `index` with Shift+Enter in its editor, again if the kernel did not take it;
    returns the cell. By default, returns once it runs (`[*]`); with `until_done`, once it
    has run (`[n]`) and the kernel is idle again."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputArea-prompt")
    started = "\\[\\d+\\]" if until_done else "\\[(\\*|\\d+)\\]"
    for _attempt in range(3):
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function(
                f"(element) => /{started}/.test(element.innerText)",
                arg=prompt.element_handle(),
                timeout=60_000 if until_done else 15_000,
            )
            break
        except Exception:
            continue
    else:
        raise AssertionError(f"cell {index} did not run")
    if until_done:
        wait_idle(page)
    return cell


#: Notes, in the page, every click that reaches a row button of a view (`ToggleButtons`):
#: ipywidgets handles a click there by setting the buttons' index and telling the kernel.
_NOTE_CLICKS = """(root) => {
  if (root.__agnClicks) return;
  root.__agnClicks = [];
  root.addEventListener('click', (event) => {
    const button = event.target.closest ? event.target.closest('.widget-toggle-button') : null;
    root.__agnClicks.push(button ? button.innerText : null);
  }, true);
}"""

#: What a view's row buttons show: each one's text, and whether the front end marks it
#: pressed (its index set and not yet cleared by the kernel).
_BUTTONS_STATE = """(root) => Array.from(root.querySelectorAll('.widget-toggle-button'))
  .map(b => (b.classList.contains('mod-active') ? '[pressed] ' : '') + b.innerText)"""


def click_row(page: Any, root: Any, button: Any, done: str, timeout_ms: int = 60_000) -> None:
    """Click a view's row `button` (inside the element `root`) and wait until the page
    function `done` (given `root`) is true.

    The pointer's click is made again (with a warning) only when the browser delivered
    it to no row button: a click whose press and release landed on different elements
    goes to an element that holds both, and ipywidgets acts on none. A click that reached
    another button, or that reached this one without the kernel acting on it, fails, with
    what the buttons show then."""
    handle = root.element_handle()
    handle.evaluate(_NOTE_CLICKS)
    wanted = button.inner_text()
    for attempt in range(3):
        seen = handle.evaluate("(root) => root.__agnClicks.length")
        button.click()
        clicks = handle.evaluate(f"(root) => root.__agnClicks.slice({seen})")
        on_buttons = [text for text in clicks if text is not None]
        if on_buttons:
            assert on_buttons == [wanted], f"the click reached {on_buttons}, not {wanted!r}"
            break
        warnings.warn(
            f"click {attempt + 1} on {wanted!r} reached no row button ({clicks}); clicking again",
            stacklevel=2,
        )
    else:
        raise AssertionError(f"no click on {wanted!r} reached a row button")
    try:
        page.wait_for_function(done, arg=handle, timeout=timeout_ms)
    except Exception as error:
        state = handle.evaluate(_BUTTONS_STATE)
        raise AssertionError(
            f"the click on {wanted!r} reached its button but the view did not change;"
            f" the buttons now: {state}"
        ) from error


class OfflinePage:
    """What `offline_page` yields: the page, and what went wrong while it was open."""

    def __init__(self, page: Any) -> None:
        self.page = page
        #: requests and websockets to anything but 127.0.0.1 (each one aborted)
        self.outside: list[str] = []
        #: console errors and uncaught page errors
        self.errors: list[str] = []
        #: messages of dialogs (alert, confirm), each dismissed
        self.dialogs: list[str] = []

    def check(self) -> None:
        """Fail on anything that left 127.0.0.1, any dialog and any console error."""
        assert self.outside == [], f"requests left 127.0.0.1: {self.outside}"
        assert self.dialogs == [], f"a dialog opened (a span string ran as script?): {self.dialogs}"
        assert self.errors == [], f"console errors: {self.errors}"


def _local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme not in ("http", "https", "ws", "wss") or parsed.hostname == "127.0.0.1"


@contextmanager
def offline_page(width: int, height: int, failure_screenshot: str) -> Iterator[OfflinePage]:
    """A page in headless Chromium that can reach only 127.0.0.1: other requests are
    aborted and noted, as are websockets elsewhere, console errors and dialogs. When the
    block fails, a full-page screenshot is saved as `failure_screenshot` in test-output/
    and the console errors are printed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            opened = OfflinePage(None)  # the page comes once the routes are set

            def route(request_route: Any) -> None:
                url = request_route.request.url
                if _local(url):
                    request_route.continue_()
                else:
                    opened.outside.append(url)
                    request_route.abort()

            def on_dialog(dialog: Any) -> None:
                opened.dialogs.append(dialog.message)
                dialog.dismiss()

            context.route("**/*", route)
            page = opened.page = context.new_page()
            page.on(
                "console",
                lambda message: (
                    opened.errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda error: opened.errors.append(str(error)))
            page.on(
                "websocket",
                lambda socket: None if _local(socket.url) else opened.outside.append(socket.url),
            )
            page.on("dialog", on_dialog)
            page.set_default_timeout(60_000)
            try:
                yield opened
            except Exception:
                OUTPUT.mkdir(exist_ok=True)
                page.screenshot(path=str(OUTPUT / failure_screenshot), full_page=True)
                print("console errors:", opened.errors)
                raise
        finally:
            browser.close()
