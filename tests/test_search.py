"""Searches over the hybrid loss (issue 22): the space, the stored search, the driver, pruning,
the final comparison, fairness, and a search killed with SIGKILL and resumed by name."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from workbench.cli import main
from workbench.config.run_config import LossWeights, RunConfig
from workbench.data.datasets import DataBundle
from workbench.errors import ConfigError, WorkbenchError
from workbench.lab.identity import User
from workbench.runs import queue as runqueue
from workbench.runs.worker import worker_thread
from workbench.search import driver as search_driver
from workbench.search.driver import drive, enqueue_prior, finished_trials
from workbench.search.result import importances, noise_note
from workbench.search.searches import create_search, get_search, open_study, search_runs
from workbench.search.space import config_for, params_of, parse_over, prior_params, suggest
from workbench.storage.store import Store
from workbench.training.loop import run
from workbench.training.teachers import ensure_teacher

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 600.0  # seconds; for a hung process, never a performance bound
ALICE, BOB = User("alice"), User("bob")
# Tiny runs: an mlp student of a 1-epoch small_cnn teacher on digits, 2 epochs.
BASE = RunConfig(
    teacher="small_cnn",
    student="mlp",
    weights=LossWeights(0.5, 0.5, 0.0, 0.0),
    epochs=2,
    teacher_epochs=1,
    batch_size=64,
    log_every=50,
    device="cpu",
)
TINY = [
    "--teacher", "small_cnn", "--student", "mlp", "--weights", "label=0.5,response=0.5",
    "--epochs", "2", "--teacher-epochs", "1", "--log-every", "50", "--device", "cpu",
]  # fmt: skip


def _wait(predicate, what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------- the space
def test_the_space_of_weights_and_temperature():
    params = parse_over("weights,temperature=2:6", BASE)
    assert [p.name for p in params] == ["weight_label", "weight_response", "temperature"]
    assert (params[-1].low, params[-1].high, params[-1].log) == (2.0, 6.0, True)
    config = config_for(BASE, {"weight_label": 0.25, "temperature": 3.0}, seed=7)
    assert config.weights == LossWeights(0.25, 0.5, 0.0, 0.0)
    assert (config.temperature, config.seed) == (3.0, 7)
    assert params_of(config, params) == {
        "weight_label": 0.25,
        "weight_response": 0.5,
        "temperature": 3.0,
    }


def test_hyperparameters_are_asked_only_of_the_method_that_uses_them():
    params = parse_over("response_kind,dkd_beta", BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = set()
    for _ in range(12):
        trial = study.ask()
        chosen = suggest(trial, params, BASE)
        kinds.add(chosen["response_kind"])
        assert ("dkd_beta" in chosen) == (chosen["response_kind"] == "dkd"), chosen
        study.tell(trial, 0.0)
    assert kinds == {"kd", "dkd", "dist"}


@pytest.mark.parametrize(
    ("over", "base", "words"),
    [
        ("", BASE, "the search space is empty"),
        ("weights,bogus", BASE, "unknown search parameter 'bogus'"),
        ("weights,weights", BASE, "twice"),
        ("temperature=0:3", BASE, "must be a number from 0.05 to 100"),
        ("temperature=5:2", BASE, "LOW must be below HIGH"),
        ("temperature=a:b", BASE, "LOW:HIGH"),
        ("weights=0:200", BASE, "must be a number from 0 to 100"),
        ("dkd_beta", BASE, "set the response method to dkd, or search response_kind"),
        ("feature_kind", BASE, "the feature weight of the base config is 0"),
        ("response_kind=1:2", BASE, "takes no range"),
        ("temperature", BASE.replace(weights=LossWeights(1, 0, 0, 0)), "response weight is 0"),
    ],
)
def test_a_bad_space_is_one_line(over, base, words):
    with pytest.raises(ConfigError) as info:
        parse_over(over, base)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_bad_searches_are_refused_in_one_line_and_store_nothing(store, capsys):
    create_search(store, BASE, name="taken", over="weights", trials=2)
    cases = [
        (dict(name="taken", over="weights", trials=2), "exists already"),
        (dict(name="", over="weights", trials=2), "needs a name"),
        (dict(name="x", over="weights", trials=0), "trials must be"),
        (dict(name="x", over="weights", trials=2, seeds=11), "seeds per trial must be"),
    ]
    for kwargs, words in cases:
        with pytest.raises(ConfigError, match=words):
            create_search(store, BASE, **kwargs)
    assert len(store.values("search:")) == 1
    assert main(["search", *TINY, "--name", "y", "--over", "weights,nope", "--slots", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown search parameter 'nope'") and "\n" not in err


def test_the_ablation_is_the_prior():
    params = parse_over("weights,temperature", BASE)
    first = prior_params(BASE, params)
    assert first == [
        {"weight_label": 0.5, "weight_response": 0.5, "temperature": 4.0},
        {"weight_label": 0.0, "weight_response": 0.5, "temperature": 4.0},
        {"weight_label": 0.5, "weight_response": 0.0, "temperature": 4.0},
    ]


def test_the_noise_note_by_hand():
    noise = {"binomial_se": 0.012, "seed_sd": 0.004}
    row = {"contribution": 0.01, "ci_low": -0.002, "ci_high": 0.022}
    assert "interval [-0.20, +2.20] holds 0" in noise_note(row, noise)
    row = {"contribution": 0.01, "ci_low": math.nan, "ci_high": math.nan}  # one seed
    assert "below the floor of 1.20 points" in noise_note(row, noise)
    assert noise_note({"contribution": 0.05, "ci_low": 0.03, "ci_high": 0.07}, noise) == ""


def test_fanova_finds_the_parameter_that_matters():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for _ in range(30):
        trial = study.ask()
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        study.tell(trial, 10 * x + 0.01 * y)
    shares = importances(study)
    assert shares["x"] > 0.9 > shares["y"]
    assert math.isclose(sum(shares.values()), 1.0)


def test_a_config_goes_into_the_distill_draft_and_back():
    from workbench.ui.draft import config_draft, draft_values

    config = BASE.replace(
        weights=LossWeights(0.01, 0.34, 0.53, 0.02),
        temperature=7.5,
        response_kind="dkd",
        dkd_beta=2.0,
        schedule="multistep",
        milestones=(1,),
        layer_pairs=(("fc1", "block2"),),
        teacher_run="20261203-000000-abcdef",
    )
    back = RunConfig.from_dict({**config.to_dict(), **draft_values(config_draft(config))})
    assert back == config


# ---------------------------------------------------------------------- the driver
def _trial_records(store, search):
    return [r for r in search_runs(store, search["id"]) if r.get("trial") is not None]


def test_a_six_trial_search_completes_with_every_run_stored(store, capsys):
    search = create_search(
        store,
        BASE,
        name="six",
        owner="alice",
        over="weights,temperature",
        trials=6,
        seeds=1,
        retrain_seeds=2,
    )
    with worker_thread(store):
        done = drive(store, search["id"], user=ALICE, poll_s=0.05)
    study = open_study(store, done)
    assert len(finished_trials(study)) == 6
    records = _trial_records(store, done)
    by_trial = {r["trial"] for r in records}
    assert by_trial == {t.number for t in study.trials}
    for record in records:  # a pruned trial's run is cancelled; the others completed
        trial = study.trials[record["trial"]]
        expected = "completed" if trial.state.name == "COMPLETE" else "cancelled"
        assert record["status"] == expected, (record["id"], trial.state)
        assert record["config"]["evaluate_test"] is False
        assert "test_acc" not in record["metrics"]
    for trial in study.trials:
        if trial.state.name == "COMPLETE":
            mine = [r for r in records if r["trial"] == trial.number]
            assert trial.value == pytest.approx(mine[0]["metrics"]["val_acc"])
    result = done["result"]
    assert result["best"]["number"] == study.best_trial.number
    assert sorted(result["results"]) == ["base", "best"]
    assert set(result["results"]["best"]) == {"1", "2"}  # fresh seeds: the trials ran seed 0
    row = result["comparison"]
    diffs = [result["results"]["best"][s] - result["results"]["base"][s] for s in ("1", "2")]
    assert row["contribution"] == pytest.approx(sum(diffs) / 2)
    assert row["pairs"] == 2 * 359  # McNemar over both seeds' test images
    capsys.readouterr()
    assert main(["show", records[0]["id"]]) == 0  # a trial's run says why it has no test numbers
    out = capsys.readouterr().out
    assert f"not read by trial {records[0]['trial']} of a search" in out and "test acc" not in out


def test_the_test_split_is_never_read_before_the_final_comparison(store, monkeypatch):
    """Every read of a DataBundle's test split raises while the trials run; the final
    comparison (which must read it) runs after the guard is lifted."""
    ensure_teacher(BASE, store, train=run)  # trained before the search, as its own run
    guard = {"on": True}

    def read(name):
        def get(self):
            if guard["on"]:
                raise AssertionError(f"the search read {name} of the test split")
            return self.__dict__[name]

        def put(self, value):
            self.__dict__[name] = value

        return property(get, put)

    for name in ("test_x", "test_y"):
        monkeypatch.setattr(DataBundle, name, read(name), raising=False)
    final = search_driver.final_comparison

    def lifted(*args, **kwargs):
        guard["on"] = False
        return final(*args, **kwargs)

    monkeypatch.setattr(search_driver, "final_comparison", lifted)
    search = create_search(
        store, BASE, name="blind", owner="alice", over="weights", trials=2, retrain_seeds=1
    )
    with worker_thread(store):
        done = drive(store, search["id"], user=ALICE, poll_s=0.05)
    states = {r["status"] for r in _trial_records(store, done)}
    assert states <= {"completed", "cancelled"}, [
        r.get("error") for r in search_runs(store, search["id"])
    ]
    assert done["result"]["comparison"]["n"] == 1


def test_a_pruned_trial_is_cancelled_through_the_normal_cancel_and_kept(store, monkeypatch):
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    slow = BASE.replace(epochs=6, batch_size=16, log_every=1)
    search = create_search(store, slow, name="pruned", owner="alice", over="temperature", trials=1)
    with worker_thread(store):
        done = drive(store, search["id"], user=ALICE, poll_s=0.02)
    (trial,) = open_study(store, done).trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert min(trial.intermediate_values) == 1
    (record,) = _trial_records(store, done)
    assert record["status"] == "cancelled"
    assert store.has_run(record["id"]) and record["progress"]["epoch"] < 6
    assert done["result"]["best"] is None and "no trial completed" in done["result"]["note"]


def test_two_users_searches_share_the_queue_fairly(store):
    """Two searches queue their trials' runs (2 seeds each) as their owners' runs; one worker
    then takes them in fair order, alternating between the users."""
    stops, threads = [], []
    for who in (ALICE, BOB):
        search = create_search(
            store, BASE, name=f"{who.name}'s", over="weights", trials=1, seeds=2, owner=who.name
        )
        stop = threading.Event()
        thread = threading.Thread(
            target=drive,
            args=(store, search["id"]),
            kwargs={"user": who, "stop": stop, "poll_s": 0.05},
            daemon=True,
        )
        thread.start()
        stops.append(stop)
        threads.append(thread)
    _wait(lambda: len(store.list_runs(status="queued")) == 4, "both searches' first trials")
    executor = runqueue.Executor("worker")
    owners = []
    for _ in range(4):
        claimed = runqueue.claim_next(store, executor, ["cpu"])
        owners.append(claimed["owner"])
    assert sorted(owners[:2]) == ["alice", "bob"] and sorted(owners[2:]) == ["alice", "bob"]
    for stop, thread in zip(stops, threads, strict=True):
        stop.set()
        thread.join(timeout=DEADLINE)


def test_only_the_owner_drives_a_search_and_only_one_driver_at_a_time(store):
    search = create_search(store, BASE, name="mine", over="weights", trials=1, owner="alice")
    with pytest.raises(WorkbenchError, match="alice"):
        drive(store, search["id"], user=BOB)
    with store.lock(f"search:{search['id']}", description="another driver"):
        result: list[BaseException] = []
        thread = threading.Thread(
            target=lambda: _catch(result, drive, store, search["id"], user=ALICE)
        )
        thread.start()
        thread.join(timeout=DEADLINE)
    assert "is being run by another process" in str(result[0])


def _catch(into, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 (handed to the test)
        into.append(exc)


def test_an_ablation_of_the_base_gives_the_first_trials(store):
    store.save_suite({"id": "suite-x", "base": BASE.to_dict(), "created_at": 1.0, "runs": []})
    search = create_search(store, BASE, name="prior", over="weights", trials=3)
    study = open_study(store, search)
    enqueue_prior(store, study, search)
    params = parse_over("weights", BASE)
    asked = []
    for _ in range(3):  # the first trials asked take the enqueued values
        trial = study.ask()
        asked.append(suggest(trial, params, BASE))
        study.tell(trial, 0.5)
    assert asked == [
        {"weight_label": 0.5, "weight_response": 0.5},
        {"weight_label": 0.0, "weight_response": 0.5},
        {"weight_label": 0.5, "weight_response": 0.0},
    ]


def test_store_repair_gives_back_a_search_whose_index_was_lost(home, capsys):
    """The index deleted under a search: ``store repair`` restores its record from the copy
    beside its journal, and the study (the journal itself) is whole."""
    store = Store(home)
    search = create_search(store, BASE, name="kept", over="weights", trials=3, owner="alice")
    study = open_study(store, search)
    trial = study.ask()
    suggest(trial, parse_over("weights", BASE), BASE)
    study.tell(trial, 0.75)
    store.close()
    (home / "store" / "cache.db").unlink()
    assert main(["store", "repair"]) == 0
    assert "restored 1 searches" in capsys.readouterr().out
    repaired = Store(home)
    assert get_search(repaired, search["id"]) == search
    assert [t.value for t in open_study(repaired, search).trials] == [0.75]
    repaired.close()


# ---------------------------------------------------------------------- kill -9 and resume
def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, KDWB_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("KDWB_AUTO_RESUME", None)
    return env


def test_a_search_killed_with_sigkill_resumes_by_name_to_exactly_its_budget(home, capsys):
    """SIGKILL after 2 finished trials, then ``search --resume NAME``: exactly 6 finished
    trials, each with its own completed runs, and no trial's runs queued twice."""
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "search.log", "w")  # noqa: SIM115 (closed below)
    args = ["--name", "killed", "--trials", "6", "--seeds", "1", "--retrain-seeds", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "search", *TINY, *args, "--no-prune"],
        env=_env(home),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    store = Store(home)
    try:

        def two_finished() -> bool:
            assert proc.poll() is None, (home / "search.log").read_text()[-2000:]
            found = [s for s in store.values("search:") if s["name"] == "killed"]
            return bool(found) and len(finished_trials(open_study(store, found[0]))) >= 2

        _wait(two_finished, "2 finished trials")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    (search,) = [s for s in store.values("search:") if s["name"] == "killed"]
    before = {r["id"]: r["trial"] for r in _trial_records(store, search)}
    capsys.readouterr()
    assert main(["search", "--resume", "killed", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    trials = out["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 6
    run_ids = [r for t in trials for r in t["run_ids"]]
    assert all(len(t["run_ids"]) == 1 for t in trials)
    assert len(set(run_ids)) == 6
    assert all(store.get_run(r)["status"] == "completed" for r in run_ids)
    assert set(before) <= set(run_ids)  # the runs queued before the kill were not queued again
    assert len(_trial_records(store, get_search(store, search["id"]))) == 6
    assert out["best"]["number"] in range(6) and out["test"]["comparison"]["n"] == 1
    store.close()


def test_compare_says_why_a_trial_has_no_test_views():
    """A trial's probe has no test view nor calibration: Compare names it as a search trial
    (it never read the test split), not as an old run to train again."""
    from workbench.ui.insight import embedding_inputs
    from workbench.ui.quality import quality_views

    trial = {"id": "t", "role": "student", "config": {"evaluate_test": False}}
    old = {"id": "o", "role": "student", "config": {"seed": 0}}  # probed before the views
    probes = {"t": {"pairs": []}, "o": {"pairs": []}}
    names = {"t": "trial 3", "o": "old run"}
    inputs = embedding_inputs([trial, old], probes, names)
    views = quality_views([trial, old], probes, names)
    assert (inputs.blind, inputs.older) == (["trial 3"], ["old run"])
    assert (views.blind, views.older) == (["trial 3"], ["old run"])


def test_runs_a_kill_or_a_cancel_stopped_are_queued_again_and_the_others_left(store):
    from workbench.search.searches import requeue_stopped

    ids = {status: store.create_run(BASE, status=status) for status in (
        "interrupted", "cancelled", "completed", "failed", "queued",
    )}  # fmt: skip
    records = [store.get_run(i) for i in ids.values()]
    assert requeue_stopped(store, records) == list(ids.values())
    after = {status: store.get_run(i)["status"] for status, i in ids.items()}
    assert after == {
        "interrupted": "queued",
        "cancelled": "queued",
        "completed": "completed",
        "failed": "failed",  # a failed trial is told fail; a failed retraining is reported
        "queued": "queued",
    }
