"""Cold first page: a new ``streamlit run app.py`` and the first load of its default page (Models).

Each repeat starts a server with an empty store (a fresh ``KDWB_HOME``), waits for
``/_stcore/health`` (the server is up, no script has run: nothing of the app is imported yet),
then opens the root URL in a new headless Chromium context (empty browser cache) and times, from
the browser's first request to the server:

- **paint**: the page's title ("Models") and its choices (the Dataset, Teacher architecture and
  Student architecture selectboxes) are visible;
- **tables**: the teacher's and the student's layer tables are visible too (the models are
  built: the page has imported torch and loaded the data).

The same repeats run against a **baseline** tree (by default the tree before
``workbench/config/choices.py`` was added, extracted with ``git archive``), alternating with this tree,
and ``python -c "import torch"`` is timed in each repeat as a measure of the machine's speed at
that moment. One unmeasured start first warms the disk cache, so "cold" means a new server
process, not files read from disk. Medians over the repeats are printed.

    .venv/bin/python bench/cold_start.py [--repeats 5] [--baseline REV] [--smoke]

``--smoke``: one repeat and no unmeasured warm-up start (a check that the script runs, e.g. in
tests/test_bench.py; its figures are not measurements).

Last line: ``cold first page (median of N): paint X s (baseline Y s), tables X s (baseline Y s);
import torch Z s``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the harness's Chromium flags

from tests.browser_harness import CHROMIUM, CHROMIUM_FLAGS, free_port  # noqa: E402

SMOKE = {"repeats": 1}  # --smoke, which also skips the warm-up start

# The title and the three choices, all on screen.
_PAINTED_JS = """() => {
  const h1 = document.querySelector('[data-testid="stMain"] h1');
  if (!h1 || !h1.innerText.includes('Models')) return false;
  const labels = [...document.querySelectorAll('[data-testid="stSelectbox"] label')]
    .map(l => l.innerText);
  return ['Dataset', 'Teacher architecture', 'Student architecture']
    .every(want => labels.some(l => l.includes(want)));
}"""
# The two layer tables side by side (in columns; the layer-pairs editor below is not in one).
_TABLES_JS = """() => [...document.querySelectorAll('[data-testid="stColumn"] [data-testid="stDataFrame"]')]
  .filter(el => el.getBoundingClientRect().height > 0).length >= 2"""


def baseline_rev() -> str:
    """The commit before the one that added ``workbench/config/choices.py`` (the lazy imports;
    ``--follow``: it was added under another path and moved there later)."""
    added = subprocess.run(
        ["git", "log", "--follow", "--format=%H", "--diff-filter=A", "--",
         "workbench/config/choices.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if not added:
        raise SystemExit("workbench/config/choices.py is not committed: pass --baseline REV")
    return f"{added[-1]}~1"


def extract(rev: str, into: Path) -> Path:
    """The tracked files of ``rev`` under ``into`` (``git archive``)."""
    archive = into / "tree.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", rev], cwd=ROOT, stdout=f, check=True)
    tree = into / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


@contextmanager
def server(tree: Path, home: Path, log: Path):
    """``streamlit run app.py`` in ``tree`` (its own ``workbench`` first on the path); yields
    the URL once ``/_stcore/health`` answers."""
    port = free_port()
    env = {**os.environ, "KDWB_HOME": str(home), "PYTHONPATH": str(tree)}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "streamlit", "run", "app.py",
                "--server.port", str(port), "--server.address", "127.0.0.1",
                "--server.headless", "true", "--browser.gatherUsageStats", "false",
            ],
            cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start; see {log}")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                        if resp.read().strip() == b"ok":
                            break
                except OSError:
                    time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def first_page(browser, tree: Path, scratch: Path) -> tuple[float, float]:
    """Seconds from the first request to the painted page, and to its layer tables."""
    home = Path(tempfile.mkdtemp(dir=scratch))
    with server(tree, home, scratch / f"{tree.name}-{home.name}.log") as url:
        context = browser.new_context(viewport={"width": 1400, "height": 1600})
        page = context.new_page()
        started = time.monotonic()
        page.goto(url, wait_until="commit")
        page.wait_for_function(_PAINTED_JS, polling="raf", timeout=120_000)
        painted = time.monotonic() - started
        page.wait_for_function(_TABLES_JS, polling="raf", timeout=120_000)
        tables = time.monotonic() - started
        context.close()
    return painted, tables


def import_torch_seconds() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default=None, help="git revision (default: see above)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:  # explicit options still win over these
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rev = args.baseline or baseline_rev()
    times: dict[str, list[float]] = {"paint": [], "tables": [], "base_paint": [], "base_tables": []}
    torch_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        scratch = Path(tmp)
        base = extract(rev, scratch)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        print(f"baseline {rev}; load average {os.getloadavg()[0]:.2f}", flush=True)
        if not args.smoke:
            first_page(browser, ROOT, scratch)  # warms the disk cache; not counted
        for i in range(args.repeats):
            paint, tables = first_page(browser, ROOT, scratch)
            base_paint, base_tables = first_page(browser, base, scratch)
            torch_s.append(import_torch_seconds())
            for key, value in zip(times, (paint, tables, base_paint, base_tables), strict=True):
                times[key].append(value)
            print(
                f"repeat {i + 1}: paint {paint:.2f} s, tables {tables:.2f} s; baseline paint "
                f"{base_paint:.2f} s, tables {base_tables:.2f} s; import torch "
                f"{torch_s[-1]:.2f} s; load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        browser.close()
    med = {key: statistics.median(values) for key, values in times.items()}
    print(
        f"cold first page (median of {args.repeats}): paint {med['paint']:.2f} s (baseline "
        f"{med['base_paint']:.2f} s), tables {med['tables']:.2f} s (baseline "
        f"{med['base_tables']:.2f} s); import torch {statistics.median(torch_s):.2f} s"
    )


if __name__ == "__main__":
    main()
