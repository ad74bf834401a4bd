"""A Prefect server that baldflow starts itself (`prefect server start` on 127.0.0.1, or behind
basic auth on the address a team reaches), owned by one object that waits for /api/health and
stops it by PID.

Prefect's own temporary server is a plain child of the run: a Ctrl-C in the terminal reaches
it too, it dies first, and the run's client then retries the dead address for minutes. This one
runs in its own session (see baldflow.stack.process), so it outlives the interrupt long enough
for the run to record how it ended, and stops only when the run is done with it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from baldflow.stack.loopback import is_loopback, wait_until_answers
from baldflow.stack.process import ManagedProcess, ProcessStartError, free_port

HOST = "127.0.0.1"
LOG_NAME = "baldflow-server.log"
PRIVATE_API_ENV = "BALDFLOW_PRIVATE_PREFECT_API"
# Prefect's basic auth for a self-hosted server: the server's setting and its clients'.
SERVER_AUTH_ENV = "PREFECT_SERVER_API_AUTH_STRING"
CLIENT_AUTH_ENV = "PREFECT_API_AUTH_STRING"


class PrefectServerError(ProcessStartError):
    """The Prefect server exited or did not answer /api/health in time."""


class _PortTakenError(PrefectServerError):
    pass


def configured_api_url() -> str | None:
    """The Prefect API the user chose: $PREFECT_API_URL, else the one a Prefect already
    imported in this process uses (a test harness, a profile), else None."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    settings = sys.modules.get("prefect.settings")
    if settings is not None:
        try:
            return settings.PREFECT_API_URL.value() or None
        except Exception:  # noqa: BLE001 (a broken profile: let Prefect itself complain)
            return None
    return None


class PrefectServer:
    """`python -m prefect server start --host 127.0.0.1 --port PORT` with its database in
    `home` (PREFECT_HOME), its output in `home`/baldflow-server.log (or, `log_to_file=False`,
    wherever this process's output goes).

    `temporary=True` is the server of one command: no UI (nobody can open it before it is
    gone) and no scheduler or late-run marking (a command's server must not start or flag
    scheduled runs of the workspace's deployments behind the user's back, and Prefect's own
    temporary server refuses to schedule too). Without a port, a free one is picked (and
    another one if it is taken before the server binds it).

    `database_url` (postgresql+asyncpg://...) puts its database there instead of SQLite in
    `home`: the team server (baldflow.stack.team) shares one PostgreSQL with MLflow.
    `detached=True` lets it outlive this process (see baldflow.stack.process): whoever records
    its PID stops it.

    `host`: the address it listens on, 127.0.0.1 by default; any other needs `auth_string`
    (Prefect's basic auth, "user:password"; its clients export it as PREFECT_API_AUTH_STRING).
    It reaches the server through its environment only. /api/health answers without it.
    """

    def __init__(
        self,
        home: str | Path,
        *,
        port: int | None = None,
        temporary: bool = False,
        startup_timeout: float = 90.0,
        env: Mapping[str, str] | None = None,
        log_to_file: bool = True,
        database_url: str | None = None,
        detached: bool = False,
        host: str = HOST,
        auth_string: str | None = None,
    ):
        self.home = Path(home)
        self.host = host
        self.auth_string = auth_string
        self.database_url = database_url
        self.detached = detached
        self.log_to_file = log_to_file
        self.port = port
        self.temporary = temporary
        self.startup_timeout = startup_timeout
        self.env = dict(env) if env is not None else None
        self.process: ManagedProcess | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def log_path(self) -> Path:
        return self.home / LOG_NAME

    def environment(self, port: int) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        url = f"http://{self.host}:{port}"
        env["PREFECT_HOME"] = str(self.home)
        env["PREFECT_SERVER_API_HOST"] = self.host
        env["PREFECT_SERVER_API_PORT"] = str(port)
        # Its own address for whatever in the server acts as a client, whatever the shell
        # exported for other servers.
        env["PREFECT_API_URL"] = f"{url}/api"
        # The page asks /ui-settings where the API is; unset, Prefect 3.8 answers from
        # PREFECT_API_URL, else PREFECT_SERVER_API_HOST/PORT (4200 by default), not from
        # --port. A URL the user set (a reverse proxy in front) is theirs to keep.
        if not (env.get("PREFECT_SERVER_UI_API_URL") or env.get("PREFECT_UI_API_URL")):
            env["PREFECT_SERVER_UI_API_URL"] = f"{url}/api"
        if self.database_url is not None:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        if self.auth_string is not None:
            # The server asks every API request but /api/health for it; whatever in the
            # server acts as a client (and the UI, which asks the user) sends it.
            env[SERVER_AUTH_ENV] = env[CLIENT_AUTH_ENV] = self.auth_string
        else:  # one the shell exported is no setting of this server
            env.pop(SERVER_AUTH_ENV, None)
        return env

    def command(self, port: int) -> list[str]:
        argv = [sys.executable, "-m", "prefect", "server", "start"]
        argv += ["--host", self.host, "--port", str(port)]
        if self.temporary:
            argv += ["--no-ui", "--no-scheduler", "--no-late-runs"]
        return argv

    def start(self) -> PrefectServer:
        """Start it and wait until /api/health answers; raises PrefectServerError if not."""
        started = time.monotonic()
        if self.auth_string is None and not is_loopback(self.host):
            raise PrefectServerError(
                f"a Prefect server on {self.host} (not loopback) needs an API auth string: "
                "give it auth_string"
            )
        chosen = self.port
        for _attempt in range(3):
            port = chosen if chosen is not None else free_port(self.host)
            process = ManagedProcess(
                f"prefect server on {self.host}:{port}",
                self.command(port),
                env=self.environment(port),
                log_path=self.log_path if self.log_to_file else None,
                detached=self.detached,
            )
            self.port, self.process = port, process
            process.start()
            try:
                self._wait_healthy(process, started + self.startup_timeout)
            except _PortTakenError:
                process.stop()
                if chosen is not None:
                    raise
                continue
            except BaseException:
                # Interrupted or failed while starting: it must not outlive this call.
                process.stop()
                raise
            self.startup_seconds = time.monotonic() - started
            return self
        raise PrefectServerError(
            f"no free port for a Prefect server on {self.host} after 3 tries"
        )

    def _wait_healthy(self, process: ManagedProcess, deadline: float) -> None:
        wait_until_answers(
            process,
            f"{self.api_url}/health",
            what=f"the Prefect server on {self.host}:{self.port}",
            deadline=deadline,
            timeout_s=self.startup_timeout,
            error=PrefectServerError,
            log_path=self.log_path if self.log_to_file else None,
            exit_error=lambda tail: (
                _PortTakenError if "already in use" in tail else PrefectServerError
            ),
        )

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def watch(self, on_exit: Callable[[int | None], None], interval: float = 0.5) -> None:
        """Call `on_exit(status)` from a watcher thread if the server exits before anyone
        asked it to stop (killed, crashed): its users would otherwise retry it for minutes."""
        process = self.process
        if process is None:
            raise PrefectServerError("watch() needs a started server")

        def loop() -> None:
            while process.running():
                time.sleep(interval)
            if not process.stopping:
                on_exit(process.returncode())

        threading.Thread(target=loop, name="baldflow-prefect-server-watch", daemon=True).start()

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.process is None:
            return None
        return self.process.stop(timeout)

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def use_prefect_api(home: str | Path) -> PrefectServer | None:
    """Give this process a Prefect API for the rest of its life, before it imports prefect.

    With an API configured already ($PREFECT_API_URL, or a Prefect imported in this process
    whose settings can no longer change), that one is used and nothing is started: None. Else
    a temporary server of ours is started with its database in `home`, PREFECT_API_URL points
    at it (for this process and the ones it starts), and it is stopped when this process exits,
    whichever way (see baldflow.stack.process), after Prefect has sent its last logs to it.
    """
    if configured_api_url() is not None or "prefect" in sys.modules:
        return None
    server = PrefectServer(home, temporary=True).start()
    os.environ["PREFECT_API_URL"] = server.api_url
    # Tells the flows that this API is private to the command, not a server a team shares
    # (where they coordinate clones through a concurrency limit; see baldflow.flows.slots).
    os.environ[PRIVATE_API_ENV] = server.api_url
    return server
