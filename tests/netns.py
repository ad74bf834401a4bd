"""Other hosts and other Unix accounts on one machine, for the team tests.

`Netns`: a network namespace joined to this one by a veth pair, addresses from 198.18.0.0/15
only (the benchmarking range: never a private or public network), the stack's side
198.18.N.1/24 here, the member's 198.18.N.2/24 there; whatever runs through `Netns.run`
reaches this machine only over that link. `UnixAccount`: a temporary group and a user in it
(random names), whose processes run through setpriv. `PrivateSshd`: Debian's sshd on the
stack's address with a configuration of its own (one account, one key). Each is a context
manager that removes what it made on every way out: links, namespaces, processes (by PID),
users, groups.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def why_not_available() -> str | None:
    """Why these helpers cannot run here (not root, no `ip netns`, no sshd), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, a second Unix account)"
    if shutil.which("ip") is None or shutil.which("setpriv") is None:
        return "needs iproute2's `ip` and util-linux's `setpriv`"
    probe = f"bfprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    if not Path(SSHD).exists():
        return "needs Debian's openssh-server (/usr/sbin/sshd) for the ssh remotes"
    return None


def _used_subnets() -> set[int]:
    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    used = set()
    for word in out.split():
        if word.startswith("198.18."):
            used.add(int(word.split(".")[2]))
    return used


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return pids


def _blocked_ancestor(path: Path) -> tuple[Path, Path] | None:
    """(the first folder on the way to `path` that others cannot enter, its child on the way),
    or None when others reach `path`."""
    parts = path.parts
    for depth in range(1, len(parts) - 1):
        folder = Path(*parts[: depth + 1])
        if not folder.stat().st_mode & stat.S_IXOTH:
            return folder, Path(*parts[: depth + 2])
    return None


def expose_interpreter(stash: Path) -> list[str]:
    """A command prefix that lets another account run this Python, where it sits in a folder
    others cannot enter (pyenv under /root): in a mount namespace of its own, that folder is
    replaced by an empty 0755 one holding only the interpreter's subtree. What a member's own
    install is on their own machine; nothing changes outside that namespace."""
    found = _blocked_ancestor(Path(os.path.realpath(sys.executable)))
    if found is None:
        return []
    blocked, keep = found
    stash.mkdir(mode=0o700, exist_ok=True)
    q = shlex.quote
    script = (
        f"set -e; mount --bind {q(str(keep))} {q(str(stash))}; "
        f"mount -t tmpfs -o mode=0755 baldflow-test {q(str(blocked))}; "
        f"mkdir -p {q(str(keep))}; mount --bind {q(str(stash))} {q(str(keep))}; "
        'exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh"]


class Netns:
    """A namespace `name` with `member_address` on its end of a veth pair whose other end,
    here, has `stack_address`. `run(...)` starts a command in it."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"bfns{tag}"
        self.host_link = f"bfh{tag}"
        self.ns_link = f"bfm{tag}"
        self.subnet: int | None = None
        self._made: list[str] = []

    @property
    def stack_address(self) -> str:
        return f"198.18.{self.subnet}.1"

    @property
    def member_address(self) -> str:
        return f"198.18.{self.subnet}.2"

    def __enter__(self) -> Netns:
        try:
            free = sorted(set(range(1, 255)) - _used_subnets())
            self.subnet = free[secrets.randbelow(len(free))]
            _ip("netns", "add", self.name)
            self._made.append("netns")
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link,
                "netns", self.name)  # fmt: skip
            self._made.append("link")
            _ip("addr", "add", f"{self.stack_address}/24", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            _ip("-n", self.name, "addr", "add", f"{self.member_address}/24", "dev", self.ns_link)
            _ip("-n", self.name, "link", "set", self.ns_link, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        # Deleting the namespace takes its end of the pair, and with it this one; deleted
        # explicitly too, in case a process still holds the namespace open.
        if "link" in self._made:
            subprocess.run(["ip", "link", "delete", self.host_link], capture_output=True)
        if "netns" in self._made:
            for pid in self.pids():
                _kill_pids([pid])
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
        self._made.clear()

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


class UnixAccount:
    """A group `group` and a user `name` in it, home in `home` (under `base`, which must be
    reachable by others). `command(argv)` runs argv as that user (setpriv)."""

    def __init__(self, base: Path) -> None:
        tag = secrets.token_hex(3)
        self.group = f"bfteam{tag}"
        self.name = f"bfuser{tag}"
        self.home = base / f"home-{tag}"
        self.uid: int | None = None
        self.gid: int | None = None
        self._made: list[str] = []

    def __enter__(self) -> UnixAccount:
        try:
            subprocess.run(["groupadd", self.group], check=True, capture_output=True)
            self._made.append("group")
            subprocess.run(
                ["useradd", "-M", "-d", str(self.home), "-g", self.group, "-s", "/bin/sh",
                 self.name],
                check=True, capture_output=True,
            )  # fmt: skip
            self._made.append("user")
            # "*": no password, yet not locked (sshd without PAM refuses locked accounts).
            subprocess.run(["usermod", "-p", "*", self.name], check=True, capture_output=True)
            entry = pwd.getpwnam(self.name)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
            self.home.mkdir(mode=0o700)
            os.chown(self.home, self.uid, self.gid)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.uid is not None:
            for _ in range(3):  # whatever the account still runs (an ssh session ending)
                pids = pids_of_uid(self.uid)
                if not pids:
                    break
                _kill_pids(pids)
                time.sleep(0.2)
        if "user" in self._made:
            subprocess.run(["userdel", self.name], capture_output=True)
        if "group" in self._made:
            subprocess.run(["groupdel", self.group], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)
        self._made.clear()

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "--", *argv]  # fmt: skip

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A login's environment, nothing of this process's (no proxy, no Prefect home)."""
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
        }
        env.update(extra or {})
        return env

    def write(self, relative: str, text: str, mode: int = 0o600) -> Path:
        """A file of the account's own in its home."""
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        for part in [*reversed(path.relative_to(self.home).parents)][1:]:
            os.chown(self.home / part, self.uid, self.gid)
        path.write_text(text)
        os.chmod(path, mode)
        os.chown(path, self.uid, self.gid)
        return path


class PrivateSshd:
    """sshd on `address`:`port` for `account` only, with the key pair it makes (the account's
    ~/.ssh/id_ed25519, the host key in its known_hosts). `session_env`: variables every
    session gets, e.g. the server side's GIT_CONFIG_GLOBAL."""

    def __init__(self, base: Path, address: str, account: UnixAccount,
                 session_env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.dir = base / f"sshd-{secrets.token_hex(3)}"
        self.address = address
        self.account = account
        self.session_env = dict(session_env or {})
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._made_run_dir = False

    def _keygen(self, path: Path) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True, capture_output=True)  # fmt: skip

    def __enter__(self) -> PrivateSshd:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.dir.mkdir(mode=0o700)
        host_key = self.dir / "host_ed25519"
        self._keygen(host_key)
        client_key = self.dir / "client_ed25519"
        self._keygen(client_key)
        keys = self.dir / "authorized_keys"
        keys.write_text(Path(f"{client_key}.pub").read_text())
        os.chmod(keys, 0o644)
        os.chmod(self.dir, 0o711)
        with socket.socket() as sock:
            sock.bind((self.address, 0))
            self.port = sock.getsockname()[1]
        env_line = " ".join(f"{k}={v}" for k, v in self.session_env.items())
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {self.address}\nHostKey {host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {keys}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            f"AllowUsers {self.account.name}\nSubsystem sftp internal-sftp\n"
            + (f"SetEnv {env_line}\n" if env_line else "")
        )
        # Debian's sshd wants its privilege separation directory.
        run_dir = Path("/run/sshd")
        if not run_dir.exists():
            run_dir.mkdir(mode=0o755)
            self._made_run_dir = True
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL, stderr=(self.dir / "sshd.log").open("w"),
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock, contextlib.suppress(OSError):
                sock.connect((self.address, self.port))
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(self.dir / 'sshd.log').read_text()}")
            time.sleep(0.05)
        # The account's side: its key, and this host's key as known (no trust on first use).
        account = self.account
        account.write(".ssh/id_ed25519", client_key.read_text())
        account.write(".ssh/id_ed25519.pub", Path(f"{client_key}.pub").read_text(), 0o644)
        host_pub = Path(f"{host_key}.pub").read_text().split()
        account.write(".ssh/known_hosts",
                      f"[{self.address}]:{self.port} {host_pub[0]} {host_pub[1]}\n", 0o644)

    def url(self, path: str | Path) -> str:
        return f"ssh://{self.account.name}@{self.address}:{self.port}{path}"

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._made_run_dir:
            shutil.rmtree("/run/sshd", ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
