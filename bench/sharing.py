"""A shared instance: the Runs and Compare pages with 500 runs from 5 users, and the queue's
decision time with 1,000 queued runs (issue 9, the measured items).

**Pages.** Two stores of fabricated runs (nothing trains; records, metric histories, epoch rows
and probes are written through ``Store`` in the engine's shapes): ``--runs`` (500) and the
baseline ``--small`` (50), owners u1..u5, mixed statuses (completed, failed, cancelled, queued,
running), one in ten private, one in ten a teacher. The app runs in ``AppTest`` in local mode as
``KDWB_USER=u1`` (an ordinary user, not an admin: u1 sees the lab's runs and their own private
ones), with ``app_executes = "none"`` so queued runs stay queued. A render is
``at.switch_page(page).run()``; **cold** is the first render in a fresh session with Streamlit's
caches cleared and a new job manager, **warm** a rerun of the same page (what a click or a poll
costs). Compare is rendered with 4 runs selected (the table, filters and the sweep plot are
built over every visible run whatever the selection). Also timed on each store: the listing
alone (``Store.list_runs``), ``actions.list_runs`` as u1, and ``JobManager.queue_plan``.

**Queue.** A store with ``--queued`` (1,000) queued runs from 8 users, ``--finished`` (300)
finished ones (with histories, from which ``queue_plan`` learns run lengths) and 6 running; the
baseline store has 10 queued runs, the same finished and running ones. Timed: ``claim_next`` (one
decision and its claim, with the lab's default per-user limit of 2 running runs; the claimed run
is put back in the queue between repeats, outside the timing), ``fair_order`` alone and
``queue_plan`` alone (on records listed beforehand), and the listing they start from.

The queue's cost grows with every run the store holds, finished ones included (each listing
unpickles every run record): ``--finished 3000`` shows it (about a minute more to fabricate).

Each figure is the median over ``--repeats``, in wall time and in this process's CPU time (all
threads: AppTest runs the page in a thread of its own); each repeat is printed, with the load
average, so a disturbed one shows. On a loaded machine CPU time is the steadier figure.
``--profile`` prints the top cProfile entries (this repository's functions) of the 500-run Runs
page, cold and warm, of a cold Compare render and of ``claim_next`` at 1,000 queued runs.

    .venv/bin/python bench/sharing.py [--runs 500] [--small 50] [--queued 1000]
        [--finished 300] [--repeats 5] [--profile] [--skip-pages] [--smoke]

``--smoke``: 20 runs against 5, 50 queued against 10 with 20 finished, one repeat (a check that
the script runs, e.g. in tests/test_bench.py; its ratios are not measurements).

Last line: ``sharing: Runs page 500/50 runs: cold R wall, R CPU (S s), warm ...; Compare: ...;
claim_next 1000/10 queued: R wall, R CPU (M ms vs M ms wall)``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `streamlit run` puts app.py's folder on sys.path: pages._shared
os.environ["KDWB_USER"] = "u1"  # the viewer, before the workbench reads who is asking
VIEWER = os.environ["KDWB_USER"]

from workbench.config.run_config import LossWeights, RunConfig  # noqa: E402
from workbench.lab import settings as lab_settings  # noqa: E402
from workbench.lab.identity import local_user  # noqa: E402
from workbench.runs import permitted as actions  # noqa: E402
from workbench.runs import queue as runqueue  # noqa: E402
from workbench.runs.job_manager import JobManager  # noqa: E402
from workbench.runs.queue_plan import queue_plan  # noqa: E402
from workbench.storage.store import Store  # noqa: E402

APP = str(ROOT / "app.py")
USERS = [f"u{i}" for i in range(1, 6)]
CLASSES = [str(c) for c in range(10)]
STUDENTS = ("small_cnn", "mlp", "resnet8x4", "wrn_16_2")
WEIGHTS = ((1, 0, 0, 0), (0.5, 0.5, 0, 0), (0.3, 0.3, 0.2, 0.2), (0.4, 0.4, 0.2, 0), (0, 1, 0, 0))
ROWS_PER_EPOCH = 30  # history rows an epoch logs (e.g. 300 steps, log_every 10)
# status of the i-th run, drawn in these proportions (a lab's store: mostly finished runs)
STATUS_SHARES = {"completed": 0.70, "failed": 0.08, "cancelled": 0.04, "queued": 0.14}
RUNNING_PER_USER = 2  # the lab's default limit of runs running at once
SMOKE = {"runs": 20, "small": 5, "queued": 50, "finished": 20, "repeats": 1}  # --smoke


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------- fabrication
def _config(rng: np.random.Generator, role: str, epochs: int) -> RunConfig:
    if role == "teacher":
        return RunConfig(
            role="teacher",
            teacher=str(rng.choice(["resnet18", "resnet32x4"])),
            weights=LossWeights(1, 0, 0, 0),
            epochs=epochs,
        )
    return RunConfig(
        student=str(rng.choice(STUDENTS)),
        weights=LossWeights(*WEIGHTS[rng.integers(len(WEIGHTS))]),
        temperature=float(rng.choice([2.0, 4.0, 8.0])),
        weighting=str(rng.choice(["fixed", "fixed", "uncertainty"])),
        seed=int(rng.integers(3)),
        epochs=epochs,
    )


def _history(rng: np.random.Generator, config: RunConfig, epochs: int) -> list[dict]:
    w = config.weights.as_dict()
    rows = []
    for i in range(epochs * ROWS_PER_EPOCH):
        terms = {c: float(np.exp(-i / 60) * (k + 1) + rng.uniform(0, 0.05)) for k, c in
                 enumerate(w)}  # fmt: skip
        rows.append(
            {"step": (i + 1) * 10, "epoch": 1 + i // ROWS_PER_EPOCH, "time": 0.05 * (i + 1)}
            | {c: v * (w[c] > 0) for c, v in terms.items()}
            | {"total": sum(w[c] * v for c, v in terms.items())}
            | {f"w_{c}": float(v) for c, v in w.items()}
        )
    return rows


def _probe(rng: np.random.Generator, per_class: int = 6) -> dict:
    s_layers, t_layers = ["block1", "block2", "block3"], ["layer1.0", "layer2.0", "layer3.0"]
    pairs = [[s, t] for s, t in zip(s_layers, t_layers, strict=True)]
    labels = np.repeat(np.arange(len(CLASSES)), per_class)

    def gram() -> np.ndarray:
        x = rng.normal(size=(len(labels), 16)).astype(np.float32) + labels[:, None]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x @ x.T  # [M, M]

    return {
        "student_layers": s_layers,
        "teacher_layers": t_layers,
        "pairs": pairs,
        "class_names": CLASSES,
        "probe_size": 500,
        "cka": rng.uniform(size=(3, 3)).astype(np.float32),
        "pair_cosine": rng.uniform(0.3, 0.9, len(pairs)).tolist(),
        "gram_labels": labels,
        "grams": [{"pair": p, "student": gram(), "teacher": gram()} for p in pairs],
        "per_class_acc": rng.uniform(0.6, 1.0, len(CLASSES)).tolist(),
        "agreement": 0.9,
    }


def _status(rng: np.random.Generator, owner: str, running: dict[str, int]) -> str:
    if running.get(owner, 0) < RUNNING_PER_USER and rng.uniform() < 0.05:
        running[owner] = running.get(owner, 0) + 1
        return "running"
    names, shares = zip(*STATUS_SHARES.items(), strict=True)
    return str(rng.choice(names, p=np.array(shares) / sum(shares)))


def fabricate_lab(store: Store, n: int, seed: int = 0) -> dict[str, int]:
    """``n`` runs from USERS, like a lab's store; returns the count per status."""
    rng = np.random.default_rng(seed)
    running: dict[str, int] = {}
    counts: dict[str, int] = {}
    now = time.time()
    for i in range(n):
        owner = USERS[i % len(USERS)]
        role = "teacher" if rng.uniform() < 0.1 else "student"
        epochs = int(rng.integers(3, 11))
        config = _config(rng, role, epochs)
        status = _status(rng, owner, running)
        counts[status] = counts.get(status, 0) + 1
        run_id = store.create_run(
            config,
            name=str(rng.choice(["", "", "", "KD sweep", "hybrid", "baseline"])),
            tags=("sweep",) if rng.uniform() < 0.3 else (),
            owner=owner,
            private=bool(rng.uniform() < 0.1),
            status="queued",
        )
        if status == "queued":
            continue
        done = epochs if status == "completed" else int(rng.integers(1, epochs + 1))
        if status == "running":
            done = max(1, done - 1)
        accs = np.clip(0.5 + 0.4 * np.linspace(0, 1, done) + rng.normal(0, 0.02, done), 0, 1)
        store.set_epochs(
            run_id,
            [
                {"epoch": e + 1, "val_acc": float(a), "agreement": float(a) - 0.02}
                | {"train_loss": 1.0 / (e + 1), "time": 20.0 * (e + 1)}
                for e, a in enumerate(accs)
            ],
        )
        store.set_history(run_id, _history(rng, config, done))
        seconds = 20.0 * done
        fields: dict = {
            "started_at": now - seconds,
            "progress": {
                "epoch": done,
                "epochs": epochs,
                "step": done * ROWS_PER_EPOCH * 10,
                "total_steps": epochs * ROWS_PER_EPOCH * 10,
                "eta_s": 20.0 * (epochs - done) if status == "running" else None,
            },
        }
        if status == "running":
            # held by this process (alive): the app's recovery leaves it running
            fields |= {"claimed_by": "bench", "claimed_at": now - seconds, "heartbeat": None}
        else:
            fields |= {"finished_at": now, "seconds": seconds}
        if status == "completed":
            fields["metrics"] = {
                "val_acc": float(accs[-1]),
                "test_acc": float(accs[-1]) - 0.01,
                "teacher_acc": 0.95,
                "agreement": float(accs[-1]) - 0.02,
                "per_class_acc": rng.uniform(0.6, 1.0, len(CLASSES)).tolist(),
            }
        if status == "failed":
            fields["error"] = f"loss became NaN at step {done * 300 + 12}"
        store.update_run(run_id, status=status, **fields)
        if role == "student" and status == "completed":
            store.save_probe(run_id, _probe(rng))
    return counts


def fabricate_queue(
    store: Store, queued: int, finished: int, users: int = 8, seed: int = 1
) -> dict[str, str]:
    """``queued`` runs from ``users`` users (the first user queued a third of them), 6 running,
    ``finished`` completed ones (lengths to learn from). Returns the running runs' owners."""
    rng = np.random.default_rng(seed)
    names = [f"q{i}" for i in range(users)]
    now = time.time()
    for i in range(finished):
        config = _config(rng, "student", int(rng.integers(3, 11)))
        run_id = store.create_run(config, owner=names[i % users])
        store.set_history(run_id, _history(rng, config, 1))
        store.update_run(
            run_id,
            status="completed",
            seconds=20.0 * config.epochs,
            started_at=now - 20.0 * config.epochs,
            finished_at=now,
        )
    owners = {}
    for i in range(6):
        run_id = store.create_run(_config(rng, "student", 5), owner=names[i % 3])
        store.update_run(run_id, status="running", claimed_at=now - 30, claimed_by="bench")
        owners[run_id] = names[i % 3]
    for i in range(queued):
        owner = names[0] if i % 3 == 0 else names[1 + i % (users - 1)]
        config = _config(rng, "student", int(rng.integers(3, 11)))
        store.create_run(config, owner=owner, status="queued")
    return owners


# ---------------------------------------------------------------------------- timing
Timing = tuple[float, float]  # (wall, CPU) seconds; CPU: this process, every thread


def timed(fn: Callable[[], object]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_of(label: str, times: list[Timing]) -> Timing:
    """Print each repeat and the medians (wall and CPU); return the medians."""
    wall = statistics.median(t[0] for t in times)
    cpu = statistics.median(t[1] for t in times)
    each = ", ".join(f"{t[0] * 1e3:.1f}" for t in times)
    print(
        f"  {label}: wall {wall * 1e3:.1f} ms, CPU {cpu * 1e3:.1f} ms (medians; wall each: "
        f"{each}; load {load()})",
        flush=True,
    )
    return wall, cpu


def profile(label: str, fn: Callable[[], object], top: int = 25, *, thread: bool = False) -> None:
    """Print the top ``top`` cProfile entries of this repository's functions in ``fn()``;
    ``thread``: in the threads it starts (AppTest runs a page's script in a thread of its own)."""
    prof = cProfile.Profile()
    if thread:

        def start_in_thread(*_: object) -> None:
            sys.setprofile(None)
            prof.enable()

        threading.setprofile(start_in_thread)
        try:
            fn()
        finally:
            threading.setprofile(None)
    else:
        prof.runcall(fn)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
    stats.print_stats(r"/(workbench|pages)/|app\.py", top)
    text = out.getvalue().replace(str(ROOT) + "/", "")
    print(f"\n--- cProfile: {label} (cumulative, top {top} of the repository's)\n{text}")


# ---------------------------------------------------------------------------- pages
def use_store(home: Path) -> None:
    """Point the app at ``home`` and start from nothing: caches cleared, job managers closed."""
    import streamlit as st
    from streamlit import logger

    logger.set_log_level("error")  # clearing outside a script warns; each AppTest resets it
    for manager in list(JobManager._live):
        manager.close()  # its dispatcher would otherwise scan the store every 2 s meanwhile
    st.cache_resource.clear()
    st.cache_data.clear()
    os.environ["KDWB_HOME"] = str(home)


def open_app(home: Path):
    """A fresh session on the store at ``home``, on its first page (Models, not timed)."""
    from streamlit.testing.v1 import AppTest

    use_store(home)
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    return at


def render(home: Path, page: str, repeats: int, query: dict[str, str] | None = None):
    """(cold timings, warm timings) of ``page`` on the store at ``home``."""
    cold, warm = [], []
    for _ in range(repeats):
        at = open_app(home)
        at.query_params.update(query or {})
        cold.append(timed(lambda at=at: at.switch_page(page).run()))
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        warm.append(timed(at.run))
    return cold, warm


def compare_picks(records: list[dict]) -> str:
    """Four completed students: what Compare is opened with (``?runs=``)."""
    picks = [r["id"] for r in records if r["status"] == "completed" and r["role"] == "student"]
    return ",".join(picks[:4])


def measure_lab(home: Path, n: int, repeats: int) -> dict:
    """The listings, the queue plan and both pages on the lab store at ``home``."""
    print(f"\n== {n} runs from {len(USERS)} users, viewer {VIEWER} (load {load()})", flush=True)
    use_store(home)
    store = Store(home)
    user = local_user(lab_settings.current())
    manager = JobManager(store, execute="none")
    manager.close()  # no dispatcher: only its queue side is timed
    records = store.list_runs()
    seen = actions.list_runs(store, user)
    queued = sum(r["status"] == "queued" for r in records)
    print(f"  {len(seen)} of {len(records)} runs visible to {user}; {queued} queued")
    res: dict = {"n": n}
    rep = range(repeats)
    res["list"] = median_of("Store.list_runs", [timed(store.list_runs) for _ in rep])
    res["visible"] = median_of(
        "actions.list_runs", [timed(lambda: actions.list_runs(store, user)) for _ in rep]
    )
    res["plan"] = median_of(
        "JobManager.queue_plan() (it lists the store)", [timed(manager.queue_plan) for _ in rep]
    )
    res["plan_given"] = median_of(
        "JobManager.queue_plan(records) (as the Runs page calls it)",
        [timed(lambda: manager.queue_plan(records)) for _ in rep],
    )
    store.close()
    cold, warm = render(home, "pages/runs.py", repeats)
    res["runs_cold"] = median_of("Runs page, cold", cold)
    res["runs_warm"] = median_of("Runs page, warm rerun", warm)
    cold, warm = render(home, "pages/compare.py", repeats, {"runs": compare_picks(seen)})
    res["compare_cold"] = median_of("Compare page (4 runs selected), cold", cold)
    res["compare_warm"] = median_of("Compare page (4 runs selected), warm rerun", warm)
    return res


def pages_part(tmp: Path, sizes: dict[str, int], repeats: int, do_profile: bool) -> dict:
    config = tmp / "workbench.toml"
    config.write_text('[workers]\napp_executes = "none"\n')  # queued runs stay queued
    os.environ["KDWB_CONFIG"] = str(config)
    homes, results = {}, {}
    for label, n in sizes.items():
        homes[label] = tmp / f"lab{n}"
        store = Store(homes[label])
        started = time.perf_counter()
        counts = fabricate_lab(store, n)
        print(
            f"fabricated {n} runs ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}) "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        store.close()
    for label, n in sizes.items():
        results[label] = measure_lab(homes[label], n, repeats)
    if do_profile:
        label = max(sizes, key=sizes.get)
        n, home = sizes[label], homes[label]
        at = open_app(home)
        profile(
            f"Runs page, cold, {n} runs", lambda: at.switch_page("pages/runs.py").run(), thread=True
        )
        profile(f"Runs page, warm, {n} runs", at.run, thread=True)
        store = Store(home)
        picks = compare_picks(actions.list_runs(store, local_user(lab_settings.current())))
        store.close()
        at = open_app(home)
        at.query_params.update({"runs": picks})
        profile(
            f"Compare page, cold, {n} runs",
            lambda: at.switch_page("pages/compare.py").run(),
            thread=True,
        )
    use_store(tmp / "unused")
    return results


# ---------------------------------------------------------------------------- queue
def measure_queue(store: Store, repeats: int, do_profile: bool) -> dict:
    """The listing, ``fair_order``, ``queue_plan`` and ``claim_next`` on the queue ``store``."""
    executor = runqueue.Executor("bench")
    res: dict = {}
    records = store.list_runs(status=("queued", "running"))
    everything = store.list_runs()
    served = runqueue.served_times(store)
    rep = range(repeats)
    res["list"] = median_of(
        "Store.list_runs(status=(queued, running))",
        [timed(lambda: store.list_runs(status=("queued", "running"))) for _ in rep],
    )
    res["served"] = median_of(
        "served_times (every served: key)",
        [timed(lambda: runqueue.served_times(store)) for _ in rep],
    )
    owners = {r.get("owner") or "" for r in records if r["status"] == "queued"}
    res["served_owners"] = median_of(
        "served_times(the queued runs' owners) (as claim_next calls it)",
        [timed(lambda: runqueue.served_times(store, owners)) for _ in rep],
    )

    def order() -> list:
        waiting = [r for r in records if r["status"] == "queued"]
        running = [r for r in records if r["status"] == "running"]
        return runqueue.fair_order(waiting, running, dict(served), RUNNING_PER_USER)

    res["fair"] = median_of("fair_order (on listed records)", [timed(order) for _ in rep])
    res["plan"] = median_of(
        "queue_plan (on listed records, 4 slots)",
        [
            timed(lambda: queue_plan(everything, 4, served, max_running=2, now=time.time()))
            for _ in rep
        ],
    )

    def claim_once(timings: list[Timing] | None = None) -> None:
        got: list = []
        timing = timed(
            lambda: got.append(
                runqueue.claim_next(store, executor, {"cpu"}, max_running=RUNNING_PER_USER)
            )
        )
        assert got[0] is not None
        store.update_run(got[0]["id"], status="queued", claimed_by=None)  # put it back
        if timings is not None:
            timings.append(timing)

    timings: list[Timing] = []
    for _ in rep:
        claim_once(timings)
    res["claim"] = median_of("claim_next (decision + claim)", timings)
    if do_profile:
        profile("claim_next (and putting the run back)", claim_once)
    return res


def queue_part(tmp: Path, sizes: dict[str, int], finished: int, repeats: int, do_profile: bool):
    results = {}
    for label, queued in sizes.items():
        store = Store(tmp / f"queue{queued}")
        started = time.perf_counter()
        fabricate_queue(store, queued, finished)
        print(
            f"\n== {queued} queued, 6 running, {finished} finished runs from 8 users "
            f"(fabricated in {time.perf_counter() - started:.1f} s; load {load()})",
            flush=True,
        )
        results[label] = measure_queue(store, repeats, do_profile and label == "big")
        results[label]["queued"] = queued
        store.close()
    return results


# ---------------------------------------------------------------------------- main
def ratio(big: Timing, small: Timing) -> str:
    return f"{big[0] / small[0]:.1f}x wall, {big[1] / small[1]:.1f}x CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--finished", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-pages", action="store_true", help="the queue part only")
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:  # explicit options still win over these
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average {load()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="kdwb-sharing-") as tmp:
        tmp = Path(tmp)
        os.environ["KDWB_HOME"] = str(tmp / "unused")
        pages = {}
        if not args.skip_pages:
            sizes = {"small": args.small, "big": args.runs}
            pages = pages_part(tmp, sizes, args.repeats, args.profile)
        queue = queue_part(
            tmp, {"small": 10, "big": args.queued}, args.finished, args.repeats, args.profile
        )
    JobManager.stop_all()
    summary = []
    if pages:
        s, b = pages["small"], pages["big"]
        summary += [
            f"Runs page {b['n']}/{s['n']} runs: cold {ratio(b['runs_cold'], s['runs_cold'])} "
            f"({b['runs_cold'][0]:.2f} s), warm {ratio(b['runs_warm'], s['runs_warm'])} "
            f"({b['runs_warm'][0]:.2f} s)",
            f"Compare: cold {ratio(b['compare_cold'], s['compare_cold'])} "
            f"({b['compare_cold'][0]:.2f} s), warm {ratio(b['compare_warm'], s['compare_warm'])} "
            f"({b['compare_warm'][0]:.2f} s)",
        ]
    s, b = queue["small"], queue["big"]
    summary.append(
        f"claim_next {b['queued']}/{s['queued']} queued: {ratio(b['claim'], s['claim'])} "
        f"({b['claim'][0] * 1e3:.0f} ms vs {s['claim'][0] * 1e3:.0f} ms wall)"
    )
    print(f"\nload average at the end {load()}")
    print("sharing: " + "; ".join(summary))


if __name__ == "__main__":
    main()
