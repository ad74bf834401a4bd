"""The team's servers from one command: `baldflow stack up|status|down --dir STACK`.

One directory holds everything: a private PostgreSQL cluster (databases mlflow, mlflow_auth,
prefect), an MLflow tracking server on it with proxied artifacts (optionally behind basic
auth), a Prefect server on it, a bare git repository and a DVC remote directory. The servers
outlive `stack up` (they are detached), so what stops them later is what `up` recorded in
STACK/stack.json: ports, URLs (never passwords) and each server's PID with its start time,
checked before any signal so that a reused PID is never hit. Members source STACK/team.env.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from baldflow.common import atomic_write_text, utc_now
from baldflow.stack.loopback import http_ok, port_is_free
from baldflow.stack.mlflow_server import (
    ADMIN_PASSWORD_ENV,
    MIN_PASSWORD_LENGTH,
    SECRET_KEY_ENV,
    BasicAuth,
    MlflowServer,
    secret_from_file,
    write_private_text,
)
from baldflow.stack.postgres import PostgresCluster
from baldflow.stack.prefect_server import PrefectServer
from baldflow.stack.process import (
    ProcessStartError,
    free_port,
    is_recorded_process,
    start_ticks,
    stop_recorded_group,
)

STATE_NAME = "stack.json"
ENV_NAME = "team.env"
KIND = "baldflow-team-stack"
DATABASES = ("mlflow", "mlflow_auth", "prefect")
GIT_REPO_NAME = "baldflow"
# What each server's command line contains: a recorded PID is only signalled while it does.
MLFLOW_COMMAND = "mlflow server"
PREFECT_COMMAND = "prefect server start"

Report = Callable[[str], None]


class StackError(ProcessStartError):
    """The team stack cannot do what was asked (the message says what and why)."""


class NotAStackError(StackError):
    """The directory holds no stack that `baldflow stack up` made."""


class StackNotUpError(StackError):
    """`down` on a stack none of whose servers runs."""


@dataclass
class TeamStack:
    """A stack that is up: where each part answers, as a team member's tools need it."""

    dir: Path
    postgres_port: int
    mlflow_port: int
    prefect_port: int
    mlflow_uri: str
    prefect_api_url: str
    git_remote: str
    dvc_remote: str
    auth: bool = False
    admin_username: str | None = None
    admin_password_file: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    already_up: bool = False

    @property
    def env_file(self) -> Path:
        return self.dir / ENV_NAME

    def postgres_url(self, database: str, driver: str = "") -> str:
        """A connection URL to `database` of the stack's PostgreSQL, password included:
        for servers and tests, never to print. `driver`: "", "psycopg2" or "asyncpg"."""
        return _cluster(self.dir, self.postgres_port).url(database, driver)

    def admin_password(self) -> str:
        if self.admin_password_file is None:
            raise StackError(f"the MLflow server of {self.dir} runs without auth")
        return self.admin_password_file.read_text(encoding="utf-8").strip()

    def environment(self) -> dict[str, str]:
        """What a team member exports (team.env): the servers and the remotes."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "BALDFLOW_GIT_REMOTE": self.git_remote,
            "BALDFLOW_DVC_REMOTE": self.dvc_remote,
        }


# -- the stack directory -------------------------------------------------------------------


def _paths(root: Path) -> dict[str, Path]:
    return {
        "postgres": root / "postgres",
        "mlflow": root / "mlflow",
        "artifacts": root / "mlflow-artifacts",
        "prefect": root / "prefect",
        "secrets": root / "secrets",
        "git": root / "git" / f"{GIT_REPO_NAME}.git",
        "dvc": root / "dvc-remote",
    }


def _cluster(root: Path, port: int) -> PostgresCluster:
    return PostgresCluster(_paths(root)["postgres"], port)


def _read_state(root: Path) -> dict:
    path = root / STATE_NAME
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotAStackError(
            f"{root} is not a baldflow stack (no {STATE_NAME}): start one with "
            f"`baldflow stack up --dir {root}`"
        ) from None
    except (OSError, ValueError) as exc:
        raise NotAStackError(f"{path} is not readable as a stack's state: {exc}") from exc
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise NotAStackError(f"{path} is not the state file of a baldflow stack")
    return state


def _write_state(root: Path, state: dict) -> None:
    state["updated"] = utc_now()
    atomic_write_text(root / STATE_NAME, json.dumps(state, indent=2, sort_keys=True) + "\n")


def _prepare_dir(root: Path) -> None:
    """Create STACK; a directory that holds other things is refused (its files would mix
    with a database cluster's). 0711: the PostgreSQL account may pass through, not list."""
    if root.exists() and not (root / STATE_NAME).exists():
        if not root.is_dir():
            raise NotAStackError(f"{root} exists and is not a directory")
        if any(root.iterdir()):
            raise NotAStackError(
                f"{root} is not empty and is not a baldflow stack: give a new or empty directory"
            )
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711 if os.geteuid() == 0 else 0o700)


def _running_pid(part: dict | None, expect: str) -> int | None:
    if not part or not part.get("pid"):
        return None
    pid = part["pid"]
    return pid if is_recorded_process(pid, part.get("start_ticks"), expect) else None


def _pick_port(asked: int | None, recorded: int | None, running: bool, what: str) -> int:
    if running:
        if asked is not None and asked != recorded:
            raise StackError(
                f"the {what} of this stack runs on port {recorded} already; run `baldflow "
                f"stack down` first to move it to {asked}"
            )
        return int(recorded)
    port = asked if asked is not None else recorded
    if port is None:
        return free_port()
    if not port_is_free(port):
        raise StackError(f"port {port} on 127.0.0.1 is taken: the {what} cannot listen there; "
                         "choose another port")
    return int(port)


# -- up ------------------------------------------------------------------------------------


def _basic_auth(root: Path, stack_cluster: PostgresCluster, database: str) -> BasicAuth:
    paths = _paths(root)
    paths["secrets"].mkdir(mode=0o700, exist_ok=True)
    admin_file = paths["secrets"] / "mlflow-admin-password"
    admin_password = secret_from_file(admin_file, ADMIN_PASSWORD_ENV, MIN_PASSWORD_LENGTH)
    # Given by the environment: the file (which team.env names) holds it too. MLflow uses it
    # only when it creates the admin, on the first start against an empty auth database.
    if not admin_file.exists() or admin_file.read_text(encoding="utf-8").strip() != admin_password:
        write_private_text(admin_file, admin_password + "\n")
    return BasicAuth(
        database_uri=stack_cluster.url(database, "psycopg2"),
        admin_password=admin_password,
        secret_key=secret_from_file(paths["secrets"] / "flask-secret-key", SECRET_KEY_ENV),
        config_path=paths["mlflow"] / "basic_auth.ini",
    )


def _mlflow_server(
    root: Path, cluster: PostgresCluster, port: int, auth: bool, artifacts: str
) -> MlflowServer:
    paths = _paths(root)
    paths["mlflow"].mkdir(exist_ok=True)
    server = MlflowServer(
        paths["mlflow"],
        cluster.url("mlflow", "psycopg2"),
        artifacts,
        port=port,
        auth=_basic_auth(root, cluster, "mlflow_auth") if auth else None,
        detached=True,
    )
    return server


def _prefect_server(root: Path, cluster: PostgresCluster, port: int) -> PrefectServer:
    home = _paths(root)["prefect"]
    home.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    return PrefectServer(
        home, port=port, startup_timeout=180, env=env,
        database_url=cluster.url("prefect", "asyncpg"), detached=True,
    )


def _record(server: MlflowServer | PrefectServer) -> dict:
    pid = server.process.pid
    return {"pid": pid, "start_ticks": start_ticks(pid), "port": server.port}


def _ensure_remotes(root: Path) -> None:
    paths = _paths(root)
    if not (paths["git"] / "HEAD").exists():
        paths["git"].parent.mkdir(exist_ok=True)
        result = subprocess.run(
            ["git", "init", "--bare", "--quiet", "--initial-branch=main", str(paths["git"])],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(f"git init --bare {paths['git']} failed: {result.stderr.strip()}")
    paths["dvc"].mkdir(exist_ok=True)


def stack_up(
    dir: str | Path,
    *,
    postgres_port: int | None = None,
    mlflow_port: int | None = None,
    prefect_port: int | None = None,
    auth: bool | None = None,
    artifacts_destination: str | None = None,
    report: Report | None = None,
) -> TeamStack:
    """Start whatever part of the stack in `dir` is not running (all of it the first time).

    Parts that run already are kept as they are (`up` twice is harmless); a stopped stack
    comes back on its recorded ports (and, with `auth` None, with or without basic auth as
    before), so the URLs members have keep working. MLflow and Prefect start side by side
    (both spend most of their 7-20 s in imports and migrations). A failure or Ctrl-C stops
    the servers this call started, PostgreSQL included. `timings` (also in stack.json) holds
    the seconds each part that this call started took to become healthy.
    """
    say = report or (lambda _line: None)
    root = Path(dir).absolute()
    _prepare_dir(root)
    state = _read_state(root) if (root / STATE_NAME).exists() else {"kind": KIND, "version": 1}
    timings: dict[str, float] = {}

    pg_state = state.get("postgres", {})
    pg_port = pg_state.get("port")
    cluster_running = pg_port is not None and _cluster(root, pg_port).running()
    pg_port = _pick_port(postgres_port, pg_port, cluster_running, "PostgreSQL server")
    cluster = _cluster(root, pg_port)
    if cluster_running:
        say(f"PostgreSQL runs already on 127.0.0.1:{pg_port}")
    else:
        cluster.start()
        timings["postgres_s"] = round(cluster.startup_seconds, 2)
        say(f"PostgreSQL ready on 127.0.0.1:{pg_port} in {cluster.startup_seconds:.1f} s")
    state["postgres"] = {"port": pg_port, "pid": cluster.pid(), "data_dir": str(cluster.data_dir)}
    _write_state(root, state)  # from here on, `down` finds the cluster even if the rest fails
    try:
        cluster.create_databases(*DATABASES)
        return _up_servers(
            root, state, cluster, timings, say,
            mlflow_port=mlflow_port, prefect_port=prefect_port, auth=auth,
            artifacts_destination=artifacts_destination,
        )
    except BaseException:
        if not cluster_running:  # ours: it must not outlive a failed `up`
            with contextlib.suppress(Exception):
                cluster.stop()
        raise


def _up_servers(
    root: Path,
    state: dict,
    cluster: PostgresCluster,
    timings: dict[str, float],
    say: Report,
    *,
    mlflow_port: int | None,
    prefect_port: int | None,
    auth: bool | None,
    artifacts_destination: str | None,
) -> TeamStack:
    """The MLflow and Prefect servers (those not running) and the remotes, on `cluster`."""
    paths = _paths(root)
    ml_state = state.get("mlflow", {})
    ml_running = _running_pid(ml_state, MLFLOW_COMMAND) is not None
    if auth is None:
        auth = bool(ml_state.get("auth"))
    if ml_running and bool(ml_state.get("auth")) != auth:
        raise StackError(
            f"the MLflow server of this stack runs {'with' if ml_state.get('auth') else 'without'}"
            " basic auth; run `baldflow stack down` first to change that"
        )
    ml_port = _pick_port(mlflow_port, ml_state.get("port"), ml_running, "MLflow server")
    pf_state = state.get("prefect", {})
    pf_running = _running_pid(pf_state, PREFECT_COMMAND) is not None
    pf_port = _pick_port(prefect_port, pf_state.get("port"), pf_running, "Prefect server")
    artifacts = artifacts_destination or ml_state.get("artifacts_destination") or str(
        paths["artifacts"]
    )

    to_start: dict[str, MlflowServer | PrefectServer] = {}
    if ml_running:
        say(f"MLflow server runs already on 127.0.0.1:{ml_port} (pid {ml_state['pid']})")
    else:
        to_start["mlflow"] = _mlflow_server(root, cluster, ml_port, auth, artifacts)
    if pf_running:
        say(f"Prefect server runs already on 127.0.0.1:{pf_port} (pid {pf_state['pid']})")
    else:
        to_start["prefect"] = _prefect_server(root, cluster, pf_port)
    _start_side_by_side(to_start)

    if "mlflow" in to_start:
        server = to_start["mlflow"]
        ml_state = {**_record(server), "auth": auth}
        timings["mlflow_s"] = round(server.startup_seconds, 2)
        say(f"MLflow server ready on {server.url} in {server.startup_seconds:.1f} s"
            + (" (basic auth)" if auth else ""))
    if "prefect" in to_start:
        server = to_start["prefect"]
        pf_state = _record(server)
        timings["prefect_s"] = round(server.startup_seconds, 2)
        say(f"Prefect server ready on {server.url} in {server.startup_seconds:.1f} s")
    ml_state.update(url=f"http://127.0.0.1:{ml_port}", artifacts_destination=artifacts)
    if auth:
        ml_state.update(admin_username="admin",
                        admin_password_file=str(paths["secrets"] / "mlflow-admin-password"))
    pf_state["api_url"] = f"http://127.0.0.1:{pf_port}/api"
    state["mlflow"], state["prefect"] = ml_state, pf_state

    _ensure_remotes(root)
    state["git_remote"], state["dvc_remote"] = str(paths["git"]), str(paths["dvc"])
    state["state"] = "up"
    if timings:
        state["timings"] = timings
    _write_state(root, state)
    stack = _stack_from_state(root, state)
    stack.timings = timings
    stack.already_up = not timings
    _write_env_file(stack)
    return stack


def _start_side_by_side(servers: dict[str, MlflowServer | PrefectServer]) -> None:
    """Start the servers in threads, wait for all; if any fails (or we are interrupted), stop
    every one of them, so that a failed `up` leaves nothing behind that no state records."""
    if not servers:
        return
    pool = ThreadPoolExecutor(max_workers=len(servers), thread_name_prefix="baldflow-stack-up")
    try:
        futures = [pool.submit(server.start) for server in servers.values()]
        for future in futures:
            future.result()
    except BaseException:
        for server in servers.values():
            if server.process is not None:
                server.process.stop()
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)


def _stack_from_state(root: Path, state: dict) -> TeamStack:
    ml, pf = state["mlflow"], state["prefect"]
    password_file = ml.get("admin_password_file")
    return TeamStack(
        dir=root,
        postgres_port=state["postgres"]["port"],
        mlflow_port=ml["port"],
        prefect_port=pf["port"],
        mlflow_uri=ml["url"],
        prefect_api_url=pf["api_url"],
        git_remote=state["git_remote"],
        dvc_remote=state["dvc_remote"],
        auth=bool(ml.get("auth")),
        admin_username=ml.get("admin_username"),
        admin_password_file=Path(password_file) if password_file else None,
        timings=dict(state.get("timings", {})),
    )


def _write_env_file(stack: TeamStack) -> None:
    lines = [
        f"# The baldflow team stack in {stack.dir} (written by `baldflow stack up`).",
        f"# Use it in a shell with: . {stack.env_file}",
    ]
    lines += [f"export {key}={value}" for key, value in stack.environment().items()]
    if stack.auth:
        lines += [
            "# The MLflow server asks for basic auth: export MLFLOW_TRACKING_USERNAME and",
            "# MLFLOW_TRACKING_PASSWORD for your own user. The admin is "
            f"'{stack.admin_username}', whose password is in {stack.admin_password_file}.",
        ]
    write_private_text(stack.env_file, "\n".join(lines) + "\n")


def load_stack(dir: str | Path) -> TeamStack:
    """The stack recorded in `dir` (whether or not its servers run now)."""
    root = Path(dir).absolute()
    state = _read_state(root)
    if "mlflow" not in state or "prefect" not in state:
        raise NotAStackError(f"{root} holds a stack that never came up completely")
    return _stack_from_state(root, state)


# -- status and down -----------------------------------------------------------------------


def stack_status(dir: str | Path) -> list[tuple[str, bool, str]]:
    """(part, healthy, detail) for postgres, mlflow, prefect, git and dvc."""
    root = Path(dir).absolute()
    state = _read_state(root)
    rows: list[tuple[str, bool, str]] = []
    pg = state.get("postgres", {})
    if pg.get("port") is None:
        rows.append(("postgres", False, "never started"))
    else:
        rows.append(("postgres", *_cluster(root, pg["port"]).accepts_connections()))
    for part, expect, health in (
        ("mlflow", MLFLOW_COMMAND, "/health"),
        ("prefect", PREFECT_COMMAND, "/api/health"),
    ):
        recorded = state.get(part, {})
        pid = _running_pid(recorded, expect)
        base = recorded.get("url") or (recorded.get("api_url", "").removesuffix("/api"))
        if pid is None:
            rows.append((part, False, f"not running ({base or 'never started'})"))
            continue
        ok, why = http_ok(base + health)
        extra = ", basic auth" if recorded.get("auth") else ""
        rows.append((part, ok, f"{base} (pid {pid}{extra}): {health} {why}"))
    git = Path(state.get("git_remote", _paths(root)["git"]))
    rows.append(("git", (git / "HEAD").is_file(), f"bare repository {git}"))
    dvc = Path(state.get("dvc_remote", _paths(root)["dvc"]))
    rows.append(("dvc", dvc.is_dir(), f"remote directory {dvc}"))
    return rows


def stack_down(dir: str | Path, report: Report | None = None) -> list[str]:
    """Stop the servers of the stack in `dir` (Prefect, MLflow, then PostgreSQL), each by its
    recorded PID or data directory; parts already gone are skipped. Returns the parts stopped;
    raises StackNotUpError when none was running. Data, remotes and secrets stay."""
    say = report or (lambda _line: None)
    root = Path(dir).absolute()
    state = _read_state(root)
    servers = (("prefect", PREFECT_COMMAND), ("mlflow", MLFLOW_COMMAND))

    def stop(part: str, expect: str) -> bool:
        recorded = state.get(part, {})
        pid = recorded.get("pid")
        return bool(pid) and stop_recorded_group(pid, recorded.get("start_ticks"), expect)

    # Side by side: each takes seconds to wind down its workers, PostgreSQL waits for both.
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        was_running = list(pool.map(lambda item: stop(*item), servers))
    stopped = []
    for (part, _), running in zip(servers, was_running, strict=True):
        recorded = state.get(part, {})
        if running:
            stopped.append(part)
            say(f"{part}: stopped (pid {recorded['pid']})")
        elif recorded.get("pid"):
            say(f"{part}: was not running (pid {recorded['pid']} gone)")
        recorded.pop("pid", None)
        recorded.pop("start_ticks", None)
    pg = state.get("postgres", {})
    if pg.get("port") is not None and _cluster(root, pg["port"]).stop():
        stopped.append("postgres")
        say(f"postgres: stopped (pid {pg.get('pid')})")
    pg.pop("pid", None)
    state["state"] = "down"
    _write_state(root, state)
    if not stopped:
        raise StackNotUpError(f"no server of the stack in {root} was running")
    return stopped


# -- more servers on the stack's PostgreSQL -------------------------------------------------


def extra_mlflow_server(
    stack: TeamStack,
    name: str,
    *,
    auth: bool = True,
    port: int | None = None,
    detached: bool = False,
) -> MlflowServer:
    """Start another MLflow server on the stack's PostgreSQL, with databases `name` and
    `name`_auth and its artifacts in STACK/`name`-artifacts (a second, secured tracking
    server beside the open one, e.g. for tests). The caller stops it."""
    cluster = _cluster(stack.dir, stack.postgres_port)
    cluster.create_databases(name, f"{name}_auth")
    home = stack.dir / name
    home.mkdir(exist_ok=True)
    basic = None
    if auth:
        basic = _basic_auth(stack.dir, cluster, f"{name}_auth")
        basic.config_path = home / "basic_auth.ini"
    server = MlflowServer(
        home,
        cluster.url(name, "psycopg2"),
        str(stack.dir / f"{name}-artifacts"),
        port=port,
        auth=basic,
        detached=detached,
    )
    return server.start()
