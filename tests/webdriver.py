"""Headless Chromium driven through chromedriver's W3C WebDriver protocol, for the page's
tests: open a URL, run a script in the page, wait for a condition, take a screenshot. The
protocol is a handful of JSON calls, so this speaks it with requests rather than adding a
driver library."""

import base64
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import IN_CI

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,1000",
]
START_TIMEOUT = 20.0


def required_program(*names: str) -> str:
    for name in names:
        if path := shutil.which(name):
            return path
    message = f"{names[0]} is not installed (Debian: apt-get install chromium chromium-driver)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """One browser session of a running chromedriver."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = requests.request(method, f"{self._endpoint}{path}", json=body, timeout=60)
        value = response.json()["value"]
        if response.status_code != 200:
            raise AssertionError(f"WebDriver {path}: {value.get('message', value)}")
        return value

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def run(self, script: str, *arguments: Any) -> Any:
        """``script`` as the body of a function in the page, given ``arguments``."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(arguments)})

    def wait_for(self, script: str, timeout: float = 15.0) -> Any:
        """The first truthy value of ``script``, tried until ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.run(script)
            if value or time.monotonic() > deadline:
                assert value, f"timed out waiting for: {script}"
                return value
            time.sleep(0.05)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))


@contextmanager
def chromium_session(tmp_path: Path) -> Iterator[Browser]:
    """A fresh headless Chromium with its own profile, closed at the end."""
    chromium = required_program("chromium", "chromium-browser", "google-chrome")
    driver = required_program("chromedriver")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(base)
        options = {"binary": chromium, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}"]}
        capabilities = {"alwaysMatch": {"goog:chromeOptions": options}}
        created = requests.post(f"{base}/session", json={"capabilities": capabilities}, timeout=60)
        session = created.json()["value"]["sessionId"]
        try:
            yield Browser(f"{base}/session/{session}")
        finally:
            requests.delete(f"{base}/session/{session}", timeout=30)
    finally:
        process.terminate()
        process.wait(30)


def _wait_until_ready(base: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/status", timeout=2).json()["value"]["ready"]:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"chromedriver did not start within {START_TIMEOUT} s")
