"""Every benchmark script runs: ``bench/X.py --smoke`` (tiny sizes, the same code paths) exits 0
and prints its ratio line last. Nothing here times anything: a smoke run measures nothing.

A new script in ``bench/`` is run by this test as soon as it exists; give it a ``--smoke`` flag
and, to check more than its exit code, its marker in ``MARKERS``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser_harness import CHROMIUM

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))

# Not scripts: modules that a script imports.
HELPERS = {
    "analysis_before.py": "a frozen copy of the old similarity module, imported by analysis.py",
}
# What the last line of each script's output starts with (its ratios; demo_ablation's table
# ends with its wall time).
MARKERS = {
    "analysis.py": "cka_matrix vs torch-cka: N=",
    "cluster.py": "cluster: 2 nodes/1 node wall ",
    "cold_start.py": "cold first page (median of 1): paint ",
    "demo_ablation.py": "Wall time: ",
    "engine_overhead.py": "engine/hand step-time ratio: wall ",
    "insight.py": "insight: view/probe time ",
    "search.py": "search/plain runs: wall ",
    "sharing.py": "sharing: Runs page ",
    "suite.py": "cached 5-run suite / 5 student-only runs: warm ",
    "teacher_cache.py": "cached/student-only: wall ",
}
NEEDS_CHROMIUM = {"cold_start.py"}
TIMEOUT_S = 600  # a loaded 2-core machine; a quiet one takes seconds to half a minute each


def _param(script: Path):
    marks = []
    if script.name in HELPERS:
        marks.append(pytest.mark.skip(reason=f"not a script: {HELPERS[script.name]}"))
    if script.name in NEEDS_CHROMIUM:
        marks.append(pytest.mark.browser)
        marks.append(
            pytest.mark.skipif(
                not os.path.exists(CHROMIUM),
                reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` to run "
                f"{script.name} (.ci/run does)",
            )
        )
    return pytest.param(script, marks=marks, id=script.name)


def test_markers_and_helpers_name_existing_scripts():
    names = {s.name for s in SCRIPTS}
    assert names, "no bench/*.py found"
    assert not (set(MARKERS) | set(HELPERS)) - names, "MARKERS or HELPERS name a missing script"


@pytest.mark.parametrize("script", [_param(s) for s in SCRIPTS])
def test_smoke(script: Path, tmp_path):
    env = {
        **os.environ,
        "KDWB_HOME": str(tmp_path / "home"),  # no script touches ./cache
        "TMPDIR": str(tmp_path),  # the scripts' own temporary stores end up here
        # One torch thread: on a loaded 2-core machine a parallel region waits for its
        # descheduled thread, and a smoke run took 8x as long with two.
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(script.relative_to(ROOT)), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    out = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, out
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, out
    marker = MARKERS.get(script.name)
    if marker is not None:
        assert lines[-1].startswith(marker), out
