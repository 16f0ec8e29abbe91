"""The pages of a shared instance, as a user who does not own the runs (AppTest, local mode
with ``KDWB_USER=bob``: bob is not the OS user, so not an admin).

The library refuses bob's actions whatever the page shows (tests/test_sharing.py); these tests
check that the pages reflect it: no owner buttons on alice's runs, her private runs absent, a
deep link to one "not found", the "mine only" filter, and queue positions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from workbench.config.run_config import RunConfig
from workbench.lab.identity import Confusable, confusable_names, skeleton
from workbench.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 60
TEACHER = RunConfig(
    role="teacher", teacher="mlp", student="mlp", epochs=1, weights={"label": 1.0}, device="cpu"
)


@pytest.fixture
def lab(home, monkeypatch):
    """A store with alice's runs, opened by the app as bob (no workers: nothing executes)."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("KDWB_USER", "bob")
    monkeypatch.delenv("KDWB_CONFIG", raising=False)
    config = home.parent / "workbench.toml"
    config.write_text('[workers]\napp_executes = "none"\n')  # queued runs stay queued
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    store = Store(home)
    runs = {
        "shared": store.create_run(TEACHER, name="alice shared", owner="alice", status="completed"),
        "private": store.create_run(
            TEACHER, name="alice private", owner="alice", private=True, status="completed"
        ),
        "queued": store.create_run(TEACHER, name="alice queued", owner="alice"),
        "bobs": store.create_run(TEACHER, name="bob own", owner="bob", status="completed"),
    }
    yield store, runs
    st.cache_resource.clear()
    store.close()


def open_runs(params: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(params or {})
    at.run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def buttons(at: AppTest) -> set[str]:
    return {b.key for b in at.button if b.key}


def test_the_sidebar_names_the_user(lab):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()  # the first page
    assert any("Signed in as **bob**" in c.value for c in at.sidebar.caption)


def test_bob_sees_alices_run_without_its_owner_actions(lab):
    store, runs = lab
    at = open_runs({"run": runs["queued"]})
    assert at.selectbox(key="runs_selected").value == runs["queued"]
    assert "run_cancel" not in buttons(at)
    assert not [t for t in at.toggle if t.key and t.key.startswith("run_private_")]
    assert any("Owned by **alice**" in c.value for c in at.caption)
    at = open_runs({"run": runs["shared"]})
    assert {"run_delete", "run_rename_save"}.isdisjoint(buttons(at))


def test_bob_has_every_action_on_his_own_run(lab):
    store, runs = lab
    at = open_runs({"run": runs["bobs"]})
    assert "run_delete" in buttons(at)
    at.toggle(key=f"run_private_{runs['bobs']}").set_value(True).run()
    assert store.get_run(runs["bobs"])["private"] is True


def test_alices_private_run_is_absent_and_its_deep_link_not_found(lab):
    store, runs = lab
    at = open_runs({"run": runs["private"]})
    options = at.selectbox(key="runs_selected").options
    assert not [o for o in options if runs["private"] in o]
    assert any("not found" in w.value for w in at.warning)
    assert at.selectbox(key="runs_selected").value != runs["private"]
    compare = AppTest.from_file(APP, default_timeout=TIMEOUT)
    compare.query_params.update({"runs": f"{runs['private']},{runs['shared']}"})
    compare.run()
    compare.switch_page("pages/compare.py").run()
    assert not compare.exception
    assert any(f"Not found: {runs['private']}" in w.value for w in compare.warning)
    assert runs["private"] not in str(compare.dataframe[0].value["id"].tolist())


def test_mine_only_shows_the_users_own_runs(lab):
    store, runs = lab
    at = open_runs()
    at.toggle(key="runs_mine").set_value(True).run()
    ids = at.dataframe[0].value["id"].tolist()
    assert ids == [runs["bobs"]]
    assert at.query_params["mine"] in ("1", ["1"])


def test_queued_runs_show_their_place(lab):
    store, runs = lab
    at = open_runs()
    table = at.dataframe[0].value.set_index("id")
    assert table.loc[runs["queued"], "queue"].startswith("#1")
    assert table.loc[runs["shared"], "owner"] == "alice"
    assert table.loc[runs["bobs"], "visibility"] == "lab"


def _oidc_app(home, monkeypatch, secrets: dict) -> AppTest:
    monkeypatch.syspath_prepend(str(ROOT))
    config = home.parent / "workbench.toml"
    config.write_text('[identity]\nmode = "oidc"\n')
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in secrets.items():
        at.secrets[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_oidc_mode_asks_to_sign_in_and_shows_nothing_else(home, monkeypatch):
    provider = {"client_id": "c", "client_secret": "s", "server_metadata_url": "https://x"}
    at = _oidc_app(
        home, monkeypatch, {"auth": {"redirect_uri": "r", "cookie_secret": "k", **provider}}
    )
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.selectbox  # no page ran for an unknown user
    st.cache_resource.clear()


def test_oidc_mode_without_auth_secrets_says_so(home, monkeypatch):
    at = _oidc_app(home, monkeypatch, {})
    assert any(r"needs an \[auth\] section" in e.value for e in at.error)  # shown as text
    assert not at.button and not at.selectbox
    st.cache_resource.clear()


# ---------------------------------------------------------------------------------- look-alikes
CYRILLIC_ADMIN = "\u0430dmin"  # a Cyrillic a, then "dmin"


def test_look_alike_names_are_found():
    assert skeleton(CYRILLIC_ADMIN) == skeleton("admin") == skeleton("\uff41dmin") == "admin"
    found = confusable_names(["admin", CYRILLIC_ADMIN, "alice", "Alice", "p\u0430ul", "zo\u00eb"])
    assert found == [
        Confusable(CYRILLIC_ADMIN, "admin", ("Cyrillic \u0430",)),
        Confusable("Alice", "alice", ()),
        Confusable("p\u0430ul", None, ("Cyrillic \u0430",)),
    ]
    assert found[0].message() == '"\u0430dmin" (Cyrillic \u0430) looks like "admin"'
    assert confusable_names(["admin", "bob", "zo\u00eb", "\u0436\u0435\u043d\u044f"]) == []


def test_admins_see_look_alike_owners_on_the_runs_page(home, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    config = home.parent / "workbench.toml"
    config.write_text('[identity]\nadmins = ["admin"]\n[workers]\napp_executes = "none"\n')
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    store = Store(home)
    store.create_run(TEACHER, name="real", owner="alice", status="completed")
    store.create_run(TEACHER, name="fake", owner=CYRILLIC_ADMIN, status="completed")
    store.create_run(
        TEACHER, name="fake 2", owner="[x](http://evil.example)\u0430", status="completed"
    )
    try:
        monkeypatch.setenv("KDWB_USER", "admin")
        at = open_runs()
        (warning,) = [w.value for w in at.warning if "Look-alike" in w.value]
        assert '"\u0430dmin" (Cyrillic \u0430) looks like "admin"' in warning
        assert r"\[x\](http\://evil.example)" in warning  # escaped: no link
        assert "alice" not in warning
        monkeypatch.setenv("KDWB_USER", "bob")  # not an admin: not shown
        at = open_runs()
        assert not [w for w in at.warning if "Look-alike" in w.value]
    finally:
        st.cache_resource.clear()
        store.close()
