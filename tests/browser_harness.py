"""Real-browser test harness: `streamlit run app.py` on a free port, driven by Playwright.

Chromium is Debian's (/usr/bin/chromium); `playwright install` cannot work offline, so the
tests launch that binary with flags that keep it off the network.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
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

    def __init__(self, home: Path, log_path: Path, env: dict[str, str] | None = None):
        """``env``: more environment for the server (``KDWB_CONFIG`` for a hosted instance)."""
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "KDWB_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
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
    from workbench.storage.store import ACTIVE, Store

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


class UserProxy:
    """A stand-in for the authenticating reverse proxy in front of a shared instance
    (oauth2-proxy, Authelia): every request it forwards to ``upstream`` carries ``header:
    user``, and a client's own ``header`` is dropped, as a real one must.

    Why a proxy and not Playwright's ``extra_http_headers`` (or ``context.route``): Chromium
    adds those to page loads and fetches but not to the WebSocket handshake, and Streamlit's
    ``st.context.headers`` are the headers of that handshake. So the test goes the way a lab
    deploys it, through a proxy. It is as small as that allows: it reads each request head,
    rewrites its headers, then copies bytes both ways; plain requests get ``Connection: close``
    so that every request on a connection has passed through the rewrite (a WebSocket upgrade
    stays one connection for its lifetime).
    """

    def __init__(self, upstream_port: int, user: str, header: str = "X-Forwarded-User"):
        self.upstream_port = upstream_port
        self.user = user
        self.header = header
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{user}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.update(socks)

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            self._track(client)
            head, rest = self._read_head(client)
            if head is None:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
            upstream.settimeout(None)
            self._track(upstream)
            upstream.sendall(self._rewrite(head) + rest)
            back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
            back.start()
            self._pipe(client, upstream)
            back.join()
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._open.discard(sock)
                    sock.close()

    @staticmethod
    def _read_head(client: socket.socket) -> tuple[bytes | None, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk or len(data) > 1 << 20:
                return None, b""
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def _rewrite(self, head: bytes) -> bytes:
        request_line, *lines = head.decode("latin-1").split("\r\n")
        fields = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        upgrade = any(k.lower() == "upgrade" and v.lower() == "websocket" for k, v in fields)
        drop = {self.header.lower()} | (set() if upgrade else {"connection", "keep-alive"})
        kept = [(k, v) for k, v in fields if k.lower() not in drop]
        kept.append((self.header, self.user))
        if not upgrade:
            kept.append(("Connection", "close"))
        text = "\r\n".join([request_line, *(f"{k}: {v}" for k, v in kept)]) + "\r\n\r\n"
        return text.encode("latin-1")

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):  # the other side may be gone already
                target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:  # their threads see the end and close them
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
