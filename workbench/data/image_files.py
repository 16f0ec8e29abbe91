"""An image folder's files: listed once, every one checked before any is opened.

torchvision's ``ImageFolder`` walks the class folders itself, follows every link and opens
whatever has an image's name. So a link loop (``ln -s .. cat/up``) counts the same images again
and again under the wrong labels (10 images became 410, spread over train, validation and
test), and a FIFO named ``x.png`` blocks ``open`` forever. Here ``list_image_folder`` reads each
folder's listing exactly once and returns a ``FolderListing``, and that listing is both the
memo key and the list of files read (by ``open_listed``): nothing walks the folder a second
time, so nothing can see a different tree from the one that was checked.

The rules, each refused with one line that names the entry (``workbench.data.roots``: only
under the data roots; elsewhere the line names the folder alone) and says what to change:

- a folder link that leads to itself, to a folder above it, or to a folder that is read anyway
  (by its device and inode, so bind mounts and ``..`` spellings count too);
- two names for one image (a symbolic or a hard link): its copies would land in different
  splits, and a test image would be one the model trained on;
- anything that is neither a folder nor a regular file (a FIFO, a socket, a device), whatever
  its name, and an image name that is a link to nothing;
- on a shared instance, a folder or file whose resolved path lies outside the data roots.

Classes are the sub-folders in name order and files are taken as torchvision takes them
(``sorted(os.walk(...))``, then names in order), so the splits of a folder are the ones that
torchvision's walk gave.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from workbench.data.roots import data_roots, inside_roots
from workbench.data.safe_files import one_line
from workbench.errors import ConfigError, DatasetUnavailableError
from workbench.lab.settings import LabSettings, current

__all__ = ["IMAGE_EXTENSIONS", "FolderListing", "ImageFile", "list_image_folder", "open_listed"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "path/class_name/image.png, one sub-folder per class"
_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class ImageFile(NamedTuple):
    """One image as listed: ``name`` under the folder (for messages), ``real`` its resolved
    path (what is opened), ``label`` its class index, and ``identity`` (device, inode, size,
    modification time), which both finds a changed file and makes the memo see an edit."""

    name: str
    real: str
    label: int
    identity: tuple[int, int, int, int]


@dataclass(frozen=True)
class FolderListing:
    """An image folder as it was listed and checked: ``files`` in loading order. Hashable, so
    that it is the memo key of the bundle loaded from it. ``named`` says whether messages may
    name its entries (the folder lies under the data roots)."""

    folder: str
    classes: tuple[str, ...]
    files: tuple[ImageFile, ...]
    named: bool


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _special(mode: int) -> str | None:
    """What a non-folder, non-regular file is ("a socket"), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _SPECIAL if test(mode)), "a special file")


class _Walk:
    """One listing in progress: the folders and images met so far, by device and inode."""

    def __init__(self, folder: Path, roots: list[Path] | None, named: bool):
        self.folder, self.roots, self.named = folder, roots, named
        top = os.stat(folder)
        self.top = (top.st_dev, top.st_ino)
        self.above = {(p.st_dev, p.st_ino) for p in map(os.stat, folder.parents)}
        self.dirs: dict[tuple[int, int], tuple[str, bool]] = {}  # -> (name, reached by a link)
        self.images: dict[tuple[int, int], str] = {}

    def refuse(self, named: str, unnamed: str) -> DatasetUnavailableError:
        """This folder's error: ``named`` where its entries may be named, else ``unnamed``."""
        return DatasetUnavailableError(
            f"image folder {self.folder}: {named if self.named else unnamed}"
        )

    def listing(self, real: str, name: str) -> list[os.DirEntry]:
        """The one read of the folder at ``real`` (``name`` under the image folder)."""
        try:
            with os.scandir(real) as entries:
                return sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            raise self.refuse(
                f"cannot list {name!r} ({one_line(exc)}); make it readable or remove it",
                "cannot list one of its folders; make it readable or remove it",
            ) from None

    def look(self, entry: os.DirEntry, here: str) -> tuple[os.stat_result | None, str, bool]:
        """``entry`` (in the folder at real path ``here``) followed: its status (None for a link
        to nothing), its resolved path and whether it is a link."""
        is_link = entry.is_symlink()
        real = os.path.realpath(entry.path) if is_link else os.path.join(here, entry.name)
        try:
            return os.stat(entry.path), real, is_link
        except OSError:  # a link to nothing, or gone since the listing
            return None, real, is_link

    def inside(self, real: str) -> None:
        """Refuse ``real`` outside the data roots (on an instance that has them), before
        anything else is said about it."""
        if self.roots is not None and not any(Path(real).is_relative_to(r) for r in self.roots):
            raise ConfigError(
                f"image folder {str(self.folder)!r} links to files outside this instance's data "
                f"roots ({', '.join(map(str, self.roots))}); copy the data under one of them"
            )

    def enter(self, name: str, st: os.stat_result, is_link: bool) -> None:
        """Record folder ``name``, refusing a way back up and a second way into a folder."""
        key = (st.st_dev, st.st_ino)
        if key == self.top or key in self.above:
            where = "the image folder" if key == self.top else "a folder above the image folder"
            raise self.loop(name, where)
        if key in self.dirs:
            first, first_is_link = self.dirs[key]
            if name.startswith(first + "/"):
                raise self.loop(name, repr(first))
            link, other = (name, first) if is_link or not first_is_link else (first, name)
            raise self.refuse(
                f"{link!r} is a link to {other!r}, whose images would be counted twice (under "
                "two labels, in two splits); remove the link",
                "a folder link leads to a folder that is read anyway; remove the link",
            )
        self.dirs[key] = (name, is_link)

    def loop(self, link: str, where: str) -> DatasetUnavailableError:
        return self.refuse(
            f"{link!r} is a link back to {where}, a loop that would read the same images again "
            "and again under other labels; remove the link",
            "a folder link leads back into it (a loop); remove the link",
        )

    def image(self, name: str, real: str, st: os.stat_result, label: int) -> ImageFile:
        """Record image ``name``, refusing a second name for a file met already."""
        first = self.images.setdefault((st.st_dev, st.st_ino), name)
        if first != name:
            raise self.refuse(
                f"{name!r} is the same file as {first!r} (a link), so one image would be in two "
                "places, perhaps in train and in test; remove one of them",
                "holds one image under two names (a link); remove one of them",
            )
        return ImageFile(name, real, label, _identity(st))

    def special(self, name: str, what: str) -> DatasetUnavailableError:
        return self.refuse(
            f"{name!r} is {what}, not a regular file; an image folder may hold only folders "
            "and image files: remove it",
            f"one of its files is {what}, not a regular file; remove it",
        )

    def classes(self) -> list[tuple[str, str]]:
        """The class folders, ``(name, resolved path)`` in name order, each recorded before any
        is walked, so that a link into one is caught at the link."""
        found = []
        for entry in self.listing(str(self.folder), "."):
            st, real, is_link = self.look(entry, str(self.folder))
            if st is None or stat.S_ISREG(st.st_mode):
                continue  # loose files and dead links beside the classes: ignored, as torchvision
            self.inside(real)
            if not stat.S_ISDIR(st.st_mode):
                raise self.special(entry.name, _special(st.st_mode) or "a special file")
            self.enter(entry.name, st, is_link)
            found.append((entry.name, real))
        return found

    def class_images(self, name: str, real: str, label: int) -> list[ImageFile]:
        """The images under class folder ``name``, in torchvision's order (folders by path, as
        ``sorted(os.walk(...))``, then files by name)."""
        per_folder: list[tuple[str, list[ImageFile]]] = []
        stack = [(name, real)]
        while stack:
            here, here_real = stack.pop()
            files: list[ImageFile] = []
            below = []
            for entry in self.listing(here_real, here):
                child = f"{here}/{entry.name}"
                st, child_real, is_link = self.look(entry, here_real)
                image = entry.name.lower().endswith(IMAGE_EXTENSIONS)
                if (st is None and not image) or (st and stat.S_ISREG(st.st_mode) and not image):
                    continue  # not an image: never opened
                self.inside(child_real)
                if st is None:
                    raise self.refuse(
                        f"{child!r} is a link to nothing; remove it or restore its target",
                        "one of its images is a link to nothing; remove it",
                    )
                if stat.S_ISDIR(st.st_mode):
                    self.enter(child, st, is_link)
                    below.append((child, child_real))
                elif what := _special(st.st_mode):
                    raise self.special(child, what)
                else:
                    files.append(self.image(child, child_real, st, label))
            per_folder.append((here, files))
            stack.extend(reversed(below))
        return [file for _, files in sorted(per_folder, key=lambda p: p[0]) for file in files]


def list_image_folder(
    path: Path, settings: LabSettings | None = None, home: Path | None = None
) -> FolderListing:
    """The images of the allowed folder ``path`` (resolved, from ``check_data_path``), listed
    and checked once; a one-line ``DatasetUnavailableError`` (or ``ConfigError``, for a link
    out of the data roots) for any rule of this module broken. Opens no file."""
    settings = settings or current()
    roots = None if settings.allows_any_data_path() else data_roots(settings, home)
    try:
        if not path.is_dir():
            raise FileNotFoundError(path)
        walk = _Walk(path, roots, inside_roots(path, settings, home))
    except OSError:  # missing, or gone since check_data_path resolved it
        raise DatasetUnavailableError(
            f"image folder {path} does not exist; expected {LAYOUT}"
        ) from None
    classes = walk.classes()
    files: list[ImageFile] = []
    for label, (name, real) in enumerate(classes):
        found = walk.class_images(name, real, label)
        if not found:
            why = f" ({name!r} has none)" if walk.named else ""
            raise DatasetUnavailableError(
                f"image folder {path} has no images in class folders{why}; expected {LAYOUT}"
            )
        files += found
    if not classes:
        raise DatasetUnavailableError(
            f"image folder {path} has no images in class folders; expected {LAYOUT}"
        )
    return FolderListing(str(path), tuple(n for n, _ in classes), tuple(files), walk.named)


def open_listed(listing: FolderListing, file: ImageFile) -> BinaryIO:
    """``file`` of ``listing`` opened for reading, once it is the very file that was listed: a
    regular file of the same device and inode. Opened without blocking and without following a
    link, so a file swapped since the listing (for a FIFO, a link, another file) is refused and
    never read. Raises ``OSError`` when the file cannot be read."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(file.real, flags)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise _changed(listing, file, one_line(exc)) from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:  # ELOOP: the file is a link now
            raise
        raise _changed(listing, file, "it is a link now") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != file.identity[:2]:
        os.close(fd)
        now = _special(st.st_mode)
        raise _changed(listing, file, f"it is {now} now" if now else "it is another file now")
    return os.fdopen(fd, "rb")


def _changed(listing: FolderListing, file: ImageFile, why: str) -> DatasetUnavailableError:
    what = f"{file.name!r} ({why})" if listing.named else "one of its images"
    return DatasetUnavailableError(
        f"image folder {listing.folder}: {what} changed since it was listed; load it again once "
        "the folder stops changing"
    )
