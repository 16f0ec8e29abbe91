"""Real-browser test harness: `streamlit run app.py` on a free port, driven by Playwright.

Chromium is Debian's (/usr/bin/chromium); `playwright install` cannot work offline, so the
tests launch that binary with flags that keep it off the network.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"

# stApp carries the script state; Streamlit's own e2e tests read the same attribute.
_BUSY_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return !app || app.getAttribute('data-test-script-state') !== 'notRunning'
      || document.querySelector('[data-testid="stSkeleton"]') !== null;
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """`streamlit run app.py` with its own store; stopped with .stop()."""

    def __init__(self, home: Path, log_path: Path):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "KDWB_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        # SIGUSR1 makes the server write every thread's stack to its log (``dump_threads``).
        launcher = (
            "import faulthandler, signal, sys; "
            "faulthandler.register(signal.SIGUSR1, all_threads=True); "
            "from streamlit.web.cli import main; sys.argv[0] = 'streamlit'; sys.exit(main())"
        )
        self.proc = subprocess.Popen(
            [
                sys.executable, "-c", launcher, "run", "app.py",
                "--server.port", str(self.port),
                "--server.address", "127.0.0.1",
                "--server.headless", "true",
                "--browser.gatherUsageStats", "false",
            ],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"streamlit exited with {self.proc.returncode}; see {self._log.name}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as resp:
                    if resp.read().strip() == b"ok":
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"streamlit did not answer /_stcore/health within {timeout:.0f}s")

    def dump_threads(self) -> None:
        """Write the server's thread stacks to its log (to see where something hangs)."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def wait_idle(page, timeout_ms: int = 90_000, settle_ms: int = 500) -> None:
    """Wait until the page has content and the script has not run for ``settle_ms``."""
    page.wait_for_selector('[data-testid="stMain"] [data-testid="stHeading"]', timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        if page.evaluate(_BUSY_JS):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif (time.monotonic() - quiet_since) * 1000 >= settle_ms:
            return
        page.wait_for_timeout(100)
    raise TimeoutError("the app kept running its script")


def assert_no_exception(page) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()


LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def watch_requests(page) -> list[str]:
    """Every request of ``page`` that would leave the machine (the list fills as it browses)."""
    from urllib.parse import urlparse

    outside: list[str] = []

    def check(request) -> None:
        url = urlparse(request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname not in LOCAL_HOSTS:
            outside.append(request.url)

    page.on("request", check)
    return outside


def wait_for_runs(home: Path, run_ids, *, stall_s: float = 120.0, poll_s: float = 0.5) -> list:
    """Wait until the runs have finished, however long that takes on a busy machine: the wait
    fails only when none of them made progress (a logged step, a status change) for
    ``stall_s``. Returns their records."""
    from workbench.store import ACTIVE, Store

    store = Store(home)
    try:
        last, since = None, time.monotonic()
        while True:
            records = [store.get_run(r) for r in run_ids]
            if not any(r["status"] in ACTIVE for r in records):
                return records
            state = [(r["status"], (r.get("progress") or {}).get("step")) for r in records]
            if state != last:
                last, since = state, time.monotonic()
            elif time.monotonic() - since > stall_s:
                raise TimeoutError(f"no progress for {stall_s:.0f}s: {state}")
            time.sleep(poll_s)
    finally:
        store.close()


def boxes_overlap(a: dict, b: dict) -> bool:
    """Whether two Playwright bounding boxes intersect (by more than a pixel)."""
    return (
        a["x"] + a["width"] - 1 > b["x"]
        and b["x"] + b["width"] - 1 > a["x"]
        and a["y"] + a["height"] - 1 > b["y"]
        and b["y"] + b["height"] - 1 > a["y"]
    )
