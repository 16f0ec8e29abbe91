"""Issue 18, items 12b, 13, 14 and 15: config files that are not files (a FIFO, /dev/zero) or are
too large, deep or start with a BOM; a closed pipe; huge, duplicated or invisible values; values
that were accepted and must not be (``--slots 100000``, a one-component ablation, a
protocol-relative logout URL, relative data roots); and Ctrl-C during ``ablate``.

Each refusal is one line that names the file or the value and what to do; no traceback."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from workbench.ablation.variants import suite_configs
from workbench.cli import main
from workbench.config.files import MAX_TOML_BYTES, read_toml
from workbench.config.run_config import LossWeights, RunConfig, parse_weights
from workbench.errors import ConfigError, quoted
from workbench.lab import settings as settings_module
from workbench.storage.store import Store

FAST = ["--teacher", "small_cnn", "--student", "mlp", "--weights", "label=1", "--epochs", "1"]
HUGE = "x" * (5 * 2**20)  # the 5 MiB field
DEEP = "a = " + "[" * 5000 + "]" * 5000 + "\n"  # the 5,000-deep list


def _cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180):
    """The real command, in a process of its own (generous timeout: a loaded 2-core machine)."""
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "KDWB_HOME": str(home), **(env or {})},
        timeout=timeout,
    )


def _one_line(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


def _refused(capsys, args: list[str], message: str) -> str:
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and message in err, err[:2000]
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""
    return err


# ---------------------------------------------------------------------- 12b: not a regular file
@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "run.toml"
    os.mkfifo(path)  # nobody ever writes to it: reading it would block for ever
    return path


def test_a_fifo_as_config_is_refused_at_once(home, fifo):
    _one_line(_cli(home, "run", "--config", str(fifo), *FAST), f"{fifo} is not a regular file")
    assert Store(home).list_runs() == []


def test_a_fifo_as_settings_file_is_refused_at_once(home, fifo):
    proc = _cli(home, "runs", env={settings_module.CONFIG_ENV: str(fifo)})
    _one_line(proc, f"{fifo} is not a regular file")


@pytest.mark.parametrize("reader", ["config", "settings"])
def test_a_device_as_config_is_refused_before_it_is_read(reader):
    # /dev/zero never ends: read whole, it filled 22 GB before the OOM killer came
    with pytest.raises(ConfigError, match="/dev/zero is not a regular file"):
        if reader == "config":
            RunConfig.from_toml("/dev/zero")
        else:
            settings_module.load("/dev/zero")


@pytest.mark.parametrize("reader", ["config", "settings"])
def test_a_config_over_the_size_cap_is_refused(tmp_path, reader):
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * (MAX_TOML_BYTES // 10 + 1))  # valid TOML, just too large
    with pytest.raises(ConfigError, match=r"big.toml is \d+ bytes; a config file is at most 1 MiB"):
        RunConfig.from_toml(path) if reader == "config" else settings_module.load(path)


# ---------------------------------------------------------------------- 14: deep TOML, broken pipe
def test_a_deeply_nested_config_is_one_line(home, tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text(DEEP)
    _one_line(_cli(home, "run", "--config", str(path)), f"{path} nests lists or tables too deeply")


def test_deeply_nested_settings_are_one_line(home, tmp_path):
    path = tmp_path / "workbench.toml"
    path.write_text(DEEP)
    proc = _cli(home, "runs", env={settings_module.CONFIG_ENV: str(path)})
    _one_line(proc, "nests lists or tables too deeply")


def test_a_reader_that_goes_away_ends_the_listing_quietly(home):
    store = Store(home)
    for i in range(3):
        store.create_run(RunConfig(teacher="small_cnn", student="mlp"), name=f"run {i}")
    store.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "runs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KDWB_HOME": str(home)},
    )
    proc.stdout.close()  # `runs | head -0`: the reader is gone before the first line is written
    err = proc.stderr.read()
    assert proc.wait(timeout=180) == 141, err  # 128 + SIGPIPE, as `cat file | head -1` reports
    assert err == ""


# ---------------------------------------------------------------------- 15: unclear or silent
def test_quoted_cuts_a_value_to_about_200_characters():
    assert quoted("abc") == "'abc'"
    text = quoted(HUGE)
    assert len(text) <= 200 and text.startswith("'xxx") and "5,242,882 characters" in text


def _longest_x_run(text: str) -> int:
    return max((len(m) for m in re.findall("x+", text)), default=0)


HUGE_FLAGS = {
    "dataset": ["run", "--dataset", HUGE],
    "teacher": ["run", "--teacher", HUGE],
    "feature_kind": ["run", "--feature-kind", HUGE],
    "epochs": ["run", "--epochs", HUGE],
    "weights_name": ["run", "--weights", HUGE + "=1"],
    "weights_value": ["run", "--weights", "label=" + HUGE],
    "weights_no_equals": ["run", "--weights", HUGE],
    "layer_pairs": ["run", *FAST, "--layer-pairs", HUGE],
    "status": ["runs", "--status", HUGE],
    "teacher_run": ["run", *FAST, "--teacher-run", HUGE],
}


@pytest.mark.parametrize("case", list(HUGE_FLAGS))
def test_a_huge_flag_value_is_not_echoed_whole(home, capsys, case):
    assert main(HUGE_FLAGS[case]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err[:300]
    assert _longest_x_run(err) <= 200 and len(err) < 1000, err[:300]


@pytest.mark.parametrize(
    "text",
    [
        f'dataset = "{HUGE[: 2**19]}"\n',  # under the file cap: the value itself is the problem
        f"{HUGE[: 2**19]} = 1\n",  # an unknown field's name
        f"[weights]\n{HUGE[: 2**19]} = 1\n",
    ],
)
def test_a_huge_toml_value_is_not_echoed_whole(home, tmp_path, capsys, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    err = _refused(capsys, ["run", "--config", str(path)], f"config file {path}")
    assert _longest_x_run(err) <= 200 and len(err) < 1000


@pytest.mark.parametrize(
    "data",
    [
        {HUGE: {}},
        {"identity": {HUGE: 1}},
        {"identity": {"mode": HUGE}},
        {"identity": {"admins": [HUGE, 5]}},
        {"data": {"roots": [HUGE]}},
    ],
)
def test_a_huge_settings_value_is_not_echoed_whole(data):
    with pytest.raises(settings_module.SettingsError) as info:
        settings_module.parse(data, "workbench.toml")
    assert _longest_x_run(str(info.value)) <= 200 and len(str(info.value)) < 1000


def test_a_text_field_has_a_length_limit():
    with pytest.raises(ConfigError, match="data_path must be at most 4096 characters, got 5242880"):
        RunConfig(data_path=HUGE)


def test_a_weight_given_twice_is_an_error_naming_it(home, capsys):
    with pytest.raises(ConfigError, match="weight label is given twice"):
        parse_weights("label=1,label=2")
    _refused(capsys, ["run", "--weights", "label=1,response=1,label=2"], "label is given twice")


@pytest.mark.parametrize(
    ("name", "named"), [("al\tice", "a tab"), ("bo\x07b", "U+0007"), ("xx\u200by", "U+200B")]
)
def test_an_invisible_character_in_the_user_is_named(home, capsys, name, named):
    err = _refused(capsys, ["runs", "--user", name], "--user")
    assert named in err and "character 3" in err, err


def test_a_tab_in_kdwb_user_is_named(home, capsys, monkeypatch):
    monkeypatch.setenv("KDWB_USER", "al\tice")
    assert "a tab" in _refused(capsys, ["runs"], "$KDWB_USER")


@pytest.mark.parametrize("reader", ["config", "settings"])
def test_a_byte_order_mark_is_named(tmp_path, reader):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b"epochs = 1\n")
    with pytest.raises(ConfigError, match="starts with a UTF-8 byte-order mark; save it without"):
        RunConfig.from_toml(path) if reader == "config" else settings_module.load(path)


def test_read_toml_reads_a_plain_file(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("epochs = 2\n[weights]\nlabel = 1\n")
    assert read_toml(path) == {"epochs": 2, "weights": {"label": 1}}


@pytest.mark.parametrize("slots", ["0", "65", "100000"])
def test_worker_slots_are_capped(home, capsys, slots):
    _refused(
        capsys,
        ["worker", "--slots", slots, "--once"],
        "--slots must be a whole number from 1 to 64",
    )


@pytest.mark.parametrize(
    "weights",
    [LossWeights(1.0, 0.0, 0.0, 0.0), LossWeights(0.5, 0.0, 0.0, 0.0), LossWeights(0, 1, 0, 0)],
)
@pytest.mark.parametrize("factorial", [False, True])
def test_an_ablation_of_one_component_is_refused(weights, factorial):
    base = RunConfig(teacher="small_cnn", student="mlp", weights=weights)
    with pytest.raises(ConfigError, match="an ablation needs at least two loss components"):
        suite_configs(base, seeds=2, factorial=factorial)


def test_the_cli_refuses_an_ablation_of_one_component(home, capsys):
    _refused(capsys, ["ablate", *FAST], "an ablation needs at least two loss components")
    assert Store(home).list_suites() == [] and Store(home).list_runs() == []


@pytest.mark.parametrize(
    "url",
    [
        "//evil.example/x",
        "/\\evil.example/x",
        "/\t/evil.example/x",
        "http://sso.example/logout",
        "https://",
        "https:///x",
        "javascript:alert(1)",
        "sign_out",
        "",
    ],
)
def test_a_logout_url_off_this_site_is_refused(url):
    with pytest.raises(settings_module.SettingsError, match="identity.logout_url must be"):
        settings_module.parse({"identity": {"logout_url": url}})


@pytest.mark.parametrize("url", ["/oauth2/sign_out", "/", "https://sso.example/logout?x=1"])
def test_a_same_origin_or_https_logout_url_is_kept(url):
    assert settings_module.parse({"identity": {"logout_url": url}}).logout_url == url


@pytest.mark.parametrize("root", ["datasets", "./datasets", "../srv/data"])
def test_relative_data_roots_are_refused(root):
    with pytest.raises(
        settings_module.SettingsError, match="data.roots must be a list of absolute"
    ):
        settings_module.parse({"data": {"roots": ["/srv/ok", root]}})


def test_absolute_data_roots_are_kept(tmp_path):
    roots = (str(tmp_path), "~/datasets")
    assert settings_module.parse({"data": {"roots": list(roots)}}).data_roots == roots


# ---------------------------------------------------------------------- 13: Ctrl-C during ablate
def test_ctrl_c_during_ablate_cancels_the_rest_of_the_suite(home):
    args = [
        *("--teacher", "small_cnn", "--student", "mlp", "--weights", "label=0.5,response=0.5"),
        *("--epochs", "20", "--teacher-epochs", "1", "--train-fraction", "0.1"),
        *("--seeds", "3", "--log-every", "1"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "ablate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KDWB_HOME": str(home), "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + 600  # torch's import and the teacher, on a loaded machine
    try:
        while not any(x.startswith("[student] epoch") for x in seen):  # run 1 is training
            assert proc.poll() is None, "".join(seen)
            seen.append(lines.get(timeout=max(1.0, deadline - time.monotonic())))
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=180)  # stops at its next step: far less, even when loaded
    finally:
        proc.kill()
    reader.join(timeout=30)
    while not lines.empty():
        seen.append(lines.get())
    err = "".join(seen)
    assert code == 130, err
    store = Store(home)
    (suite,) = store.list_suites()
    records = [store.get_run(r["run_id"]) for r in suite["runs"]]
    assert len(records) == 12
    statuses = Counter(r["status"] for r in records)
    assert set(statuses) <= {"cancelled", "completed"}, statuses  # none queued or running
    never = [r for r in records if not r.get("executions")]
    assert never and all(r["status"] == "cancelled" for r in never)
    assert statuses["cancelled"] >= len(never) + 1 or statuses["completed"] >= 1
    assert f"stopped: cancelled {len(never)} queued runs of suite {suite['id']}" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("ad\tmin", "a tab at character 3"),
        ("a\u200bdmin", "U+200B (ZERO WIDTH SPACE) at character 2"),
    ],
)
def test_a_header_user_with_an_invisible_character_is_named(name, named):
    """The rule of ``--user`` is the rule of every way in: a proxy header, an OIDC claim."""
    from workbench.lab.identity import IdentityError, user_from_headers
    from workbench.lab.settings import LabSettings

    settings = LabSettings(identity_mode="proxy")
    with pytest.raises(IdentityError, match=re.escape(named)):
        user_from_headers({settings.user_header: name}, settings)
