"""An image folder's files (issue 18, items 9 and 12a), each fault planted in a real folder:
symlink loops and links that reach a folder or a file twice, FIFOs, sockets and devices named
like images, and a file swapped after it was listed. Each is refused with one line that names
it, before anything is opened, and without holding the process-wide data lock."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from workbench.data import datasets as data_module
from workbench.data.datasets import load_dataset
from workbench.errors import ConfigError, DatasetUnavailableError

# Seconds a load may take before it counts as hung: far above the second it takes on a loaded
# 2-core machine, so only a real hang (a blocked open) reaches it.
PATIENCE = 120


def _images(root: Path, classes: tuple[str, ...] = ("a", "b"), n: int = 5) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (60 * c, 30 * i, 90)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A local instance whose one data root is ``tmp_path/data``: errors there name files."""
    root = tmp_path / "data"
    root.mkdir()
    config = tmp_path / "workbench.toml"
    config.write_text(f"[data]\nroots = [{str(root)!r}]\n")
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    return root


@pytest.fixture
def proxy(tmp_path, monkeypatch):
    """A shared instance (proxy mode) whose one data root is ``tmp_path/data``."""
    root = tmp_path / "data"
    root.mkdir()
    config = tmp_path / "workbench.toml"
    config.write_text(f'[identity]\nmode = "proxy"\n[data]\nroots = ["{root}"]\n')
    monkeypatch.setenv("KDWB_CONFIG", str(config))
    return root


def _refused(path: Path, match: str, error: type = DatasetUnavailableError) -> str:
    with pytest.raises(error, match=match) as info:
        load_dataset("image_folder", data_path=str(path))
    message = str(info.value)
    assert "\n" not in message
    return message


def _count(data) -> int:
    return sum(data.split_sizes().values())


# ---------------------------------------------------------------------------- link loops
@pytest.mark.parametrize(
    ("target", "leads"),
    [
        ("..", "back to the image folder"),  # the ln -s .. data/loop/a/up: 410 samples
        (".", "back to 'a'"),
        ("../..", "above the image folder"),
        ("../b", "to 'b'"),  # a class folder that is read anyway
    ],
)
def test_a_folder_link_loop_is_refused_and_named(data, target, leads):
    folder = _images(data / "loop")
    (folder / "a" / "up").symlink_to(target)
    message = _refused(folder, "'a/up'")
    assert leads in message and "remove the link" in message
    (folder / "a" / "up").unlink()
    assert _count(load_dataset("image_folder", data_path=str(folder))) == 10


def test_a_link_loop_is_refused_in_proxy_mode(proxy):
    folder = _images(proxy / "loop")
    (folder / "a" / "up").symlink_to("..")
    _refused(folder, "'a/up' is a link back to the image folder")


def test_a_loop_outside_the_roots_is_refused_without_naming_it(tmp_path, home):
    folder = _images(tmp_path / "mine", classes=("secret-a", "secret-b"))
    (folder / "secret-a" / "up").symlink_to("..")
    message = _refused(folder, "a folder link")
    assert "secret" not in message


def test_two_class_links_to_one_folder_are_refused(data):
    folder = _images(data / "pets")
    (folder / "c").symlink_to(folder / "a")
    _refused(folder, "'c' is a link to 'a'.*counted twice")


def test_a_class_linked_from_elsewhere_counts_each_image_once(tmp_path, data):
    elsewhere = _images(tmp_path / "elsewhere", classes=("c",), n=6)
    folder = _images(data / "pets")
    (folder / "c").symlink_to(elsewhere / "c")  # local mode: any folder may be read
    bundle = load_dataset("image_folder", data_path=str(folder))
    assert bundle.class_names == ("a", "b", "c") and _count(bundle) == 16
    labels = Counter([*bundle.train_y.tolist(), *bundle.val_y.tolist(), *bundle.test_y.tolist()])
    assert labels == {0: 5, 1: 5, 2: 6}


@pytest.mark.parametrize("link", [os.symlink, os.link])
def test_the_same_image_in_two_places_is_refused(data, link):
    folder = _images(data / "pets", n=6)
    link(folder / "a" / "0.png", folder / "b" / "copy.png")
    _refused(folder, "'b/copy.png' is the same file as 'a/0.png'.*remove")


# ---------------------------------------------------------------------------- special files
def _load_in_a_thread(folder: Path) -> tuple[threading.Thread, dict]:
    """Start ``load_dataset`` on ``folder`` in a daemon thread; ``outcome`` gets its error."""
    outcome: dict = {}

    def load():
        try:
            outcome["bundle"] = load_dataset("image_folder", data_path=str(folder))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    return thread, outcome


def _unblock(fifo: Path) -> None:
    """Let a reader blocked on ``fifo`` go (a writer opens it and closes: the reader sees EOF),
    so that a failing test leaves no thread holding the data lock for the tests after it."""
    with contextlib.suppress(OSError):  # no reader waiting: nothing is blocked
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_is_refused_at_once_and_the_data_lock_stays_free(data):
    folder = _images(data / "pets")
    fifo = folder / "b" / "stream.png"
    os.mkfifo(fifo)
    thread, outcome = _load_in_a_thread(folder)
    try:
        took_lock = data_module._LOAD_LOCK.acquire(timeout=PATIENCE)
        if took_lock:
            data_module._LOAD_LOCK.release()
        thread.join(PATIENCE)
        assert not thread.is_alive(), "load_dataset hung on the FIFO"
        assert took_lock, "the data lock was held while the FIFO blocked"
    finally:
        _unblock(fifo)
        thread.join(PATIENCE)
    error = outcome.get("error")
    assert isinstance(error, DatasetUnavailableError), outcome
    assert "'b/stream.png' is a named pipe (FIFO), not a regular file" in str(error)
    assert "\n" not in str(error)


def test_a_socket_and_a_device_are_refused(data, monkeypatch):
    folder = _images(data / "pets")
    monkeypatch.chdir(folder / "a")  # a short relative path: AF_UNIX paths are short
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind("sock.png")
        _refused(folder, "'a/sock.png' is a socket, not a regular file")
    finally:
        server.close()
    (folder / "a" / "sock.png").unlink()
    (folder / "b" / "null.png").symlink_to("/dev/null")  # local mode: a link out is allowed
    _refused(folder, "'b/null.png' is a character device, not a regular file")


def test_a_link_to_a_device_is_refused_in_proxy_mode(proxy):
    folder = _images(proxy / "pets")
    (folder / "b" / "zero.png").symlink_to("/dev/zero")  # read whole, it never ends
    _refused(folder, "links to files outside", ConfigError)


class _SwapOnLock:
    """The data lock, but swapping ``victim`` for a FIFO as it is taken: after the folder was
    listed and checked, before its images are read."""

    def __init__(self, lock: threading.Lock, victim: Path):
        self.lock, self.victim = lock, victim

    def __enter__(self):
        self.victim.unlink()
        os.mkfifo(self.victim)
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


def test_a_file_swapped_for_a_fifo_after_listing_is_refused_not_read(data, monkeypatch):
    folder = _images(data / "pets")
    victim = folder / "a" / "3.png"
    monkeypatch.setattr(data_module, "_LOAD_LOCK", _SwapOnLock(data_module._LOAD_LOCK, victim))
    thread, outcome = _load_in_a_thread(folder)
    try:
        thread.join(PATIENCE)
        assert not thread.is_alive(), "load_dataset hung on the swapped-in FIFO"
    finally:
        _unblock(victim)
        thread.join(PATIENCE)
    error = outcome.get("error")
    assert isinstance(error, DatasetUnavailableError), outcome
    assert "a/3.png" in str(error) and "changed since" in str(error)


# ---------------------------------------------------------------------------- one listing
def test_each_folder_is_listed_once(data, monkeypatch):
    folder = _images(data / "pets", classes=("a", "b", "c"))
    (folder / "b" / "more").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "b" / "more" / "x.png")
    reads: Counter = Counter()
    scandir, listdir = os.scandir, os.listdir

    def counted(real):
        def read(path="."):
            reads[os.path.realpath(path)] += 1
            return real(path)

        return read

    monkeypatch.setattr(os, "scandir", counted(scandir))
    monkeypatch.setattr(os, "listdir", counted(listdir))
    bundle = load_dataset("image_folder", data_path=str(folder))
    assert _count(bundle) == 16
    folders = [folder, *(folder / c for c in "abc"), folder / "b" / "more"]
    assert {str(p): 1 for p in folders} == {
        p: n for p, n in reads.items() if Path(p).is_relative_to(folder)
    }
