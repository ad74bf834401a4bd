"""Headless Chromium (Debian's `chromium`) driven through the DevTools protocol, for tests that
must see what a person's browser renders. No Selenium or Playwright: one process, one page, and
the few protocol calls a test needs (cookies, navigate, evaluate, poll).

Chromium is started in its own process group with a throw-away profile and stopped by that
group's id on every way out (never by name).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = "chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]


def available() -> bool:
    return shutil.which(CHROMIUM) is not None


class BrowserError(AssertionError):
    """Chromium did not start, or a DevTools call failed or timed out."""


class Browser:
    """`with Browser() as page:` one headless page; `page.evaluate(js)` returns the value."""

    def __init__(self, startup_timeout: float = 30.0, call_timeout: float = 30.0):
        self.startup_timeout = startup_timeout
        self.call_timeout = call_timeout
        self.profile: str | None = None
        self.process: subprocess.Popen | None = None
        self._ws = None
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> Browser:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="baldflow-chromium-")
        log = open(Path(self.profile) / "chromium.log", "wb")  # noqa: SIM115 - closed below
        with log:
            self.process = subprocess.Popen(
                [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.startup_timeout
        port = None
        while port is None:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with {self.process.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium wrote no DevToolsActivePort: {self.log()}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                port = int(port_file.read_text().splitlines()[0])
            if port is None:
                time.sleep(0.05)
        # The page that `about:blank` opened; its own endpoint takes Page/Runtime/Network calls.
        page_url = None
        while page_url is None:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = json.load(r)
                page_url = next(
                    (t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None
                )
            if page_url is None:
                if time.monotonic() > deadline:
                    raise BrowserError(f"chromium shows no page target: {self.log()}")
                time.sleep(0.05)
        self._ws = connect(page_url, max_size=None, open_timeout=self.startup_timeout)

    def log(self) -> str:
        if not self.profile:
            return ""
        with contextlib.suppress(OSError):
            text = (Path(self.profile) / "chromium.log").read_text(errors="replace")
            return text[-2000:]
        return ""

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
        if self.process is not None:
            self._stop(self.process)
            self.process = None
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None

    @staticmethod
    def _stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
        """SIGTERM to Chromium's process group (its renderer, zygote and GPU helpers share it),
        then SIGKILL to whatever is left of the group once the browser itself has exited.
        The browser stays unreaped (a zombie) until then, so its id, which is the group's id,
        cannot have passed to a stranger when the group is signalled."""
        group = process.pid
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            flags = os.WEXITED | os.WNOWAIT | os.WNOHANG
            while os.waitid(os.P_PID, group, flags) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        process.wait(timeout=timeout)

    # ------------------------------------------------------------------ protocol
    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are dropped."""
        if self._ws is None:
            raise BrowserError("the browser is not started")
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + self.call_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer to {method} within {self.call_timeout} s")
            try:
                message = json.loads(self._ws.recv(timeout=left))
            except TimeoutError:
                continue
            if message.get("id") != ident:
                continue
            if "error" in message:
                raise BrowserError(f"{method}: {message['error']}")
            return message.get("result", {})

    def set_cookie(self, url: str, name: str, value: str) -> None:
        answer = self.call("Network.setCookie", url=url, name=name, value=value)
        if answer.get("success") is False:
            raise BrowserError(f"chromium refused the cookie {name} for {url}")

    def navigate(self, url: str) -> None:
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise BrowserError(f"navigating to {url}: {answer['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (awaited if it is a promise)."""
        answer = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript failed: {text}")
        return answer.get("result", {}).get("value")

    def wait_for(
        self, expression: str, until: Callable[[Any], bool] = bool, timeout: float = 60.0,
        interval: float = 0.25,
    ) -> Any:  # fmt: skip
        """Evaluate `expression` until `until(value)` holds; return that value. On timeout, fail
        with the last value seen (so let the expression describe what the page shows)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            with contextlib.suppress(BrowserError):  # a navigation may drop the context
                last = self.evaluate(expression)
                if until(last):
                    return last
            if time.monotonic() > deadline:
                raise BrowserError(f"waited {timeout} s for {expression!r}; last value {last!r}")
            time.sleep(interval)
