"""Walk folders and files into what can be indexed: images and text documents.

`scan(paths)` yields a `FileEntry` for every image (jpg, jpeg, png, webp, bmp, gif, tif, tiff)
and text document (txt, md) under the given paths, and a `Skip` with a reason for every file it
had to leave out (broken symlink, symlink loop, permission denied, vanished during the walk).
Files of other types are passed over silently; so are hidden files and folders (unless
`include_hidden`) and whatever an `--exclude` glob matches: it is tried against the path relative
to its root (`sub/x.jpg`, also as `/sub/x.jpg`, so `*/thumbs/*` covers a top-level `thumbs/`)
and against the bare name. `*` also crosses `/`.

Paths: each root is resolved (`realpath`), and entries are the root joined with their path
relative to it. Symlinks below a root are followed but not resolved, so every entry lies under
its root: a symlinked file is indexed like a copy (it reuses the target's vector), and removing
the link removes its row. Symlinked folders are walked once per ancestry; one that leads back
to a folder being walked is a loop and is skipped. Order: roots as given, then by name, depth first.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Literal

from retrv.errors import ScanError
from retrv.items import IMAGE_SUFFIXES

TEXT_SUFFIXES = frozenset({".txt", ".md"})

# Skip reasons: short and fixed, so that a report can count them; the details go in `Skip.detail`.
BROKEN_SYMLINK = "broken symlink"
SYMLINK_LOOP = "symlink loop"
PERMISSION_DENIED = "permission denied"
VANISHED = "vanished while indexing"
NOT_REGULAR = "not a regular file"
UNSUPPORTED_TYPE = "unsupported file type"
UNREADABLE = "unreadable"
EMPTY_FILE = "empty file"
NOT_UTF8 = "not UTF-8 text"
NAME_NOT_UTF8 = "file name is not UTF-8"
NOT_AN_IMAGE = "not an image"
CORRUPT_IMAGE = "corrupt or truncated image"
IMAGE_TOO_LARGE = "image too large"
ENCODER_NO_IMAGES = "the encoder cannot embed images"
ENCODER_NO_TEXT = "the encoder cannot embed text"

Kind = Literal["image", "text"]


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute, under its (resolved) root
    kind: Kind
    mtime: float
    size: int


@dataclass(frozen=True)
class Skip:
    path: str
    reason: str  # one of the constants above
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class SkipFile(Exception):
    """Raised by readers (documents, images) when a file cannot be indexed; becomes a `Skip`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail

    def since_indexed(self) -> str:
        """Why a file an index holds cannot be read now (for a preview or a thumbnail, not a build)."""
        return "the file is gone (moved or deleted since it was indexed)" if self.reason == VANISHED else str(self)


def kind_of(name: str) -> Kind | None:
    suffix = os.path.splitext(name)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in TEXT_SUFFIXES:
        return "text"
    return None


def is_utf8(path: str) -> bool:
    """False for a path with bytes that are not UTF-8 (Python gives them as surrogate escapes): the index
    stores UTF-8 text, so such a file is skipped and counted, with its name shown escaped."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve_roots(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Absolute, resolved roots; raises `ScanError` for a path that does not exist at all.

    A dangling symlink given as a path is kept (the scan reports it as a broken symlink).
    """
    roots: list[str] = []
    for p in paths:
        text = os.fspath(p)
        if os.path.islink(text):
            try:
                os.stat(text)
            except OSError:  # broken or looping: keep the link itself so the scan can say so
                roots.append(os.path.abspath(text))
                continue
        elif not os.path.exists(text):
            raise ScanError(f"no such file or folder: {text}")
        root = os.path.realpath(text)
        if root not in roots:
            roots.append(root)
    return roots


def is_under(path: str, root: str) -> bool:
    """True when `path` is `root` or lies below it (plain string test on absolute paths)."""
    if path == root:
        return True
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix)


def scan(
    paths: Iterable[str | os.PathLike[str]],
    *,
    excludes: Iterable[str] = (),
    include_hidden: bool = False,
) -> Iterator[FileEntry | Skip]:
    """Yield a `FileEntry` or `Skip` for every candidate file under `paths` (see the module doc)."""
    patterns = tuple(p.rstrip("/") for p in excludes if p.rstrip("/"))
    seen: set[str] = set()
    for root in resolve_roots(paths):
        try:
            st = os.stat(root)
        except OSError as e:
            yield _stat_failure(root, e)
            continue
        if stat.S_ISDIR(st.st_mode):
            walk = _walk(root, patterns, include_hidden, (st.st_dev, st.st_ino))
        else:  # a file named on the command line is taken as it is: no hidden or exclude test
            walk = iter([_file_entry(root, st, explicit=True)])
        for found in walk:
            if found is None or found.path in seen:
                continue
            seen.add(found.path)
            yield found


def _walk(
    root: str, patterns: tuple[str, ...], include_hidden: bool, root_key: tuple[int, int]
) -> Iterator[FileEntry | Skip | None]:
    """Depth first, by name, without recursion (a tree may be deeper than Python's recursion limit)."""
    # Each frame: (folder, the (device, inode) of it and its ancestors, the names left to visit, reversed).
    stack: list[tuple[str, tuple[tuple[int, int], ...], list[str]]] = []
    listed = _listing(root)
    if isinstance(listed, Skip):
        yield listed
        return
    stack.append((root, (root_key,), listed))
    while stack:
        folder, ancestors, names = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop()
        if not include_hidden and name.startswith("."):
            continue
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        if any(fnmatch(rel, p) or fnmatch("/" + rel, p) or fnmatch(name, p) for p in patterns):
            continue
        try:
            st = os.stat(path)  # follows symlinks
        except OSError as e:
            if isinstance(e, FileNotFoundError) and not os.path.lexists(path) and kind_of(name) is None:
                continue  # something we would not have indexed anyway vanished
            yield _stat_failure(path, e)
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                yield Skip(path, SYMLINK_LOOP, f"leads back to {os.path.realpath(path)}")
                continue
            listed = _listing(path)
            if isinstance(listed, Skip):
                yield listed
            else:
                stack.append((path, (*ancestors, key), listed))
        elif kind_of(name) is not None:
            yield _file_entry(path, st)


def _listing(folder: str) -> list[str] | Skip:
    """The names in `folder`, in reverse order (the walk pops them), or why it cannot be listed."""
    try:
        with os.scandir(folder) as it:
            return sorted((entry.name for entry in it), reverse=True)
    except OSError as e:
        return _stat_failure(folder, e)


def _file_entry(path: str, st: os.stat_result, explicit: bool = False) -> FileEntry | Skip | None:
    kind = kind_of(path)
    if kind is not None and not is_utf8(path):
        return Skip(path, NAME_NOT_UTF8, "rename it to a UTF-8 name to index it")
    if kind is None:
        return Skip(path, UNSUPPORTED_TYPE, "expected an image or a .txt/.md document") if explicit else None
    if not stat.S_ISREG(st.st_mode):  # a fifo named x.jpg would block the reader forever
        return Skip(path, NOT_REGULAR)
    if not os.access(path, os.R_OK):
        return Skip(path, PERMISSION_DENIED)
    return FileEntry(path, kind, st.st_mtime, st.st_size)


def _stat_failure(path: str, e: OSError) -> Skip:
    if e.errno == errno.ELOOP:
        return Skip(path, SYMLINK_LOOP)
    if isinstance(e, FileNotFoundError):
        return Skip(path, BROKEN_SYMLINK if os.path.islink(path) else VANISHED)
    if isinstance(e, PermissionError):
        return Skip(path, PERMISSION_DENIED)
    return Skip(path, UNREADABLE, e.strerror or str(e))
