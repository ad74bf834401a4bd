"""The team's MLflow tracking server: `mlflow server` on 127.0.0.1 (or, behind basic auth, the
address a team reaches) with its runs in PostgreSQL and its artifacts proxied (clients need no
storage credentials), optionally behind MLflow's basic auth. One object starts it, waits for
/health and stops it by PID.

Secrets (the Flask session key, the admin password) live in 0600 files of the stack directory
unless the environment gives them; they reach the server through its environment and its auth
ini (0600 too), never its command line, which every local user can read.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from baldflow.stack.loopback import is_loopback, port_is_free, wait_until_answers
from baldflow.stack.process import ManagedProcess, ProcessStartError, free_port

HOST = "127.0.0.1"
LOG_NAME = "mlflow-server.log"
ADMIN_PASSWORD_ENV = "BALDFLOW_MLFLOW_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
MIN_PASSWORD_LENGTH = 12  # MLflow's basic auth refuses shorter passwords
AUTH_CACHE_SECONDS = 5


class MlflowServerError(ProcessStartError):
    """The MLflow server could not start, or exited, or did not answer /health in time."""


def secret_from_file(path: Path, env_var: str | None = None, min_length: int = 0) -> str:
    """The secret in $env_var if set, else the one in `path`, else a new one written there
    (mode 0600 from the first byte: never readable by others, not even briefly)."""
    given = os.environ.get(env_var) if env_var else None
    if given:
        if len(given) < min_length:
            raise MlflowServerError(f"${env_var} is shorter than {min_length} characters")
        return given
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(max(24, min_length))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


def write_private_text(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


@dataclass
class BasicAuth:
    """MLflow's basic-auth app: users and permissions in `database_uri` (PostgreSQL), an admin
    created on the first start, the Flask session key. `auth_cache_ttl_seconds` keeps a
    verified login for a few seconds: without it every request re-hashes the password (PBKDF2),
    which made a client script ~8x slower here. Short, because each server process keeps its
    own cache and a deleted login or changed password leaves the others' entries in place
    until they expire: a removed member keeps access for at most this long."""

    database_uri: str
    admin_password: str
    secret_key: str
    config_path: Path
    admin_username: str = "admin"
    default_permission: str = "READ"
    auth_cache_ttl_seconds: int = AUTH_CACHE_SECONDS

    def write_config(self) -> Path:
        write_private_text(
            self.config_path,
            "[mlflow]\n"
            f"default_permission = {self.default_permission}\n"
            f"database_uri = {self.database_uri}\n"
            f"admin_username = {self.admin_username}\n"
            f"admin_password = {self.admin_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {self.auth_cache_ttl_seconds}\n",
        )
        return self.config_path


class MlflowServer:
    """`mlflow server` with `--workers` uvicorn workers, its output in `home`/mlflow-server.log.

    `host`: the address it listens on, 127.0.0.1 by default; any other needs `auth` (anyone
    who reaches the address could otherwise write and delete every run). `allowed_hosts`:
    extra Host headers to accept besides `host`:PORT, 127.0.0.1:PORT and localhost:PORT (a team
    that reaches it through a proxy or a DNS name). `detached=True` lets it outlive this
    process (baldflow.stack.process).
    """

    def __init__(
        self,
        home: str | Path,
        backend_store_uri: str,
        artifacts_destination: str,
        *,
        port: int | None = None,
        auth: BasicAuth | None = None,
        workers: int = 2,
        allowed_hosts: Sequence[str] = (),
        startup_timeout: float = 180.0,
        detached: bool = False,
        env: Mapping[str, str] | None = None,
        host: str = HOST,
    ):
        self.home = Path(home)
        self.host = host
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.port = port
        self.auth = auth
        self.workers = workers
        self.allowed_hosts = list(allowed_hosts)
        self.startup_timeout = startup_timeout
        self.detached = detached
        self.env = dict(env) if env is not None else None
        self.process: ManagedProcess | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / LOG_NAME

    def command(self, port: int) -> list[str]:
        hosts = [f"{HOST}:{port}", f"localhost:{port}", *self.allowed_hosts]
        if self.host != HOST:
            hosts.insert(0, f"{self.host}:{port}")
        argv = [sys.executable, "-m", "mlflow", "server"]
        argv += ["--artifacts-destination", self.artifacts_destination]
        argv += ["--host", self.host, "--port", str(port), "--workers", str(self.workers)]
        argv += ["--allowed-hosts", ",".join(hosts)]
        if self.auth is not None:
            argv += ["--app-name", "basic-auth"]
        return argv

    def environment(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # else 7 huey job processes
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        # The database URL carries its password: in the environment, not in argv where any
        # user of the machine reads it with `ps` (mlflow server reads this variable).
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend_store_uri
        env["DO_NOT_TRACK"] = "1"
        # A client setting of the shell that started it is no server setting.
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        if self.auth is not None:
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth.write_config())
            env[SECRET_KEY_ENV] = self.auth.secret_key
        return env

    def start(self) -> MlflowServer:
        """Start it and wait until /health answers; raises MlflowServerError if not."""
        started = time.monotonic()
        if self.auth is None and not is_loopback(self.host):
            raise MlflowServerError(
                f"an MLflow server on {self.host} (not loopback) needs basic auth: give it auth"
            )
        if self.port is None:
            self.port = free_port(self.host)
        elif not port_is_free(self.port, self.host):
            raise MlflowServerError(f"port {self.port} on {self.host} is taken: the MLflow "
                                    f"server cannot listen there; choose another port")
        if "://" not in self.artifacts_destination:
            Path(self.artifacts_destination).mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        process = ManagedProcess(
            f"mlflow server on {self.host}:{self.port}",
            self.command(self.port),
            env=self.environment(),
            cwd=self.home,
            log_path=self.log_path,
            detached=self.detached,
        )
        self.process = process.start()
        try:
            self._wait_healthy(process, started + self.startup_timeout)
        except BaseException:
            process.stop()  # interrupted or failed while starting: it must not outlive this
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_healthy(self, process: ManagedProcess, deadline: float) -> None:
        wait_until_answers(
            process,
            f"{self.url}/health",
            what=f"the MLflow server on {self.host}:{self.port}",
            deadline=deadline,
            timeout_s=self.startup_timeout,
            error=MlflowServerError,
            log_path=self.log_path,
            interval=0.2,
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.process.stop(timeout) if self.process is not None else None


def create_user(
    tracking_uri: str, admin_username: str, admin_password: str, username: str, password: str
):
    """Create an MLflow user through the basic-auth REST API, as the admin. Returns the user.

    MLflow's auth client reads the credentials from MLFLOW_TRACKING_USERNAME/PASSWORD only, so
    they are set for the call and put back after it (not safe beside other threads that use
    those variables)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise MlflowServerError(
            f"the password for {username!r} is shorter than {MIN_PASSWORD_LENGTH} characters"
        )
    from mlflow.server import get_app_client

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"] = admin_username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = admin_password
    try:
        client = get_app_client("basic-auth", tracking_uri=tracking_uri)
        return client.create_user(username=username, password=password)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
