"""One DTMS per database: an exclusive lock next to the database file, held for the process's
life and taken before anything opens the database (:class:`StoreLock`)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("dtms.actors.store")


class StoreInUse(RuntimeError):
    """Another process holds the database's lock."""


class StoreLock:
    """An exclusive lock on the database, held by one DTMS process for its whole life.

    The lock file ``<db>.lock`` sits next to the database and holds the holder's pid (to name
    it); the lock itself is the operating system's (``fcntl.flock`` on POSIX, ``msvcrt.locking``
    on Windows), so it dies with the process: a SIGKILL never leaves a stale lock, and a pid
    left in the file means nothing by itself. Platforms with neither lock run unlocked (logged).

    Usage::

        with StoreLock("data/dtms.sqlite3"):   # StoreInUse if another DTMS has it
            ...
    """

    # Windows locks byte ranges, and a locked range cannot be read by others: the lock is on a
    # byte far past the pid, so a second instance can still read who holds it
    _WINDOWS_LOCK_OFFSET = 1 << 20

    def __init__(self, db_path: str | Path) -> None:
        self.path = Path(f"{db_path}.lock")
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _lock_fd(fd, self._WINDOWS_LOCK_OFFSET)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            holder = _read_pid(fd)
            os.close(fd)
            db = str(self.path)[: -len(".lock")]
            raise StoreInUse(f"the database {db} is in use by another DTMS (pid {holder}; "
                             f"lock file {self.path}); stop that one first, or give this one "
                             f"its own store.path")
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        # the file stays (removing it would race with a process about to lock it); closing the
        # descriptor releases the lock on every platform
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _lock_fd(fd: int, windows_offset: int) -> bool:
    """Take an exclusive, non-blocking lock on ``fd``; False if another process holds it."""
    if sys.platform == "win32":
        import msvcrt
        os.lseek(fd, windows_offset, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        import fcntl
    except ImportError:  # neither lock on this platform: run, but say so
        log.warning("no file locking on this platform: nothing stops a second DTMS from "
                    "opening the same database")
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_pid(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


__all__ = ["StoreInUse", "StoreLock"]
