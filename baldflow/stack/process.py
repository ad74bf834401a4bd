"""A child process baldflow owns: started in its own session, stopped by PID on every way out.

Its own session (and so its own process group) keeps the terminal's Ctrl-C, which goes to the
whole foreground process group, away from it: only its owner decides when it stops, so a
server cannot die under a run that is still cleaning up. Every way out of the owner stops it:
`stop()` where the owner is done with it, an atexit hook for normal exits, exceptions, Ctrl-C
and closed pipes, `kill_all_now()` for a forced exit, and on Linux the kernel's parent-death
signal (see baldflow.stack._launch) when the owner is SIGKILLed.

A `detached=True` process is the exception, for servers that must outlive the command that
started them (`baldflow stack up`): none of those hooks, so it lives until someone stops it by
its recorded PID (`stop_recorded_group`), from this process or any other.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

# RLock: a signal handler that stops everything runs on the main thread, which may be inside
# stop() already when the signal arrives.
_lock = threading.RLock()
_live: list[ManagedProcess] = []
_atexit_registered = False
# Every managed process gets a random token in its environment, which its children inherit
# (uvicorn's workers, multiprocessing's helpers): a process whose /proc/PID/environ carries a
# recorded token is one of that server's, whatever became of the PIDs around it.
PROCESS_TOKEN_ENV = "BALDFLOW_PROCESS_TOKEN"


class ProcessStartError(RuntimeError):
    """A managed process could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the caller retries if it is taken meanwhile)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _register(process: ManagedProcess) -> None:
    global _atexit_registered
    with _lock:
        _live.append(process)
        if not _atexit_registered:
            # Registered before the owner imports prefect, so it runs after Prefect's own exit
            # hooks (atexit is last in, first out) and after its log and event queues drained
            # (those drain at thread shutdown, before atexit): a server stopped earlier would
            # make them retry a dead address for minutes.
            atexit.register(stop_all)
            _atexit_registered = True


def _unregister(process: ManagedProcess) -> None:
    with _lock:
        if process in _live:
            _live.remove(process)


def live_processes() -> list[ManagedProcess]:
    with _lock:
        return list(_live)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_process_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a child started with `start_new_session=True` and everything in its group: SIGTERM,
    then SIGKILL for whatever is left (children of the leader too, even if it is gone)."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def _exit_info(pid: int) -> os.waitid_result | None | bool:
    """The child's exit as waitid reports it, without reaping it: while it is a zombie its
    PID, and so its process group id, cannot be reused, so signalling the group cannot hit a
    stranger (nor later, while any member of the group lives: the kernel keeps a group's id
    taken). None while it runs; True when it was reaped already."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True


def _exited(pid: int) -> bool:
    return _exit_info(pid) is not None


class ManagedProcess:
    """One command run as a child in its own session; `stop()` ends it and its whole group.

    Output is appended to `log_path`; without one it goes where the owner's goes.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log_path: str | Path | None = None,
        detached: bool = False,
    ):
        self.name = name
        self.detached = detached
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen | None = None
        # Set once its owner asks it to stop: an exit after that is no surprise.
        self.stopping = False
        self.token = uuid.uuid4().hex

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> ManagedProcess:
        if self.process is not None:
            raise ProcessStartError(f"{self.name} was started already (pid {self.pid})")
        argv = self.argv
        if sys.platform.startswith("linux") and not self.detached:
            argv = [sys.executable, "-m", "baldflow.stack._launch", str(os.getpid()), "--", *argv]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_path.open("ab")
        else:
            out = None
        env = dict(self.env if self.env is not None else os.environ)
        env[PROCESS_TOKEN_ENV] = self.token
        try:
            self.process = subprocess.Popen(
                argv,
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProcessStartError(f"could not start {self.name}: {exc}") from exc
        finally:
            if out is not None:
                out.close()  # the child has its own copy
        if not self.detached:
            _register(self)
        return self

    def running(self) -> bool:
        return self.process is not None and not _exited(self.process.pid)

    def returncode(self) -> int | None:
        """Its exit status once it has exited, as Popen gives it (-N: killed by signal N)."""
        if self.process is None:
            return None
        if self.process.returncode is not None:
            return self.process.returncode
        info = _exit_info(self.process.pid)
        if not isinstance(info, os.waitid_result):
            return None
        if info.si_code == os.CLD_EXITED:
            return info.si_status
        return -info.si_status

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM to its process group, up to `timeout` s to exit, then SIGKILL; its status."""
        self.stopping = True
        with _lock:
            proc = self.process
            if proc is None:
                return None
            try:
                if not _exited(proc.pid):
                    _signal_group(proc.pid, signal.SIGTERM)
                    deadline = time.monotonic() + timeout
                    while not _exited(proc.pid) and time.monotonic() < deadline:
                        time.sleep(0.05)
                # Whatever is left of the group (the leader, or children it started) goes now.
                _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            finally:
                _unregister(self)
            return proc.returncode

    def kill_now(self) -> None:
        """SIGKILL to its group without waiting for anything: for an exit that cannot wait."""
        self.stopping = True
        proc = self.process
        if proc is not None and proc.returncode is None:
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                proc.wait(timeout=1)
        _unregister(self)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def stop_all(timeout: float = 5.0) -> None:
    """Stop every process still running that this process started (newest first)."""
    for process in reversed(live_processes()):
        with contextlib.suppress(Exception):  # one failure must not keep the others running
            process.stop(timeout)


def kill_all_now() -> None:
    """SIGKILL every managed process group: the forced exit, when there is no time to wait.

    Takes no lock: the main thread may hold it, stuck in a stop() that is why we force.
    """
    for process in reversed(list(_live)):
        with contextlib.suppress(Exception):
            process.kill_now()


# Stopping a process that another process started: all we have is its PID, recorded when it
# started. PIDs are reused, so the PID alone could name a stranger by now: the process is only
# signalled while its start time (and command line) still match what was recorded.


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with
    the PID, an identity that PID reuse cannot fake. None when no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces or parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":
        return None  # a zombie has exited: nothing left to stop but its reaping
    return int(fields[19])


def command_line(pid: int) -> str:
    """The process's argv joined by spaces ("" when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def is_recorded_process(pid: int, ticks: int | None, expect: str = "") -> bool:
    """Whether `pid` is still the process recorded with start time `ticks` whose command line
    contains `expect`."""
    now = start_ticks(pid)
    if now is None or (ticks is not None and now != ticks):
        return False
    seen = command_line(pid)
    if not seen and start_ticks(pid) == now:
        # /proc/PID/cmdline can read empty for a moment while the kernel cannot lock the
        # process's memory (a busy machine): look once more before calling it a stranger.
        time.sleep(0.05)
        seen = command_line(pid)
    return expect in seen


def _reap(pid: int) -> None:
    # Our own child (the owner stops what it started in the same process): collect its status,
    # else it stays a zombie. Anyone else's child is reaped by its parent or init.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_recorded_group(
    pid: int,
    ticks: int | None,
    expect: str = "",
    timeout: float = 10.0,
    token: str | None = None,
) -> bool:
    """Stop the session leader `pid` (started with its own session, so its group id is its
    PID) and its whole group: SIGTERM, up to `timeout` s, then SIGKILL for what is left.

    Nothing is signalled when `pid` now names another process (start time or command line
    differ): the PID was reused. When the leader is gone already, its leftover group members
    (orphaned workers, checked one by one: see `group_members`) are stopped.
    Returns whether the recorded process was still running.
    """
    if not is_recorded_process(pid, ticks, expect):
        if start_ticks(pid) is None:
            _reap(pid)
            stop_group_members(pid, ticks, token, timeout=timeout)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if start_ticks(pid) != ticks:
            break
        time.sleep(0.05)
    # Re-checked right before: a PID that died and came back as someone else is left alone.
    if start_ticks(pid) in (None, ticks):
        _signal_group(pid, signal.SIGKILL)
    _reap(pid)
    return True


# Orphans: a server's leader killed on its own (SIGKILL, the OOM killer) leaves its children
# running in its process group, and uvicorn's master with its workers keeps serving the port.
# They are found by their group and session ids (both the leader's PID), their start time (not
# before the leader's) and, where recorded, the token their environment inherited.


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, process group, session, start ticks) from /proc/PID/stat; None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def _has_token(pid: int, token: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False  # another user's process: not provably ours, so never signalled
    return f"{PROCESS_TOKEN_ENV}={token}".encode() in environ.split(b"\0")


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def group_members(pgid: int, ticks: int | None, token: str | None = None) -> list[int]:
    """The live processes of the recorded server whose session leader was `pgid`, started at
    `ticks`: its group and session, started no earlier than the leader, carrying `token` in
    their environment when one was recorded. Empty when `pgid` leads a new process now (the
    PID was reused: the kernel frees a group id only once no member is left)."""
    leader = _stat(pgid)
    if leader is not None and leader[0] != "Z" and ticks is not None and leader[3] != ticks:
        return []
    members = []
    for pid in _pids():
        found = _stat(pid)
        if found is None:
            continue
        state, group, session, started = found
        if state == "Z" or group != pgid or session != pgid:
            continue
        if ticks is not None and started < ticks:
            continue
        if token is not None and not _has_token(pid, token):
            continue
        members.append(pid)
    return sorted(members)


def stop_group_members(
    pgid: int, ticks: int | None, token: str | None = None, timeout: float = 10.0
) -> list[int]:
    """SIGTERM to each member of the recorded group (`group_members`), up to `timeout` s, then
    SIGKILL to the members still there, checked again; returns the PIDs that were members."""
    members = group_members(pgid, ticks, token)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while group_members(pgid, ticks, token) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in group_members(pgid, ticks, token):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while group_members(pgid, ticks, token) and time.monotonic() < deadline:
        time.sleep(0.05)
    return members


# Who holds a port: the kernel lists listening sockets with their inode in /proc/net/tcp(6),
# and each process's open sockets appear in /proc/PID/fd as links to "socket:[INODE]".

_LISTEN = "0A"


def listening_inodes(port: int) -> set[int]:
    """The inodes of TCP sockets listening on `port` (any address, IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] != "0":
                inodes.add(int(fields[9]))
    return inodes


def port_holders(port: int) -> tuple[bool, list[int]]:
    """(whether anything listens on `port`, the PIDs holding such a socket that this user can
    see): a listener with no PID seen belongs to another user's process."""
    inodes = listening_inodes(port)
    if not inodes:
        return False, []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for pid in _pids():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in wanted:
                    holders.append(pid)
                    break
            except OSError:
                continue
    return True, sorted(holders)
