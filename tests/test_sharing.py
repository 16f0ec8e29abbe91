"""A shared lab instance: who owns what, who may do what, the fair queue and per-user limits.

Each rule is exercised in the library (``JobManager``, ``workbench.runs.permitted``, the CLI), the
way every front end reaches it, as the owner, as another user and as an admin.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from workbench.config.run_config import RunConfig
from workbench.errors import ConfigError
from workbench.lab.access import AccessError
from workbench.lab.identity import User
from workbench.lab.settings import SettingsError, is_user_header, load, parse
from workbench.runs import permitted as actions
from workbench.runs import queue as runqueue
from workbench.runs.job_manager import JobManager
from workbench.runs.queue_plan import queue_plan
from workbench.runs.submit import Submission, check_quota
from workbench.storage.store import Store

ALICE, BOB, ADMIN = User("alice"), User("bob"), User("root", admin=True)
TINY = RunConfig(
    role="teacher", teacher="mlp", student="mlp", epochs=1, batch_size=64, weights={"label": 1.0}
)
LAB = parse({"identity": {"mode": "proxy", "admins": ["root"]}})


def fake_runner(config, store, *, stop=None, run_id=None, on_step=None, fence=None):
    store.update_run(run_id, status="completed", finished_at=time.time())
    return store.get_run(run_id)


@pytest.fixture
def lab(tmp_path):
    """A job manager that queues but never executes (the tests decide what runs)."""
    manager = JobManager(Store(tmp_path / "home"), execute="none", settings=LAB)
    yield manager
    manager.close()


def test_runs_record_their_owner_and_visibility(lab):
    run_id = lab.submit(TINY, user=ALICE)
    record = lab.store.get_run(run_id)
    assert record["owner"] == "alice" and record["private"] is False


MUTATIONS = {
    "cancel": lambda m, r, u: m.cancel(r, u),
    "delete": lambda m, r, u: m.delete(r, u),
    "rename": lambda m, r, u: m.rename(r, u, name="mine now"),
    "tag": lambda m, r, u: m.rename(r, u, tags=["x"]),
    "hide": lambda m, r, u: m.set_private(r, True, u),
    "resume": lambda m, r, u: m.resume(r, u),
}


def _ready_for(manager: JobManager, action: str) -> str:
    """A run of alice's in the state the action applies to."""
    run_id = manager.submit(TINY, user=ALICE)
    if action in ("delete", "resume"):
        manager.store.update_run(run_id, status="failed" if action == "resume" else "completed")
    return run_id


@pytest.mark.parametrize("action", sorted(MUTATIONS))
def test_another_user_is_refused_every_mutating_action(lab, action):
    run_id = _ready_for(lab, action)
    before = lab.store.get_run(run_id)
    with pytest.raises(AccessError, match=r"bob may not .* belongs to alice"):
        MUTATIONS[action](lab, run_id, BOB)
    assert lab.store.get_run(run_id) == before  # nothing changed


@pytest.mark.parametrize("user", [ALICE, ADMIN], ids=["owner", "admin"])
@pytest.mark.parametrize("action", sorted(MUTATIONS))
def test_the_owner_and_an_admin_may_act(lab, action, user):
    run_id = _ready_for(lab, action)
    MUTATIONS[action](lab, run_id, user)
    if action == "delete":
        assert not lab.store.has_run(run_id)
        return
    record = lab.store.get_run(run_id)
    expected = {
        "cancel": ("status", "cancelled"),
        "rename": ("name", "mine now"),
        "tag": ("tags", ["x"]),
        "hide": ("private", True),
        "resume": ("status", "queued"),
    }[action]
    assert record[expected[0]] == expected[1]


def test_private_runs_are_hidden_from_others_and_look_deleted(lab):
    shared = lab.submit(TINY, user=ALICE)
    hidden = lab.submit(TINY, user=ALICE, private=True)
    seen = {r["id"] for r in actions.list_runs(lab.store, BOB)}
    assert shared in seen and hidden not in seen
    assert {r["id"] for r in actions.list_runs(lab.store, ALICE)} >= {shared, hidden}
    assert hidden in {r["id"] for r in actions.list_runs(lab.store, ADMIN)}
    with pytest.raises(KeyError, match="no run"):
        actions.get_run(lab.store, hidden, BOB)
    with pytest.raises(KeyError, match="no run"):  # not "you may not": it does not exist for bob
        lab.cancel(hidden, BOB)
    with pytest.raises(KeyError, match="no run"):
        lab.restart(hidden, BOB)


def test_mine_only_lists_the_users_own_runs(lab):
    a, b = lab.submit(TINY, user=ALICE), lab.submit(TINY, user=BOB)
    assert [r["id"] for r in actions.list_runs(lab.store, BOB, mine=True)] == [b]
    assert {r["id"] for r in actions.list_runs(lab.store, BOB)} == {a, b}


def test_anyone_who_sees_a_run_may_restart_a_copy_of_it_as_their_own(lab):
    run_id = lab.submit(TINY, user=ALICE)
    copy = lab.restart(run_id, BOB)
    assert lab.store.get_run(copy)["owner"] == "bob"
    assert lab.store.get_run(run_id)["owner"] == "alice"


def test_a_private_teacher_of_another_user_cannot_be_used(lab):
    teacher = lab.submit(TINY, user=ALICE, private=True)
    lab.store.update_run(teacher, status="completed")
    lab.store.save_weights(teacher, {})
    student = RunConfig(teacher="mlp", student="mlp", teacher_run=teacher, epochs=1)
    with pytest.raises(ConfigError, match="not in the store"):
        lab.submit(student, user=BOB)
    assert lab.submit(student, user=ALICE)  # its owner may


def test_suites_record_their_owner_and_only_the_owner_deletes_one(lab):
    from workbench.ablation.suites import launch_suite

    base = RunConfig(teacher="mlp", student="mlp", epochs=1)

    def submit(submissions):
        return lab.submit_many(submissions, ALICE)

    suite = launch_suite(base, lab.store, submit, seeds=1, owner="alice")
    assert suite["owner"] == "alice"
    assert {lab.store.get_run(r["run_id"])["owner"] for r in suite["runs"]} == {"alice"}
    with pytest.raises(AccessError):
        actions.delete_suite(lab.store, suite["id"], BOB)
    actions.delete_suite(lab.store, suite["id"], ALICE)
    assert not lab.store.list_suites()


# ---------------------------------------------------------------------- the fair queue
def _starts(store: Store, n: int, max_running: int | None = None) -> list[str]:
    """Owners of the next ``n`` runs to start, one slot, each finishing before the next."""
    executor = runqueue.Executor("test")
    owners = []
    for _ in range(n):
        record = runqueue.claim_next(store, executor, ["cpu"], max_running=max_running)
        owners.append(record["owner"])
        store.update_run(record["id"], status="completed")
    return owners


def test_a_queues_ten_b_queues_one_and_b_starts_second(lab):
    for _ in range(10):
        lab.submit(TINY, user=ALICE)
    lab.submit(TINY, user=BOB)
    assert _starts(lab.store, 11) == ["alice", "bob"] + ["alice"] * 9


def test_three_users_take_turns(lab):
    for user in (ALICE, BOB, ADMIN):
        for _ in range(3):
            lab.submit(TINY, user=user)
    owners = _starts(lab.store, 9)
    assert owners == ["alice", "bob", "root"] * 3


def test_a_user_at_the_running_limit_waits_while_others_start(lab):
    for _ in range(3):
        lab.submit(TINY, user=ALICE)
    executor = runqueue.Executor("test")
    first = runqueue.claim_next(lab.store, executor, ["cpu"], max_running=1)
    assert first["owner"] == "alice"
    # alice has one running: with her limit at 1 nothing of hers starts, however many slots
    assert runqueue.claim_next(lab.store, executor, ["cpu"], max_running=1) is None
    bob = lab.submit(TINY, user=BOB)
    assert runqueue.claim_next(lab.store, executor, ["cpu"], max_running=1)["id"] == bob


def test_the_running_limit_holds_against_a_claim_that_raced_past_the_order(lab):
    a1, a2 = lab.submit(TINY, user=ALICE), lab.submit(TINY, user=ALICE)
    executor = runqueue.Executor("test")
    assert runqueue.claim(lab.store, a1, executor, max_running=1) is not None
    # a second executor that decided on a2 from an older listing: the claim itself refuses
    assert runqueue.claim(lab.store, a2, executor, max_running=1) is None
    assert lab.store.get_run(a2)["status"] == "queued"


def test_the_queue_plan_gives_positions_in_fair_order_and_start_estimates(lab):
    store = lab.store
    done = store.create_run(TINY, owner="alice", status="completed")
    store.update_run(done, seconds=10.0)  # 1 epoch: 10 s an epoch
    queued = [lab.submit(TINY, user=ALICE) for _ in range(3)] + [lab.submit(TINY, user=BOB)]
    plan = queue_plan(store.list_runs(), 1, {"alice": time.time()}, now=time.time())
    order = sorted(plan, key=lambda r: plan[r].position)
    assert order == [queued[3], queued[0], queued[1], queued[2]]  # bob first: alice was served
    assert [plan[r].eta_s for r in order] == [0.0, 10.0, 20.0, 30.0]


def test_the_queue_plan_without_history_gives_positions_only(lab):
    ids = [lab.submit(TINY, user=ALICE) for _ in range(2)]
    plan = queue_plan(lab.store.list_runs(), 1, {}, now=time.time())
    assert [plan[r].position for r in ids] == [1, 2]
    assert plan[ids[1]].eta_s is None


def test_end_to_end_b_starts_before_as_remaining_queue(tmp_path):
    """The executor side: a real JobManager with one slot drains the queue fairly."""
    store = Store(tmp_path / "home")
    manager = JobManager(store, execute="none", settings=LAB, runner=fake_runner)
    try:
        for _ in range(4):
            manager.submit(TINY, user=ALICE)
        bob = manager.submit(TINY, user=BOB)
        manager.execute = "threads"
        assert manager.wait(timeout=60)
        order = sorted(store.list_runs(), key=lambda r: r["claimed_at"])
        assert [r["owner"] for r in order][:2] == ["alice", "bob"]
        assert order[1]["id"] == bob
    finally:
        manager.close()


# ---------------------------------------------------------------------- limits
def _limited(tmp_path, **limits):
    settings = parse({"identity": {"mode": "proxy"}, "limits": limits})
    return JobManager(Store(tmp_path / "home"), execute="none", settings=settings)


def test_queued_runs_limit_refuses_with_its_name_and_the_fix(tmp_path):
    manager = _limited(tmp_path, queued_runs=2)
    try:
        manager.submit(TINY, user=ALICE)
        manager.submit(TINY, user=ALICE)
        with pytest.raises(ConfigError, match=r"queued-runs limit: you have 2 runs queued.*Cancel"):
            manager.submit(TINY, user=ALICE)
        assert len(manager.store.list_runs()) == 2  # nothing was created
        manager.submit(TINY, user=BOB)  # the limit is per user
    finally:
        manager.close()


def test_a_suite_counts_as_its_runs(tmp_path):
    manager = _limited(tmp_path, queued_runs=5)
    try:
        six = [Submission(TINY.replace(seed=s)) for s in range(6)]
        with pytest.raises(ConfigError, match="asked for 6 more"):
            manager.submit_many(six, ALICE)
        assert manager.store.list_runs() == []  # all or none
        assert len(manager.submit_many(six[:5], ALICE)) == 5
    finally:
        manager.close()


def test_epochs_limit_refuses_with_its_name_and_the_fix(tmp_path):
    manager = _limited(tmp_path, epochs_per_run=3)
    try:
        with pytest.raises(ConfigError, match=r"epochs limit: epochs is 4.*at most 3"):
            manager.submit(TINY.replace(epochs=4), user=ALICE)
        student = RunConfig(teacher="mlp", student="mlp", epochs=2, teacher_epochs=5)
        with pytest.raises(ConfigError, match=r"epochs limit: teacher_epochs is 5"):
            manager.submit(student, user=ALICE)
        assert not manager.store.list_runs()
    finally:
        manager.close()


def test_store_limit_refuses_with_its_name_and_the_fix(tmp_path):
    manager = _limited(tmp_path, store_mib=1)
    try:
        run_id = manager.submit(TINY, user=ALICE)
        manager.store.weights_path(run_id).write_bytes(b"\0" * (2**20 + 1))
        with pytest.raises(ConfigError, match=r"store limit: your runs keep 1 MiB.*delete runs"):
            manager.submit(TINY, user=ALICE)
        manager.submit(TINY, user=BOB)  # bob's own runs keep nothing
    finally:
        manager.close()


def test_running_runs_limit_from_the_settings_holds_in_the_executor(tmp_path):
    store = Store(tmp_path / "home")
    settings = parse({"identity": {"mode": "proxy"}, "limits": {"running_runs": 1}})
    started: list[tuple[str, int]] = []

    def runner(config, store, *, stop=None, run_id=None, on_step=None, fence=None):
        owner = store.get_run(run_id)["owner"]
        running = [r for r in store.list_runs(status="running") if r["owner"] == owner]
        started.append((owner, len(running)))
        time.sleep(0.05)
        return fake_runner(config, store, run_id=run_id)

    manager = JobManager(store, {"cpu": 3}, runner, execute="none", settings=settings)
    try:
        for _ in range(4):
            manager.submit(TINY, user=ALICE)
        manager.execute = "threads"
        assert manager.wait(timeout=60)
    finally:
        manager.close()
    assert [n for _, n in started] == [1, 1, 1, 1]  # never two of alice's at once


def test_local_mode_has_no_limits_unless_configured():
    assert load(None).user_quotas() is None or load(None).source
    assert parse({}).user_quotas() is None
    assert parse({"limits": {"running_runs": 3}}).user_quotas().running_runs == 3


def test_check_quota_with_no_limits_accepts_anything(tmp_path):
    check_quota(Store(tmp_path), ALICE, [TINY.replace(epochs=500)] * 1000, None)


# ---------------------------------------------------------------------- settings file
@pytest.mark.parametrize(
    "text, message",
    [
        ("[identity]\nmode = 'ldap'\n", "identity.mode must be one of 'local', 'oidc', 'proxy'"),
        ("[limits]\nqueued = 3\n", "unknown key limits.queued; [limits] takes queued_runs"),
        ("[limit]\n", "unknown section [limit]"),
        ("[limits]\nrunning_runs = 0\n", "limits.running_runs must be a whole number from 1"),
        ("[limits]\nepochs_per_run = true\n", "epochs_per_run must be a whole number"),
        ("[identity]\nadmins = 'root'\n", "identity.admins must be a list of user names"),
        ("[identity]\nheader = 'X User'\n", "identity.header must be the name of a header that"),
        ("[identity]\nheader = 'Host'\n", "not one a browser or proxy sets for something else"),
        ("[identity]\nheader = 'cookie'\n", "identity.header must be the name of a header that"),
        ("[identity]\nheader = 'Authorization'\n", "identity.header must be the name of a"),
        ("[identity]\nheader = 'User-Agent'\n", "identity.header must be the name of a"),
        ("[identity]\nheader = 'Sec-WebSocket-Key'\n", "identity.header must be the name of a"),
        ("[identity\n", "is not valid TOML"),
        ("[identity]\nmode='proxy'\n[data]\nany_path=true\n", "any_path = true is for local"),
    ],
)
def test_a_wrong_settings_file_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "workbench.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as info:
        load(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_kdwb_config_naming_a_missing_file_is_an_error(tmp_path, monkeypatch):
    from workbench.lab.settings import settings_path

    monkeypatch.setenv("KDWB_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError, match="no such file"):
        settings_path()


# ---------------------------------------------------------------------- the CLI
def _cli(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_cli_acts_as_user_and_refuses_another_users_cancel(tmp_path):
    import os

    home = tmp_path / "home"
    store = Store(home)
    run_id = store.create_run(TINY, owner="alice")
    private = store.create_run(TINY, owner="alice", private=True)
    store.close()
    env = {**os.environ, "KDWB_HOME": str(home), "KDWB_USER": "alice"}
    env.pop("KDWB_CONFIG", None)
    refused = _cli(["cancel", run_id, "--user", "bob"], env, tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "bob may not cancel run" in refused.stderr and "belongs to alice" in refused.stderr
    hidden = _cli(["show", private, "--user", "bob"], env, tmp_path)
    assert hidden.returncode == 2 and "no run" in hidden.stderr
    listed = _cli(["runs", "--user", "bob"], env, tmp_path)
    assert run_id in listed.stdout and private not in listed.stdout
    done = _cli(["cancel", run_id], env, tmp_path)  # $KDWB_USER=alice: her own run
    assert done.returncode == 0, done.stderr
    deleted = _cli(["delete", run_id, "--user", "bob"], env, tmp_path)
    assert deleted.returncode == 2 and "bob may not delete" in deleted.stderr
    assert _cli(["delete", run_id], env, tmp_path).returncode == 0
    assert not Store(home).has_run(run_id)


def test_the_documented_example_settings_file_is_valid():
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "docs" / "workbench.example.toml"
    settings = load(example)
    assert settings.identity_mode == "proxy" and settings.app_executes == "none"
    assert settings.user_quotas().running_runs == 2


# ---------------------------------------------------------------------- identity sources
def test_proxy_mode_reads_the_configured_header_case_insensitively():
    from workbench.lab.identity import user_from_headers

    settings = parse({"identity": {"mode": "proxy", "header": "X-Auth-User", "admins": ["ann"]}})
    assert user_from_headers({"x-auth-user": " ann "}, settings) == User("ann", admin=True)
    assert user_from_headers({"X-Auth-User": "ben"}, settings) == User("ben")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-User": ["admin", "alice"]},  # two header lines: the first used to win
        {"X-Forwarded-User": "admin", "x-forwarded-user": "alice"},
        {"X-Forwarded-User": ["admin, alice"]},  # a proxy that appends instead of replacing
    ],
)
def test_a_request_naming_two_users_is_refused_whichever_comes_first(headers):
    from workbench.lab.identity import IdentityError, user_from_headers

    settings = parse({"identity": {"mode": "proxy", "admins": ["admin"]}})
    with pytest.raises(IdentityError, match="names more than one user"):
        user_from_headers(headers, settings)


def test_user_header_values_are_read_as_utf8_and_normalised():
    from workbench.lab.identity import IdentityError, user_from_headers

    settings = parse({"identity": {"mode": "proxy"}})
    latin1 = "\u0430dmin".encode().decode("latin-1")  # what the server hands over: 'Ð°dmin'
    assert user_from_headers({"X-Forwarded-User": [latin1]}, settings).name == "\u0430dmin"
    decomposed = "jose\u0301"  # e + combining acute: one name, one form (NFC)
    assert user_from_headers({"X-Forwarded-User": decomposed}, settings).name == "jos\u00e9"
    with pytest.raises(IdentityError, match="not UTF-8"):
        user_from_headers({"X-Forwarded-User": ["\xff\xfeadmin"]}, settings)


def test_only_headers_that_carry_a_user_may_be_the_identity():
    for name in (
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "Remote-User",
        "X-Auth-Request-User",
        "X-MS-Client-Principal-Name",
        "X-Forwarded-Preferred-Username",
    ):
        assert is_user_header(name), name
    for name in (
        "Host",
        "Cookie",
        "Authorization",
        "Proxy-Authorization",
        "User-Agent",
        "X-Forwarded-For",
        "Sec-WebSocket-Protocol",
        "Origin",
    ):
        assert not is_user_header(name), name


def test_oidc_names_the_user_by_email_then_username_then_subject():
    from workbench.lab.identity import IdentityError, user_from_claims

    settings = parse({"identity": {"mode": "oidc"}})
    assert user_from_claims({"email": "a@x.org", "sub": "1"}, settings).name == "a@x.org"
    assert user_from_claims({"preferred_username": "ann", "sub": "1"}, settings).name == "ann"
    assert user_from_claims({"sub": "42"}, settings).name == "42"
    with pytest.raises(IdentityError, match="email"):
        user_from_claims({}, settings)


@pytest.mark.parametrize(
    "secrets, message",
    [
        ({}, "needs an [auth] section"),
        ({"auth": {"client_id": "c"}}, "lacks redirect_uri, cookie_secret"),
        (
            {"auth": {"redirect_uri": "r", "cookie_secret": "s"}},
            "lacks client_id, client_secret and server_metadata_url",
        ),
    ],
)
def test_oidc_without_its_secrets_says_what_is_missing(secrets, message):
    from workbench.lab.identity import IdentityError, check_oidc_ready

    with pytest.raises(IdentityError, match=re.escape(message)):
        check_oidc_ready(secrets)


def test_oidc_with_a_named_provider_needs_authlib(monkeypatch):
    from workbench.lab.identity import IdentityError, check_oidc_ready

    provider = {"client_id": "c", "client_secret": "s", "server_metadata_url": "https://x"}
    secrets = {"auth": {"redirect_uri": "r", "cookie_secret": "k", "google": provider}}
    monkeypatch.setitem(sys.modules, "authlib", None)  # as if not installed
    with pytest.raises(IdentityError, match=r"pip install -e '\.\[oidc\]'"):
        check_oidc_ready(secrets)


def test_cli_runs_shows_owner_privacy_and_queue_place(tmp_path):
    import json
    import os

    home = tmp_path / "home"
    store = Store(home)
    first = store.create_run(TINY, owner="alice")
    second = store.create_run(TINY, owner="bob", private=True)
    store.close()
    env = {**os.environ, "KDWB_HOME": str(home), "KDWB_USER": "bob"}
    env.pop("KDWB_CONFIG", None)
    text = _cli(["runs"], env, tmp_path).stdout
    assert f"{first}  queued" in text and "alice" in text and "[#1" in text
    assert "bob (private)" in text and "[#2" in text
    rows = {r["run_id"]: r for r in json.loads(_cli(["runs", "--json"], env, tmp_path).stdout)}
    assert rows[first]["owner"] == "alice" and rows[first]["queue_position"] == 1
    assert rows[second]["private"] is True and rows[second]["queue_position"] == 2


# ---------------------------------------------------------------------- references to other runs
def test_another_users_private_teacher_is_never_used_silently(store):
    """issue 18 item 2: bob's run with alice's recipe used her private implicit teacher."""
    from workbench.training.loop import run

    config = RunConfig(
        teacher="small_cnn", student="mlp", epochs=1, teacher_epochs=1, batch_size=128, device="cpu"
    )

    def run_as(owner: str, cfg: RunConfig = config) -> dict:
        return run(cfg, store, run_id=store.create_run(cfg, owner=owner))

    alices = run_as("alice")["teacher_run"]
    assert store.get_run(alices)["owner"] == "alice"
    actions.set_private(store, alices, ALICE, True)

    scratch = config.replace(
        weights={"label": 1.0, "response": 0.0, "feature": 0.0, "relation": 0.0}
    )
    assert run_as("dave", scratch)["teacher_run"] is None  # not even probed against it

    bob = run_as("bob")
    assert bob["status"] == "completed"
    bobs = bob["teacher_run"]
    assert bobs != alices and store.get_run(bobs)["owner"] == "bob"
    assert run_as("alice", config.replace(seed=1))["teacher_run"] == alices  # hers, still
    assert run_as("carol")["teacher_run"] == bobs  # the public one is shared
    assert sum(r["role"] == "teacher" for r in store.list_runs()) == 2


def test_another_users_private_unfinished_teacher_is_not_resumed_for_a_student(store):
    """The third path by which a run names another: a teacher a dead process left unfinished
    is taken back by the next student of its recipe, but never someone else's private one."""
    from workbench.training.loop import run

    config = RunConfig(
        teacher="small_cnn", student="mlp", epochs=1, teacher_epochs=1, batch_size=128, device="cpu"
    )
    hers = store.create_run(config.teacher_config(), owner="alice", private=True)
    store.update_run(hers, status="interrupted")
    bob = run(config, store, run_id=store.create_run(config, owner="bob"))
    assert bob["status"] == "completed" and bob["teacher_run"] not in (None, hers)
    record = store.get_run(hers)
    assert record["status"] == "interrupted" and not record.get("claims")  # never taken


def test_the_app_trains_one_cpu_run_per_core_unless_told_otherwise():
    """issue 19 item 13: a suite in the app ran one run at a time on a 2-core machine."""
    import os

    assert parse({}).cpu_slots() == max(1, os.cpu_count() or 1)
    assert parse({"workers": {"app_cpu_slots": 3}}).cpu_slots() == 3
    with pytest.raises(SettingsError, match="app_cpu_slots"):
        parse({"workers": {"app_cpu_slots": 0}})
