"""A hardened server (issue 9, item 4), each fault injected and its outcome checked: image
folders outside the data roots, an oversized upload, a store readable by other users, secrets
in identity errors or logs."""

from __future__ import annotations

import inspect
import logging
import os
import stat
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from workbench.config.run_config import RunConfig
from workbench.data.datasets import load_dataset
from workbench.data.roots import check_data_path
from workbench.errors import CheckpointError, ConfigError, DatasetUnavailableError
from workbench.lab import identity
from workbench.lab import settings as settings_module
from workbench.lab.identity import IdentityError, user_from_claims, user_from_headers
from workbench.models.registry import build_model
from workbench.storage.store import Store
from workbench.training.probe import teacher_probe_features
from workbench.training.teacher_cache import teacher_source
from workbench.training.teachers import import_uploaded_teacher


def _images(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n: int = 5) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (60 * c, 30 * i, 90)).save(root / name / f"{i}.png")
    return root


def _use_settings(tmp_path: Path, monkeypatch, text: str) -> None:
    """Point ``settings.current()`` at a workbench.toml holding ``text``."""
    config = tmp_path / "workbench.toml"
    config.write_text(text)
    monkeypatch.setenv(settings_module.CONFIG_ENV, str(config))


# ---------------------------------------------------------------------------- data roots
@pytest.fixture
def proxy(tmp_path, monkeypatch):
    """A shared instance (proxy mode) whose one data root is ``tmp_path/root``."""
    root = tmp_path / "root"
    root.mkdir()
    _use_settings(
        tmp_path, monkeypatch, f'[identity]\nmode = "proxy"\n[data]\nroots = ["{root}"]\n'
    )
    return root


def test_proxy_settings_refuse_any_path_and_allow_none_by_default(tmp_path):
    root = str(tmp_path)
    shared = settings_module.parse({"identity": {"mode": "proxy"}, "data": {"roots": [root]}})
    assert not shared.allows_any_data_path()
    assert settings_module.LabSettings().allows_any_data_path()  # local mode
    with pytest.raises(settings_module.SettingsError, match="data.any_path = true is for local"):
        settings_module.parse({"identity": {"mode": "proxy"}, "data": {"any_path": True}})


def _refusal(path: str | Path, settings=None) -> str:
    with pytest.raises(ConfigError) as info:
        check_data_path(str(path), settings)
    message = str(info.value)
    assert "\n" not in message and "put the data under one of them" in message
    return message


def test_a_folder_outside_the_roots_is_refused_alike_whether_or_not_it_exists(tmp_path, proxy):
    away = _images(tmp_path / "away")
    there = _refusal(away)
    missing = _refusal(tmp_path / "nowhere")
    assert str(proxy) in there  # names the allowed root
    assert there.replace("away", "X") == missing.replace("nowhere", "X")  # no existence leak
    assert "cat" not in there and "dog" not in there
    with pytest.raises(ConfigError, match="outside this instance's data roots"):
        load_dataset("image_folder", data_path=str(away))


def test_dotdot_and_symlink_escapes_are_refused(tmp_path, proxy):
    _images(tmp_path / "outside")
    _refusal(f"{proxy}/../outside")
    (proxy / "link").symlink_to(tmp_path / "outside")
    message = _refusal(proxy / "link")
    assert str(tmp_path / "outside") not in message  # where the link points is not shown
    # A class folder linked out of the root: torchvision would follow it.
    _images(proxy / "mixed", classes=("cat",))
    (proxy / "mixed" / "dog").symlink_to(tmp_path / "outside" / "dog")
    with pytest.raises(ConfigError, match="links to files outside"):
        load_dataset("image_folder", data_path=str(proxy / "mixed"))


def test_a_folder_inside_the_roots_loads_and_its_errors_name_classes(proxy):
    data = load_dataset("image_folder", data_path=str(_images(proxy / "pets")))
    assert data.class_names == ("cat", "dog") and data.input_shape == (3, 32, 32)
    _images(proxy / "few", n=2)
    with pytest.raises(DatasetUnavailableError, match="cat: 2, dog: 2"):
        load_dataset("image_folder", data_path=str(proxy / "few"))


def test_etc_is_refused_in_proxy_mode(proxy):
    message = _refusal("/etc")
    assert not set(os.listdir("/etc")) & set(message.replace(",", " ").split())


def test_local_mode_allows_any_folder_but_lists_none_outside_the_roots(tmp_path, home):
    data = load_dataset("image_folder", data_path=str(_images(tmp_path / "mine")))
    assert data.num_classes == 2
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("image_folder", data_path="/etc")
    words = set(str(info.value).replace(",", " ").replace("(", " ").split())
    assert not {e for e in os.listdir("/etc") if (Path("/etc") / e).is_dir()} & words
    assert "Found no valid file" not in str(info.value)
    _images(tmp_path / "few", classes=("secret-a", "secret-b"), n=2)
    with pytest.raises(DatasetUnavailableError, match="2 of its 2 classes") as info:
        load_dataset("image_folder", data_path=str(tmp_path / "few"))
    assert "secret" not in str(info.value)
    (tmp_path / "mine" / "cat" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetUnavailableError, match="cannot read image") as info:
        load_dataset("image_folder", data_path=str(tmp_path / "mine"))
    assert "bad.png" not in str(info.value)


# ---------------------------------------------------------------------------- upload cap
def test_an_oversized_upload_is_refused_before_anything_is_written(tmp_path, monkeypatch, store):
    _use_settings(tmp_path, monkeypatch, "[uploads]\nmax_mib = 1\n")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(CheckpointError) as info:
        import_uploaded_teacher(
            store, b"\0" * (3 * 2**19), "big\nteacher.pt", teacher="small_cnn", dataset="digits"
        )
    message = str(info.value)
    assert "\n" not in message
    assert "teacher.pt" in message and "1.5 MiB" in message and "limit of 1 MiB" in message
    assert "[uploads] max_mib" in message and "workbench.toml" in message
    assert store.list_runs() == [] and list(temp.iterdir()) == []
    # Under the cap the upload goes on to the checkpoint check (and its temp file is removed).
    with pytest.raises(CheckpointError) as info:
        import_uploaded_teacher(
            store, b"\0" * 2**19, "small.pt", teacher="small_cnn", dataset="digits"
        )
    assert "max_mib" not in str(info.value)
    assert store.list_runs() == [] and list(temp.iterdir()) == []


def test_a_decompression_bomb_is_refused_before_it_is_loaded(tmp_path, monkeypatch, store):
    """issue 18 item 6: a small zip whose member inflates past the cap was loaded (and its
    size held in memory) before anything refused it."""
    import io
    import zipfile

    _use_settings(tmp_path, monkeypatch, "[uploads]\nmax_mib = 1\n")
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("bomb/data/0", "w") as member,
    ):
        for _ in range(8):  # 8 MiB of zeros, a few KiB once deflated
            member.write(b"\0" * 2**20)
    content = buffer.getvalue()
    assert len(content) < 2**20
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(CheckpointError, match=r"'bomb.pt' unpacks to 8.0 MiB, over .* limit of 1"):
        import_uploaded_teacher(store, content, "bomb.pt", teacher="small_cnn", dataset="digits")
    assert loads == [] and store.list_runs() == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_teacher_with_non_finite_weights_is_refused_on_import(store, bad):
    """issue 18 item 10: it was accepted, and its students failed as 'diverged'."""
    import io

    from workbench.data.datasets import load_dataset
    from workbench.models.registry import build_model

    data = load_dataset("digits")
    state = build_model("small_cnn", data.input_shape, data.num_classes).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = bad
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with pytest.raises(CheckpointError, match=f"NaN or infinite weights \\({name}"):
        import_uploaded_teacher(
            store, buffer.getvalue(), "bad.pt", teacher="small_cnn", dataset="digits"
        )
    assert store.list_runs() == []


# ---------------------------------------------------------------------------- store permissions
@pytest.fixture
def loose_umask():
    """The usual 0o022 umask (an earlier Store in this process may have tightened it), put
    back afterwards."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _loose(home: Path) -> list[str]:
    """Paths under ``home`` (itself included) that are not 0700 folders or 0600 files."""
    wrong = []
    for path in [home, *home.rglob("*")]:
        mode = path.lstat().st_mode
        want = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_IMODE(mode) != want:
            wrong.append(f"{path.relative_to(home)}: {oct(stat.S_IMODE(mode))}")
    return wrong


def test_everything_the_store_writes_is_private(tmp_path, loose_umask):
    home = tmp_path / "home"
    store = Store(home)
    try:
        run_id = store.create_run(RunConfig(device="cpu"), name="private")
        rows = [{"step": i, "loss": 1.0 / (i + 1), "note": "x" * 200} for i in range(400)]
        store.set_history(run_id, rows)  # large enough for diskcache's value files
        store.save_weights(run_id, {"w": torch.zeros(3)})
        store.write_manifest(run_id)
        digits = load_dataset("digits")
        torch.manual_seed(0)
        teacher = build_model("small_cnn", digits.input_shape, digits.num_classes).eval()
        x = digits.train_x[:64]
        cached = teacher_source(
            RunConfig(device="cpu"), teacher, run_id, ["block2"], x, store, torch.device("cpu")
        )
        assert cached.kind == "cache"
        _, how = teacher_probe_features(teacher, ["block3"], x[:16], store=store)
        assert how == "cache: built now"
        with store.lock("private-test"):
            pass
    finally:
        store.close()
    assert (home / "teacher_outputs").is_dir() and (home / "store").is_dir()
    assert len(list(home.rglob("*"))) > 8
    assert _loose(home) == []


def test_an_existing_loose_store_is_tightened_on_open(tmp_path, loose_umask):
    home = tmp_path / "home"
    for folder in (home, home / "store", home / "checkpoints"):
        folder.mkdir(mode=0o755, parents=True)
        folder.chmod(0o755)
    Store(home).close()
    for folder in (home, home / "store", home / "checkpoints"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert os.umask(0o022) & 0o077 == 0o077  # and the process now masks group and other


# ---------------------------------------------------------------------------- secrets in logs
SECRETS = {
    "Cookie": "_oauth2_proxy=s3cr3t-cookie-value",
    "Authorization": "Bearer eyJ-secret-token",
    "X-Forwarded-Access-Token": "ya29.secret-access-token",
}


def _assert_no_secret(text: str) -> None:
    for value in SECRETS.values():
        assert value not in text and value.split("=")[-1] not in text
        assert value.split()[-1] not in text


@pytest.mark.parametrize(
    "user",
    [
        None,  # no user header: the request did not come through the proxy
        "   ",  # an empty one
        "alice\x1b[31m" + "x" * 300,  # control characters, too long
    ],
)
def test_identity_errors_and_logs_carry_no_cookie_or_token(user, caplog):
    proxy = settings_module.parse({"identity": {"mode": "proxy"}})
    headers = dict(SECRETS)
    if user is not None:
        headers["X-Forwarded-User"] = user
    caplog.set_level(logging.DEBUG)
    with pytest.raises(IdentityError) as info:
        user_from_headers(headers, proxy)
    _assert_no_secret(str(info.value))
    assert "alice" not in str(info.value)  # nor the rejected name
    claims = {"email": "", "id_token": SECRETS["Authorization"], "sub": "   "}
    with pytest.raises(IdentityError) as info:
        user_from_claims(claims, proxy)
    _assert_no_secret(str(info.value))
    assert caplog.records == []


def test_identity_never_logs():
    """Headers and claims carry cookies and tokens: the module must not log at all."""
    source = inspect.getsource(identity)
    assert "import logging" not in source and "getLogger" not in source
    assert "print(" not in source
