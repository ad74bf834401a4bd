"""A Label Studio server for a workspace: its own virtual environment, bound to 127.0.0.1,
started and stopped by PID.

Why its own environment: Label Studio 1.23.2 pins python-json-logger, redis and pytz versions
that conflict with Prefect's; it runs as a separate server (`label-studio start`) and baldflow
talks HTTP to it (baldflow.labeling.label_studio). `ensure_venv()` builds the environment once
per machine under ~/.cache/baldflow/label-studio-venv ($BALDFLOW_LABEL_STUDIO_VENV): about 1.5
minutes from the package index here (40 s with pip's cache warm), ~1 GB on disk.

Everything of one server lives in one folder (by default <workspace>/label-studio, git-ignored):
    data/              Label Studio's database and uploads (LABEL_STUDIO_BASE_DATA_DIR)
    files/             the local-files document root: the batches' pictures
    credentials.json   admin login (an email), password and API token (0600; never in git)
    state.json         PID, start time and port of a server started by `up`
    label-studio.log   its output

It starts with a clean environment: Label Studio reads bare HOST, PORT, USERNAME and PASSWORD
variables as fallbacks, and reaches for the internet (Sentry, version checks, analytics)
unless told not to. The admin account and its legacy API token are created from the
environment on the first start only (an empty data dir). Measured here (2 cores, busy): the
first start (database migrations) 37 s, a restart 4 s; one process (no helper processes, one
listening socket, on 127.0.0.1), 270 MB resident after a restart, ~350 MB once it has served.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

from baldflow.stack import venvs
from baldflow.stack.loopback import http_ok, port_is_free, wait_until_answers
from baldflow.stack.mlflow_server import write_private_text
from baldflow.stack.process import (
    ManagedProcess,
    ProcessStartError,
    free_port,
    is_recorded_process,
    start_ticks,
    stop_recorded_group,
)

HOST = "127.0.0.1"
LABEL_STUDIO_REQUIREMENTS: tuple[str, ...] = ("label-studio==1.23.2",)
VENV_ENV = "BALDFLOW_LABEL_STUDIO_VENV"
ADMIN = "admin@baldflow.local"
LOG_NAME = "label-studio.log"
# What a running server's command line contains (a recorded PID must still be one of ours).
COMMAND_MARK = "label-studio start"
# The folder of a workspace's own server, in the workspace (`baldflow label-studio up`'s default).
LOCAL_SERVER_DIR = "label-studio"


class LabelStudioError(ProcessStartError):
    """The Label Studio server could not be built, started, found or reached."""


class NoLabelStudioServerError(LabelStudioError, LookupError):
    """No server of ours runs for the folder. A LookupError as well: that is what
    baldflow.labeling.label_studio.connect, which is handed workspace_connection and never
    imports this module, turns into its own error."""


def default_venv() -> Path:
    chosen = os.environ.get(VENV_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return venvs.cache_dir() / "label-studio-venv"


def ensure_venv(venv: str | Path | None = None) -> Path:
    venv = Path(venv) if venv is not None else default_venv()
    return venvs.ensure_venv(
        venv, LABEL_STUDIO_REQUIREMENTS, what="Label Studio", variable=VENV_ENV,
        error=LabelStudioError,
    )  # fmt: skip


def credentials(home: Path) -> dict[str, str]:
    """The admin login, password and API token of the server in `home` (made on first use)."""
    path = home / "credentials.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    made = {
        "username": ADMIN,
        "password": secrets.token_urlsafe(24),
        "token": secrets.token_hex(20),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_text(path, json.dumps(made, indent=1))
    return made


class LabelStudioServer:
    """`label-studio start` for the folder `home` (see the module docstring)."""

    def __init__(
        self,
        home: str | Path,
        *,
        port: int | None = None,
        venv: str | Path | None = None,
        detached: bool = False,
        startup_timeout: float = 240.0,
    ):
        self.home = Path(home).absolute()
        self.port = port
        self.venv = Path(venv) if venv is not None else None
        self.detached = detached
        self.startup_timeout = startup_timeout
        self.process: ManagedProcess | None = None
        self.startup_seconds: float | None = None
        self._credentials = credentials(self.home)

    url = property(lambda self: f"http://{HOST}:{self.port}")
    token = property(lambda self: self._credentials["token"])
    username = property(lambda self: self._credentials["username"])
    password = property(lambda self: self._credentials["password"])
    document_root = property(lambda self: self.home / "files")
    log_path = property(lambda self: self.home / LOG_NAME)

    def environment(self) -> dict[str, str]:
        env = {
            key: os.environ[key]
            for key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
            if key in os.environ
        }
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.home / "data"),
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(self.document_root),
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
        )
        return env

    def command(self, venv: Path) -> list[str]:
        return [
            str(venv / "bin" / "label-studio"), "start", "--no-browser",
            "--internal-host", HOST, "--port", str(self.port),
            "--data-dir", str(self.home / "data"),
        ]  # fmt: skip

    def start(self) -> LabelStudioServer:
        """Start it and wait until it answers and takes the token; LabelStudioError if not."""
        started = time.monotonic()
        self.launch()
        try:
            self.wait_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()  # failed or interrupted while starting: it must not outlive this
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def launch(self) -> ManagedProcess:
        """Start the process without waiting for it (`start()` waits; `label_studio_up` records
        the PID first, so a server whose `up` was killed meanwhile can still be stopped)."""
        venv = ensure_venv(self.venv)
        if self.port is None:
            self.port = free_port(HOST)
        elif not port_is_free(self.port):
            raise LabelStudioError(
                f"port {self.port} on {HOST} is taken: Label Studio cannot listen there; "
                "choose another with --port"
            )
        self.document_root.mkdir(parents=True, exist_ok=True)
        process = ManagedProcess(
            f"Label Studio on {HOST}:{self.port}", self.command(venv), env=self.environment(),
            cwd=self.home, log_path=self.log_path, detached=self.detached,
        )  # fmt: skip
        self.process = process.start()
        return process

    def wait_ready(self, deadline: float) -> None:
        """Wait until the launched server answers and takes the token (LabelStudioError with
        the end of its log if it exits or `deadline`, a time.monotonic(), passes first)."""
        try:
            wait_until_answers(
                self.process, f"{self.url}/health", what=f"Label Studio on {HOST}:{self.port}",
                deadline=deadline, timeout_s=self.startup_timeout,
                error=LabelStudioError, log_path=self.log_path, interval=0.5,
            )  # fmt: skip
        except LabelStudioError as exc:
            tail = self.process.log_tail(15)
            if "did not answer" not in str(exc) or not tail:
                raise
            raise LabelStudioError(f"{exc}; its last lines:\n{tail}") from None
        self._check_token()

    def _check_token(self) -> None:
        import requests

        answer = requests.get(
            f"{self.url}/api/current-user/whoami",
            headers={"Authorization": f"Token {self.token}"},
            timeout=30,
        )
        if answer.status_code != 200:
            raise LabelStudioError(
                f"Label Studio in {self.home} refuses the token of its credentials.json (HTTP "
                f"{answer.status_code}): its data dir was made with other credentials; remove "
                f"{self.home / 'data'} to start afresh"
            )

    def stop(self, timeout: float = 15.0) -> int | None:
        return self.process.stop(timeout) if self.process is not None else None


# -- a detached server per workspace, for the CLI ----------------------------------------------


def _state(home: Path) -> dict:
    path = home / "state.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _running(home: Path) -> dict | None:
    state = _state(home)
    pid = state.get("pid")
    if pid and is_recorded_process(int(pid), state.get("start_ticks"), COMMAND_MARK):
        return state
    return None


@contextlib.contextmanager
def _up_lock(home: Path):
    """One `up` at a time per folder: two at once would start two servers on one database."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / "up.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _wait_answers(url: str, pid: int, deadline: float) -> bool:
    while not http_ok(f"{url}/health", timeout=2)[0]:
        if time.monotonic() > deadline or start_ticks(pid) is None:
            return False
        time.sleep(0.5)
    return True


def label_studio_up(
    home: str | Path,
    port: int | None = None,
    report: Callable[[str], None] | None = None,
    *,
    startup_timeout: float = 240.0,
) -> tuple[LabelStudioServer, bool]:
    """Start the server of `home` in the background (it outlives this command), or find it
    running and answering; returns it and whether it ran already."""
    home = Path(home).absolute()
    say = report or (lambda line: None)
    deadline = time.monotonic() + startup_timeout
    with _up_lock(home):
        running = _running(home)
        if running is not None:
            server = LabelStudioServer(home, port=int(running["port"]))
            if not _wait_answers(server.url, int(running["pid"]), deadline):
                raise LabelStudioError(
                    f"Label Studio for {home} runs (pid {running['pid']}) but does not answer at "
                    f"{server.url}; see {server.log_path}, or restart it with `baldflow "
                    f"label-studio down --dir {home}` and `up`"
                )
            return server, True
        if not venvs.venv_ready(default_venv(), LABEL_STUDIO_REQUIREMENTS):
            say(f"building Label Studio's environment in {default_venv()} (once; ~2 minutes)")
        recorded = _state(home).get("port")
        if port is None and recorded and port_is_free(int(recorded)):
            port = int(recorded)  # else the recorded port went to someone else: a free one
        server = LabelStudioServer(home, port=port, detached=True, startup_timeout=startup_timeout)
        first = not (home / "data").is_dir() or not any((home / "data").iterdir())
        say(f"starting Label Studio in {home}" + (" (a first start: ~40 s)" if first else ""))
        process = server.launch()
        # Recorded before the wait: if this command dies meanwhile, `down` still finds it.
        state = {"pid": process.pid, "start_ticks": start_ticks(process.pid), "port": server.port}
        write_private_text(home / "state.json", json.dumps(state, indent=1))
        try:
            server.wait_ready(deadline)
        except BaseException:
            label_studio_down(home)
            raise
        return server, False


def label_studio_down(home: str | Path) -> bool:
    """Stop the server of `home` by its recorded PID; whether one was running."""
    home = Path(home).absolute()
    state = _state(home)
    pid = state.get("pid")
    stopped = bool(pid) and stop_recorded_group(int(pid), state.get("start_ticks"), COMMAND_MARK)
    if state:
        state.pop("pid", None)
        state.pop("start_ticks", None)
        write_private_text(home / "state.json", json.dumps(state, indent=1))
    return stopped


def label_studio_status(home: str | Path) -> tuple[bool, str]:
    """Whether the server of `home` runs and answers, and a line saying so."""
    home = Path(home).absolute()
    running = _running(home)
    if running is None:
        return False, f"no Label Studio is running for {home}"
    url = LabelStudioServer(home, port=int(running["port"])).url
    if not http_ok(f"{url}/health", timeout=5)[0]:
        return False, f"Label Studio (pid {running['pid']}) does not answer at {url}"
    return True, f"Label Studio at {url} (pid {running['pid']}, data in {home})"


def connection(home: str | Path) -> tuple[str, str, Path]:
    """(url, API token, document root) of the running server of `home`."""
    home = Path(home).absolute()
    running = _running(home)
    if running is None:
        raise NoLabelStudioServerError(
            f"no Label Studio is running for {home}: start it with `baldflow label-studio up "
            f"--dir {home}`, or set oracle.label_studio.url to a server the team runs"
        )
    server = LabelStudioServer(home, port=int(running["port"]))
    return server.url, server.token, server.document_root


def workspace_connection(workspace_root: str | Path) -> tuple[str, str, Path]:
    """connection() of the workspace's own server (<workspace>/label-studio): what the layers
    that run servers hand labeling (baldflow.labeling.label_studio.connect)."""
    return connection(Path(workspace_root) / LOCAL_SERVER_DIR)


def main(argv: list[str] | None = None) -> int:
    """`python -m baldflow.stack.label_studio ensure-venv`: build the environment (CI, set-up)."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["ensure-venv"]:
        print("usage: python -m baldflow.stack.label_studio ensure-venv", file=sys.stderr)
        return 2
    started = time.monotonic()
    venv = ensure_venv()
    print(f"Label Studio's environment: {venv} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
