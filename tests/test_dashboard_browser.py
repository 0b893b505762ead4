"""The dashboard page in Debian's headless Chromium, served by a stand-in for the worker's web
server: a worker that answers, then freezes (its port accepts and never answers), answers
again, then dies (nothing listens). Operations must see the figures refresh in place and, while
the worker does not answer, a banner saying since when, never a browser error page."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from stream.settings import Settings
from stream.worker.dashboard import render
from stream.worker.watch import WorkerWatch
from tests.records import T0

pytestmark = pytest.mark.slow


class Stand:
    """What the stand-in worker does with a request: answer a page naming the app id, or hang."""

    def __init__(self) -> None:
        self.app_id = "first"
        self.status = 200
        self.hang = threading.Event()
        self.released = threading.Event()


def _server(stand: Stand, port: int = 0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if stand.hang.is_set():
                stand.released.wait(30)  # a frozen worker: connected, never answered
                return
            body = render(WorkerWatch(Settings(), clock=lambda: T0 / 1000), {}, T0 / 1000, stand.app_id, refresh_s=1)
            data = body.encode()
            self.send_response(stand.status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def browser_page() -> Iterator[Any]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_the_dashboard_refreshes_in_place_and_says_when_its_worker_froze_or_died(browser_page: Any) -> None:
    page = browser_page
    stand = Stand()
    server = _server(stand)
    port = server.server_address[1]
    try:
        page.goto(f"http://127.0.0.1:{port}/qris/dashboard")
        assert page.locator("h1").inner_text() == "qris-guard operations: first"
        assert page.locator("#stale").is_hidden()
        stand.app_id = "second"  # the next refresh shows new figures in place
        page.wait_for_function("document.querySelector('h1').textContent.endsWith('second')", timeout=10_000)
        # Frozen: the port accepts and never answers. The banner comes once a fetch is 4 s unanswered.
        stand.hang.set()
        page.locator("#stale").wait_for(state="visible", timeout=15_000)
        banner = page.locator("#stale").inner_text()
        assert banner.startswith("This worker has not answered since ") and " WIB (no answer within 4 s)" in banner
        assert page.locator("h1").inner_text().endswith("second")  # the last figures stay under it
        # It answers again: the banner goes with the next page.
        stand.app_id = "third"
        stand.hang.clear()
        stand.released.set()
        page.wait_for_function("document.querySelector('h1').textContent.endsWith('third')", timeout=15_000)
        assert page.locator("#stale").is_hidden()
        # An error page (a worker restoring, a proxy): the banner says what it answered.
        stand.status = 503
        page.locator("#stale").wait_for(state="visible", timeout=15_000)
        assert "(answered HTTP 503)" in page.locator("#stale").inner_text()
        assert page.locator("h1").inner_text().endswith("third")
        stand.status = 200
        page.locator("#stale").wait_for(state="hidden", timeout=15_000)
        # Dead: nothing listens on the port any more.
        server.shutdown()
        server.server_close()
        page.locator("#stale").wait_for(state="visible", timeout=15_000)
        assert "(unreachable)" in page.locator("#stale").inner_text()
        assert page.url.endswith("/qris/dashboard") and page.locator("h1").inner_text().endswith("third")
        time.sleep(2.5)  # it keeps trying, and stays on the page meanwhile
        assert page.locator("h1").count() == 1
        # The worker comes back on the same port: the page recovers by itself.
        stand.app_id = "back"
        again = _server(stand, port)
        try:
            page.wait_for_function("document.querySelector('h1').textContent.endsWith('back')", timeout=15_000)
            assert page.locator("#stale").is_hidden()
        finally:
            again.shutdown()
            again.server_close()
    finally:
        stand.released.set()
        server.server_close()
