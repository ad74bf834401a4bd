"""One writer per workspace: an advisory file lock that a second run fails on at once.

flock locks belong to the open file, so the kernel drops them when the holder dies (SIGKILL
included): a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from baldflow.common import utc_now

LOCK_NAME = ".baldflow.lock"


class WorkspaceLockedError(RuntimeError):
    """Another process is writing to this workspace."""


# flock is per open file description: a second open + flock from this same process would
# conflict with the first. Count nested holders per path so the CLI and the flow it starts
# can both hold the lock.
_held: dict[str, tuple[int, int]] = {}
_guard = threading.Lock()


def _describe_holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    return text or "another process"


@contextlib.contextmanager
def workspace_lock(workspace: str | Path) -> Iterator[Path]:
    """Hold the workspace's write lock for the duration of the block, or fail at once."""
    path = Path(workspace).resolve() / LOCK_NAME
    key = str(path)
    with _guard:
        if key in _held:
            fd, count = _held[key]
            _held[key] = (fd, count + 1)
            nested = True
        else:
            nested = False
    if not nested:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkspaceLockedError(
                f"workspace {path.parent} is in use by {_describe_holder(path)}; "
                "wait for that run to finish (only one run may write to a workspace at a time)"
            ) from None
        since = utc_now()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        with _guard:
            _held[key] = (fd, 1)
    try:
        yield path
    finally:
        with _guard:
            fd, count = _held[key]
            if count > 1:
                _held[key] = (fd, count - 1)
            else:
                del _held[key]
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
