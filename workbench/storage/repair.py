"""``store check`` and ``store repair``: find damage in a run store, rebuild its index.

The run index (``store/cache.db``, SQLite via diskcache) is the one place that lists runs; each
run also keeps a manifest beside its checkpoint (``checkpoints/<run_id>.manifest.json``: record,
history, epochs), each suite one of its own (``checkpoints/suite-<id>.manifest.json``) and each
search a copy of its record beside its journal (``searches/<id>.json``).
``check_store`` compares the two and the files on disk; ``repair_store`` moves a damaged,
truncated or empty index aside (renamed, never deleted), builds a new one from the manifests,
and fills in what a readable index lost (a history whose value file is gone, a missing
manifest, a probe). A manifest written before manifests held probes gives none back: such a
run shows its probe as missing.

Run both with the app and the workers stopped: a repair replaces the index they have open. One
that is still running notices (``Store.index_replaced``): its runs stop writing (their claims
are fenced, ``workbench.storage.fencing``) and a worker reopens the new index, saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import StoreError
from workbench.runs import queue as runqueue
from workbench.storage.failures import DB_NAME, REPAIR, repair_marker
from workbench.storage.manifests import read_manifest, write_json_atomic
from workbench.storage.store import RUN_FILE_SUFFIXES, Store, default_home

__all__ = ["CheckReport", "Finding", "RepairReport", "check_store", "repair_store"]

_LEFTOVER_AGE_S = 3600  # a temporary file this old belongs to a writer that died


@dataclass(frozen=True)
class Finding:
    """One problem: what (``index``, ``checkpoint``, ``manifest``, ``history``, ``probe``,
    ``orphan``, ``leftover``), which run, a line for people, and whether repair fixes it."""

    kind: str
    run_id: str | None
    message: str
    repairable: bool


@dataclass
class CheckReport:
    home: Path
    index: str  # "ok", "missing", "empty", "damaged", "incomplete" (repair cut short), "read-only"
    runs: int  # runs listed in the index
    manifests: int  # run manifests on disk
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def lines(self) -> list[str]:
        head = (
            f"run store {self.home}: index {self.index}, {self.runs} runs indexed, "
            f"{self.manifests} run manifests"
        )
        body = [f"  {f.kind}: {f.message}" for f in self.findings]
        if any(f.repairable for f in self.findings):
            body.append(f"run `{REPAIR}` to fix what is marked repairable")
        return [head, *body] if body else [head, "  no damage found"]


@dataclass
class RepairReport:
    home: Path
    moved_aside: Path | None
    restored_runs: list[str]
    restored_suites: list[str]
    manifests_written: list[str]
    histories_restored: list[str]
    leftovers_removed: list[Path]
    after: CheckReport
    restored_searches: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.moved_aside:
            out.append(f"moved the damaged index aside to {self.moved_aside} (not deleted)")
        out.append(
            f"restored {len(self.restored_runs)} runs and {len(self.restored_suites)} suites "
            "from their manifests"
        )
        if self.restored_searches:
            out.append(f"restored {len(self.restored_searches)} searches from searches/*.json")
        if self.histories_restored:
            out.append(f"restored the history of {len(self.histories_restored)} runs")
        if self.manifests_written:
            out.append(f"wrote {len(self.manifests_written)} missing manifests")
        if self.leftovers_removed:
            out.append(f"removed {len(self.leftovers_removed)} leftover temporary files")
        return out + ["after the repair:", *self.after.lines()]


# ---------------------------------------------------------------------------- files on disk
def _scan(home: Path) -> tuple[dict[str, set[str]], list[Path], list[Path]]:
    """``({run id: {suffixes present}}, [suite manifests], [leftover temporary files])``."""
    runs: dict[str, set[str]] = {}
    suites: list[Path] = []
    leftovers: list[Path] = []
    folder = home / "checkpoints"
    if not folder.is_dir():
        return runs, suites, leftovers
    for path in folder.iterdir():
        name = path.name
        if name.startswith(".") or ".tmp" in name:
            leftovers.append(path)
        elif name.startswith("suite-") and name.endswith(".manifest.json"):
            suites.append(path)
        else:
            for suffix in sorted(RUN_FILE_SUFFIXES, key=len, reverse=True):
                if name.endswith(suffix):
                    runs.setdefault(name[: -len(suffix)], set()).add(suffix)
                    break
    return runs, suites, leftovers


def _index_state(home: Path) -> tuple[str, str]:
    """``(state, detail)`` of the index file, read without changing it."""
    db = home / "store" / DB_NAME
    if not db.exists():
        return "missing", f"{db} does not exist"
    if db.stat().st_size == 0:  # never so in WAL mode, even with its pages in the -wal file
        return "empty", f"{db} is empty (0 bytes)"
    try:  # immutable: no locks, no shared-memory file (works on a full disk), no writes
        con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
        try:
            result = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return "damaged", str(exc)
    if result != [("ok",)]:
        return "damaged", "; ".join(str(r[0]) for r in result[:3])
    return "ok", ""


def _weights_readable(path: Path) -> bool:
    """A cheap test of a run's final weights (a torch zip): its zip directory (at the end of
    the file) reads."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _old(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > _LEFTOVER_AGE_S
    except OSError:
        return False


# ---------------------------------------------------------------------------- check
def check_store(home: str | Path | None = None) -> CheckReport:
    """Report damage in the store at ``home``; changes nothing."""
    home = Path(home) if home is not None else default_home()
    files, suites, leftovers = _scan(home)
    manifests = sorted(r for r, s in files.items() if ".manifest.json" in s)
    state, detail = _index_state(home)
    if state == "ok" and repair_marker(home).exists():
        state, detail = "incomplete", f"a repair was interrupted ({repair_marker(home)} is left)"
    report = CheckReport(home, state, 0, len(manifests))
    add = report.findings.append
    if state != "ok":
        what = {"missing": "is missing", "empty": "is empty"}.get(state, f"is {state} ({detail})")
        add(
            Finding(
                "index",
                None,
                f"the run index {home / 'store' / DB_NAME} {what}; {len(manifests)} runs and "
                f"{len(suites)} suites can be restored from their manifests",
                True,
            )
        )
        if state in ("missing", "empty") and not files:
            report.findings.clear()  # a store that was never used
        for run_id in sorted(set(files) - set(manifests)):
            add(
                Finding(
                    "orphan",
                    run_id,
                    f"run {run_id} has files ({', '.join(sorted(files[run_id]))}) but no "
                    "manifest: it cannot be restored",
                    False,
                )
            )
        return report
    try:
        store = Store(home)
    except StoreError as exc:
        report.index = "damaged"
        add(Finding("index", None, str(exc), True))
        return report
    try:
        if store.read_only is not None:
            report.index = "read-only"
            add(Finding("index", None, str(store.read_only), False))
        _check_runs(store, files, report)
    finally:
        store.close()
    for path in leftovers:
        if _old(path):
            add(Finding("leftover", None, f"{path} is left over from a write that died", True))
    return report


def _check_run(store: Store, record: dict, present: set[str]) -> list[Finding]:
    """What is wrong with one indexed run: its checkpoint, manifest, history and probe."""
    findings: list[Finding] = []
    add = findings.append
    run_id = record["id"]
    if record["status"] == "completed":
        path = store.weights_path(run_id)
        if ".pt" not in present:
            add(
                Finding(
                    "checkpoint",
                    run_id,
                    f"completed run {run_id} has no checkpoint ({path} is missing): train "
                    "it again or restore the file",
                    False,
                )
            )
        elif not _weights_readable(path):
            add(
                Finding(
                    "checkpoint",
                    run_id,
                    f"the checkpoint of run {run_id} ({path}) is truncated or overwritten: "
                    "train it again or restore the file",
                    False,
                )
            )
    manifest = None
    if ".manifest.json" not in present:
        add(Finding("manifest", run_id, f"run {run_id} has no manifest", True))
    else:
        try:
            manifest = read_manifest(store.manifest_path(run_id))
        except StoreError as exc:
            add(Finding("manifest", run_id, f"{exc}; repair writes it anew", True))
    try:
        store.history(run_id)
    except StoreError as exc:
        saved = manifest is not None and bool(manifest.get("history"))
        message = (
            f"the metric history of run {run_id} is damaged (a value file is missing); "
            "repair restores it from the manifest"
            if saved
            else str(exc)
        )
        add(Finding("history", run_id, message, saved))
    if store.probe_state(run_id) == "missing":
        add(
            Finding(
                "probe",
                run_id,
                f"the probe of run {run_id} was saved but is missing: the Compare page "
                "cannot show what it learned (run it again to probe it)",
                False,
            )
        )
    return findings


def _check_runs(store: Store, files: dict[str, set[str]], report: CheckReport) -> None:
    add = report.findings.append
    try:
        records = store.list_runs()
    except StoreError as exc:
        report.index = "damaged"
        add(Finding("index", None, str(exc), True))
        return
    report.runs = len(records)
    indexed = {r["id"] for r in records}
    for record in records:
        report.findings.extend(_check_run(store, record, files.get(record["id"], set())))
    for run_id in sorted(set(files) - indexed):
        present = files[run_id]
        if ".manifest.json" in present:
            add(Finding("orphan", run_id, f"run {run_id} is not in the index", True))
        else:
            add(
                Finding(
                    "orphan",
                    run_id,
                    f"{', '.join(run_id + s for s in sorted(present))} in checkpoints/ belong "
                    "to no run and have no manifest: delete them, or import a .pt as a teacher",
                    False,
                )
            )


# ---------------------------------------------------------------------------- repair
def repair_store(home: str | Path | None = None) -> RepairReport:
    """Rebuild the run index from the manifests; see the module docstring. A marker file
    (``store.repairing.json``) is kept from before the index is moved aside until every run
    is restored: a repair killed on the way leaves it, every store open and ``store check``
    then say so, and the next repair finishes the work (restoring every run again)."""
    home = Path(home) if home is not None else default_home()
    marker = repair_marker(home)
    finishing = marker.exists()
    state, _detail = _index_state(home)
    moved = None
    if state != "ok" and (home / "store").is_dir() and any((home / "store").iterdir()):
        moved = home / f"store.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    _write_marker(marker, moved)  # until every run is back: no one opens a partial index
    if moved is not None:
        _move_aside(home, moved)
    files, suites, leftovers = _scan(home)
    store = Store(home, rebuilding=True)
    try:
        if store.read_only is not None:
            raise store.read_only
        restored, histories, written = _restore_runs(store, files, overwrite=finishing)
        restored_suites = _restore_suites(store, suites)
        restored_searches = _restore_searches(store, home / "searches")
        if restored:
            runqueue.recover(store)  # restored `running` runs whose process is gone
    finally:
        store.close()
    marker.unlink(missing_ok=True)  # every run is back: the index is whole
    removed = []
    for path in leftovers:
        if _old(path):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return RepairReport(
        home,
        moved,
        restored,
        restored_suites,
        written,
        histories,
        removed,
        check_store(home),
        restored_searches,
    )


def _write_marker(marker: Path, moved: Path | None) -> None:
    info = {"started_at": time.time(), "pid": os.getpid(), "moved_aside": str(moved or "")}
    try:
        write_json_atomic(marker, info)
    except OSError as exc:
        raise StoreError(
            f"could not write {marker} ({exc.strerror}), which marks a repair in progress: "
            f"free space or fix the folder's permissions, then run `{REPAIR}` again"
        ) from None


def _move_aside(home: Path, moved: Path) -> None:
    try:  # the whole folder: the index and its value files
        os.rename(home / "store", moved)
    except OSError as exc:
        repair_marker(home).unlink(missing_ok=True)  # nothing was moved: nothing to finish
        raise StoreError(
            f"could not move the damaged index {home / 'store'} aside to {moved} "
            f"({exc.strerror}); move it yourself, then run `{REPAIR}` again"
        ) from None


def probe_arrays(probe: dict[str, Any]) -> dict[str, Any]:
    """A probe read back from its manifest (JSON lists) with the arrays it was saved with: the
    CKA matrix and the Gram matrices as float32, the Gram subset's labels as int64."""
    probe = dict(probe)
    if probe.get("cka") is not None:
        probe["cka"] = np.asarray(probe["cka"], dtype=np.float32)
    if probe.get("gram_labels") is not None:
        probe["gram_labels"] = np.asarray(probe["gram_labels"], dtype=np.int64)
    probe["grams"] = [
        {**g, **{side: np.asarray(g[side], dtype=np.float32) for side in ("student", "teacher")}}
        for g in probe.get("grams") or []
    ]
    return probe


def _restore_probe(store: Store, run_id: str, manifest: dict[str, Any] | None) -> None:
    """Put the manifest's probe back when the store lacks it."""
    if manifest is None or manifest.get("probe") is None or store.probe_state(run_id) == "saved":
        return
    store.set(f"probe:{run_id}", probe_arrays(manifest["probe"]))


def _restore_runs(
    store: Store, files: dict[str, set[str]], *, overwrite: bool = False
) -> tuple[list[str], list[str], list[str]]:
    """Put back every run that has a manifest and is not indexed (``overwrite``: every run
    with a manifest, when finishing an interrupted repair whose last run may be half
    written); then the teachers' registry and the manifests the index has and the disk lacks."""
    restored, histories, written = [], [], []
    teachers: dict[str, tuple[float, str]] = {}
    for run_id, present in sorted(files.items()):
        manifest = None
        if ".manifest.json" in present:
            with contextlib.suppress(StoreError):
                manifest = read_manifest(store.manifest_path(run_id))
        if overwrite or not store.has_run(run_id):
            if manifest is None:
                continue
            record: dict[str, Any] = manifest["record"]
            store.set(f"run:{run_id}", record)
            store.set_history(run_id, manifest.get("history") or [])
            store.set_epochs(run_id, manifest.get("epochs") or [])
            _restore_probe(store, run_id, manifest)
            restored.append(run_id)
            if (
                record.get("role") == "teacher"
                and record.get("status") == "completed"
                and ".pt" in present
            ):
                # the key the engine registered it under (fingerprint and data split version);
                # a teacher of an older split has none and is not registered again
                fp, created = record.get("teacher_key"), record.get("created_at") or 0.0
                if fp and (fp not in teachers or created < teachers[fp][0]):
                    teachers[fp] = (created, run_id)
            continue
        try:
            store.history(run_id)
        except StoreError:
            if manifest is not None and manifest.get("history"):
                store.set_history(run_id, manifest["history"])
                histories.append(run_id)
        _restore_probe(store, run_id, manifest)  # a probe lost from an index that stayed
    if restored:  # records written as they were: the index of active runs is built anew
        store.rebuild_active_index()
    for fp, (_created, run_id) in teachers.items():
        if store.find_teacher(fp) is None:
            store.set_teacher(fp, run_id)
    for record in store.list_runs():  # indexed runs without a (readable) manifest
        path = store.manifest_path(record["id"])
        try:
            read_manifest(path)
        except StoreError:
            with contextlib.suppress(StoreError):
                store.write_manifest(record["id"])
                written.append(record["id"])
    return restored, histories, written


def _restore_suites(store: Store, paths: list[Path]) -> list[str]:
    restored = []
    for path in paths:
        try:
            suite = read_manifest_json(path)
        except StoreError:
            continue
        try:
            store.get_suite(suite["id"])
        except KeyError:
            store.save_suite(suite)
            restored.append(suite["id"])
    return restored


def _restore_searches(store: Store, folder: Path) -> list[str]:
    """The search records (``workbench.search.searches.save_search`` keeps a copy of each
    beside its journal) that the index lost."""
    restored = []
    for path in sorted(folder.glob("search-*.json")) if folder.is_dir() else []:
        try:
            search = read_manifest_json(path)
        except StoreError:
            continue
        if store.get(f"search:{search['id']}") is None:
            store.set(f"search:{search['id']}", search)
            restored.append(search["id"])
    return restored


def read_manifest_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"the suite manifest {path} is unreadable ({exc})") from None
    if not isinstance(data, dict) or "id" not in data:
        raise StoreError(f"the suite manifest {path} does not hold a suite")
    return data
