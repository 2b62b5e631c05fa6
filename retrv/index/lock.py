"""One writer at a time per index: an advisory lock file in the index root.

Every command that writes an index (creating it, building, compressing, repairing) holds the lock for the whole
write; readers never take it (Lance versions keep them consistent). A second writer waits for the first and
says so, so two first builds of one new index serialise: the second finds the index the first created and
adds its own files to it, instead of creating a table over it.

An index on object storage has no lock: object stores have no advisory locks, and a lock object would outlive
a writer that died. What keeps it consistent there is Lance's conditional commit: every version is committed
only if no other writer committed that version first (then Lance retries the commit, or fails it as a conflict,
which is a one-line error; run the build again), and of two processes creating the same index the second is
refused (`Store.create`). Two builds of one remote index at once are not serialised: run one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "write.lock"


@contextmanager
def write_lock(root: Path | str, *, notify: Callable[[str], None] | None = None, wait: bool = True) -> Iterator[None]:
    """Hold the index's write lock (creating `root` if needed), waiting for another writer to finish, or with
    `wait=False` raising IndexBusyError at once (for what must not run beside a build: rm, compact); nothing
    for an index on object storage (a URI; see the module doc)."""
    if isinstance(root, str):
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; writers are not serialised
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "another process"
            if not wait:
                from retrv.errors import IndexBusyError

                busy = f"{root} is being written by a running retrv (pid {holder}); try again when it ends"
                raise IndexBusyError(busy) from None
            if notify is not None:
                notify(f"waiting for another retrv writing {root} (pid {holder}) to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
