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
import secrets
import shlex
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from baldflow.common import atomic_write_text, utc_now
from baldflow.stack import label_studio as studio
from baldflow.stack import venvs
from baldflow.stack.loopback import bind_problem, http_ok, is_loopback, port_is_free
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
from baldflow.stack.prefect_server import CLIENT_AUTH_ENV, PrefectServer
from baldflow.stack.process import (
    ProcessStartError,
    command_line,
    free_port,
    group_members,
    is_recorded_process,
    port_holders,
    start_ticks,
    stop_group_members,
    stop_recorded_group,
)

STATE_NAME = "stack.json"
ENV_NAME = "team.env"
KIND = "baldflow-team-stack"
DATABASES = ("mlflow", "mlflow_auth", "prefect")
GIT_REPO_NAME = "baldflow"
LOOPBACK = "127.0.0.1"
PREFECT_AUTH_FILE = "prefect-auth-string"
# What each server's command line contains: a recorded PID is only signalled while it does.
MLFLOW_COMMAND = "mlflow server"
PREFECT_COMMAND = "prefect server start"
# The optional labeling server (`up --label-studio`): its part name in stack.json and status.
LABEL_STUDIO = "label-studio"
LABEL_STUDIO_COMMAND = studio.COMMAND_MARK
LABEL_STUDIO_URL_ENV = "BALDFLOW_LABEL_STUDIO_URL"  # baldflow.labeling.label_studio.URL_ENV
LABEL_STUDIO_TOKEN_ENV = "BALDFLOW_LABEL_STUDIO_TOKEN"  # baldflow.labeling.label_studio.TOKEN_ENV

Report = Callable[[str], None]


class StackError(ProcessStartError):
    """The team stack cannot do what was asked (the message says what and why)."""


class NotAStackError(StackError):
    """The directory holds no stack that `baldflow stack up` made."""


class StackNotUpError(StackError):
    """`down` on a stack none of whose servers runs."""


class BindAddressError(StackError):
    """`--host` names no address the servers can listen on."""


class InsecureBindError(StackError):
    """`--host` off loopback without authentication: anyone on that network could write."""


class SharedRemotesError(StackError):
    """The remotes could not be shared with the Unix group `--group` names."""


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
    # The address MLflow and Prefect (and any other server members use) listen on;
    # PostgreSQL stays on 127.0.0.1 whatever it is.
    host: str = LOOPBACK
    # Prefect's API auth string (0600), there when the stack runs with auth.
    prefect_auth_file: Path | None = None
    # The Unix group the remotes are shared with, if any.
    group: str | None = None
    # The team's Label Studio (`up --label-studio`), None when the stack runs none.
    label_studio_url: str | None = None

    @property
    def label_studio_dir(self) -> Path:
        """Where the team's Label Studio keeps its database and files (STACK/label-studio);
        its admin's login and token are in STACK/secrets/label-studio.json (0600)."""
        return self.dir / studio.STACK_HOME

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

    def member_secrets(self) -> dict[str, str]:
        """What every member exports besides environment() and their own MLflow login:
        {"PREFECT_API_AUTH_STRING": ...} when the Prefect server asks for it, else nothing.
        Secrets: for a member's 0600 env file or environment, never a command line."""
        if self.prefect_auth_file is None:
            return {}
        return {CLIENT_AUTH_ENV: self.prefect_auth_file.read_text(encoding="utf-8").strip()}

    def environment(self) -> dict[str, str]:
        """What a team member exports (team.env): the servers (at the address they listen
        on) and the remotes."""
        env = {
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "BALDFLOW_GIT_REMOTE": self.git_remote,
            "BALDFLOW_DVC_REMOTE": self.dvc_remote,
        }
        if self.label_studio_url:
            # Campaigns with oracle.kind label-studio and no oracle.label_studio.url use it,
            # with the member's own token (BALDFLOW_LABEL_STUDIO_TOKEN, from add_labeler).
            env[LABEL_STUDIO_URL_ENV] = self.label_studio_url
        return env


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


def _pick_port(
    asked: int | None, recorded: int | None, running: bool, what: str, host: str = LOOPBACK
) -> int:
    if running:
        if asked is not None and asked != recorded:
            raise StackError(
                f"the {what} of this stack runs on port {recorded} already; run `baldflow "
                f"stack down` first to move it to {asked}"
            )
        return int(recorded)
    port = asked if asked is not None else recorded
    if port is None:
        return free_port(host)
    if not port_is_free(port, host):
        raise StackError(f"port {port} on {host} is taken: the {what} cannot listen there; "
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
    root: Path, cluster: PostgresCluster, port: int, auth: bool, artifacts: str,
    host: str = LOOPBACK,
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
        host=host,
    )
    return server


def _prefect_auth_file(root: Path) -> Path:
    """STACK/secrets/prefect-auth-string (0600), made on first use: Prefect's basic auth,
    "team:SECRET", which every member's client sends (PREFECT_API_AUTH_STRING)."""
    path = _paths(root)["secrets"] / PREFECT_AUTH_FILE
    if not path.exists():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_private_text(path, f"team:{secrets.token_urlsafe(24)}\n")
    return path


def _prefect_server(
    root: Path, cluster: PostgresCluster, port: int, host: str = LOOPBACK, auth: bool = False
) -> PrefectServer:
    home = _paths(root)["prefect"]
    home.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    auth_string = None
    if auth:
        auth_string = _prefect_auth_file(root).read_text(encoding="utf-8").strip()
    return PrefectServer(
        home, port=port, startup_timeout=180, env=env,
        database_url=cluster.url("prefect", "asyncpg"), detached=True,
        host=host, auth_string=auth_string,
    )


def _record(server: MlflowServer | PrefectServer) -> dict:
    pid = server.process.pid
    # pgid: started in its own session, its group is its PID; token: in the environment of
    # the server and every child it starts (see process.group_members), to find orphans by.
    return {"pid": pid, "pgid": pid, "start_ticks": start_ticks(pid), "port": server.port,
            "token": server.process.token}


def _ensure_remotes(root: Path, group: str | None = None) -> None:
    """The bare git repository and the DVC remote directory; with `group`, shared with that
    Unix group (members who are other accounts of this machine push there themselves)."""
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
    if group:
        from baldflow.stack.sharing import SharingError, share_remotes

        try:
            share_remotes(root, paths["git"], paths["dvc"], group)
        except SharingError as exc:
            raise SharedRemotesError(str(exc)) from None


def _chosen_host(host: str | None, auth: bool | None, state: dict) -> str:
    """The address MLflow and Prefect listen on: `host`, else the recorded one, else
    127.0.0.1. Off loopback only with auth (given, or recorded when `auth` is None)."""
    chosen = host or state.get("host") or LOOPBACK
    if chosen == LOOPBACK:
        return chosen
    problem = bind_problem(chosen)
    if problem:
        raise BindAddressError(f"--host {chosen}: {problem}")
    with_auth = auth if auth is not None else bool(state.get("mlflow", {}).get("auth"))
    if not is_loopback(chosen) and not with_auth:
        raise InsecureBindError(
            f"--host {chosen} is not loopback: the servers there need authentication; add "
            "--auth (MLflow's basic auth and a Prefect API auth string)"
        )
    return chosen


def stack_up(
    dir: str | Path,
    *,
    postgres_port: int | None = None,
    mlflow_port: int | None = None,
    prefect_port: int | None = None,
    auth: bool | None = None,
    artifacts_destination: str | None = None,
    report: Report | None = None,
    host: str | None = None,
    group: str | None = None,
    label_studio: bool | None = None,
    label_studio_port: int | None = None,
) -> TeamStack:
    """Start whatever part of the stack in `dir` is not running (all of it the first time).

    `label_studio`: also run the team's Label Studio (data in STACK/label-studio, its admin in
    STACK/secrets/label-studio.json), side by side with MLflow and Prefect; None: as recorded
    (a stack that has had it keeps it). Its first start takes ~40 s (migrations), later ~5 s.

    `host`: the address MLflow and Prefect listen on (PostgreSQL never leaves 127.0.0.1);
    recorded like the ports. Off loopback it needs `auth`: MLflow's basic auth, and Prefect's
    API auth string from STACK/secrets (TeamStack.member_secrets). `group`: a Unix group the
    git and DVC remotes are shared with (members who are other accounts of this machine);
    recorded too.

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
    host = _chosen_host(host, auth, state)
    group = group or state.get("group")
    # Before any server starts: a group the remotes cannot be given to stops `up` here.
    _ensure_remotes(root, group)
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
            artifacts_destination=artifacts_destination, host=host, group=group,
            label_studio=label_studio, label_studio_port=label_studio_port,
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
    host: str = LOOPBACK,
    group: str | None = None,
    label_studio: bool | None = None,
    label_studio_port: int | None = None,
) -> TeamStack:
    """The MLflow and Prefect servers (those not running) and the remotes, on `cluster`.

    Every server members reach listens on `host` (a server added to the stack, such as
    Label Studio, takes it from here too, and from `state["host"]` on restarts)."""
    paths = _paths(root)
    _stop_orphans(state, say)  # they may hold the recorded ports the servers come back on
    ml_state = state.get("mlflow", {})
    ml_running = _running_pid(ml_state, MLFLOW_COMMAND) is not None
    if auth is None:
        auth = bool(ml_state.get("auth"))
    if ml_running and bool(ml_state.get("auth")) != auth:
        raise StackError(
            f"the MLflow server of this stack runs {'with' if ml_state.get('auth') else 'without'}"
            " basic auth; run `baldflow stack down` first to change that"
        )
    ml_port = _pick_port(mlflow_port, ml_state.get("port"), ml_running, "MLflow server", host)
    pf_state = state.get("prefect", {})
    pf_running = _running_pid(pf_state, PREFECT_COMMAND) is not None
    pf_port = _pick_port(prefect_port, pf_state.get("port"), pf_running, "Prefect server", host)
    if (ml_running or pf_running) and state.get("host", LOOPBACK) != host:
        raise StackError(
            f"the servers of this stack listen on {state.get('host', LOOPBACK)} already; run "
            f"`baldflow stack down` first to move them to {host}"
        )
    if pf_running and bool(pf_state.get("auth")) != auth:
        raise StackError(
            f"the Prefect server of this stack runs {'with' if pf_state.get('auth') else 'without'}"
            " an API auth string; run `baldflow stack down` first to change that"
        )
    artifacts = artifacts_destination or ml_state.get("artifacts_destination") or str(
        paths["artifacts"]
    )
    ls_state = state.get(LABEL_STUDIO) or {}
    if label_studio is None:  # recorded: once the stack has Label Studio, `up` keeps it
        label_studio = LABEL_STUDIO in state
    ls_running = _running_pid(ls_state, LABEL_STUDIO_COMMAND) is not None
    if ls_running and not label_studio:
        raise StackError(
            "the Label Studio of this stack runs; run `baldflow stack down` first to leave it out"
        )
    if ls_running and state.get("host", LOOPBACK) != host:
        raise StackError(
            f"the Label Studio of this stack listens on {state.get('host', LOOPBACK)} already; "
            f"run `baldflow stack down` first to move it to {host}"
        )
    ls_port = None
    if label_studio:
        ls_port = _pick_port(
            label_studio_port, ls_state.get("port"), ls_running, "Label Studio server", host
        )

    to_start: dict[str, MlflowServer | PrefectServer | studio.LabelStudioServer] = {}
    if ml_running:
        say(f"MLflow server runs already on {host}:{ml_port} (pid {ml_state['pid']})")
    else:
        to_start["mlflow"] = _mlflow_server(root, cluster, ml_port, auth, artifacts, host)
    if pf_running:
        say(f"Prefect server runs already on {host}:{pf_port} (pid {pf_state['pid']})")
    else:
        to_start["prefect"] = _prefect_server(root, cluster, pf_port, host, auth)
    if ls_running:
        say(f"Label Studio runs already on {host}:{ls_port} (pid {ls_state['pid']})")
    elif label_studio:
        to_start[LABEL_STUDIO] = _label_studio_server(root, ls_port, host, say)
    _start_side_by_side(to_start)

    if "mlflow" in to_start:
        server = to_start["mlflow"]
        ml_state = {**_record(server), "auth": auth}
        timings["mlflow_s"] = round(server.startup_seconds, 2)
        say(f"MLflow server ready on {server.url} in {server.startup_seconds:.1f} s"
            + (" (basic auth)" if auth else ""))
    if "prefect" in to_start:
        server = to_start["prefect"]
        pf_state = {**_record(server), "auth": auth}
        timings["prefect_s"] = round(server.startup_seconds, 2)
        say(f"Prefect server ready on {server.url} in {server.startup_seconds:.1f} s"
            + (" (API auth string)" if auth else ""))
    ml_state.update(url=f"http://{host}:{ml_port}", artifacts_destination=artifacts)
    if auth:
        ml_state.update(admin_username="admin",
                        admin_password_file=str(paths["secrets"] / "mlflow-admin-password"))
    pf_state["api_url"] = f"http://{host}:{pf_port}/api"
    if pf_state.get("auth"):
        pf_state["auth_string_file"] = str(_prefect_auth_file(root))
    state["mlflow"], state["prefect"] = ml_state, pf_state
    if LABEL_STUDIO in to_start:
        server = to_start[LABEL_STUDIO]
        ls_state = _record(server)
        timings["label_studio_s"] = round(server.startup_seconds, 2)
        say(f"Label Studio ready on {server.url} in {server.startup_seconds:.1f} s")
    if label_studio:
        # Its folder and secrets are STACK/label-studio and STACK/secrets/label-studio.json,
        # relative to the stack (TeamStack.label_studio_dir): no paths to go stale on a move.
        ls_state["url"] = f"http://{host}:{ls_port}"
        state[LABEL_STUDIO] = ls_state
    else:
        state.pop(LABEL_STUDIO, None)  # its data stays in STACK/label-studio
    state["host"], state["group"] = host, group
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


def _label_studio_server(
    root: Path, port: int, host: str, say: Report
) -> studio.LabelStudioServer:
    """The team's Label Studio: its database and files in STACK/label-studio (what a backup
    copies), its admin's login and token in STACK/secrets (0600)."""
    (root / "secrets").mkdir(mode=0o700, exist_ok=True)
    home = root / studio.STACK_HOME
    data = home / "data"
    first = not data.is_dir() or not any(data.iterdir())
    if not venvs.venv_ready(studio.default_venv(), studio.LABEL_STUDIO_REQUIREMENTS):
        say(f"building Label Studio's environment in {studio.default_venv()} (once; ~2 minutes)")
    say(f"starting Label Studio in {home}" + (" (a first start: ~40 s)" if first else ""))
    return studio.LabelStudioServer(
        home, port=port, host=host, detached=True,
        credentials_path=root / studio.STACK_CREDENTIALS,
    )  # fmt: skip


def _start_side_by_side(
    servers: dict[str, MlflowServer | PrefectServer | studio.LabelStudioServer],
) -> None:
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
        host=state.get("host") or LOOPBACK,
        prefect_auth_file=Path(pf["auth_string_file"]) if pf.get("auth_string_file") else None,
        group=state.get("group"),
        label_studio_url=(state.get(LABEL_STUDIO) or {}).get("url"),
    )


def _write_env_file(stack: TeamStack) -> None:
    lines = [
        f"# The baldflow team stack in {stack.dir} (written by `baldflow stack up`).",
        f"# Use it in a shell with: . {stack.env_file}",
    ]
    lines += [f"export {key}={value}" for key, value in stack.environment().items()]
    if stack.prefect_auth_file is not None:
        # Read when sourced: the secret stays in its own 0600 file, out of this one.
        quoted = shlex.quote(str(stack.prefect_auth_file))
        lines += [f'export {CLIENT_AUTH_ENV}="$(cat {quoted})"']
    if stack.label_studio_url:
        lines += [
            "# Label Studio: campaigns with oracle.kind label-studio use it; export your own",
            "# token as BALDFLOW_LABEL_STUDIO_TOKEN (your member env file has it).",
        ]
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


def _members(recorded: dict) -> list[int]:
    """The live processes of a recorded server's group: its leader and the workers it started
    (checked by group, session, start time and token: see process.group_members)."""
    pid = recorded.get("pid")
    if not pid:
        return []
    return group_members(
        recorded.get("pgid", pid), recorded.get("start_ticks"), recorded.get("token")
    )


def _who(pids: list[int]) -> str:
    return "; ".join(f"pid {pid}: {command_line(pid)[:60] or '?'}" for pid in pids[:3])


def _server_row(
    root: Path, part: str, recorded: dict, expect: str, health: str
) -> tuple[str, bool, str]:
    """Whether a server is healthy, told apart from its look-alikes: its recorded process gone
    while its orphaned workers still serve the port (which `up` would find taken), the port
    held by an unrelated process, or nothing running."""
    base = recorded.get("url") or recorded.get("api_url", "").removesuffix("/api")
    port = recorded.get("port")
    pid = _running_pid(recorded, expect)
    listening, holders = port_holders(port) if port else (False, [])
    members = _members(recorded)
    ours = [h for h in holders if h in members]
    strangers = [h for h in holders if h not in members]
    if pid is not None:
        ok, why = http_ok(base + health)
        extra = ", basic auth" if recorded.get("auth") else ""
        detail = f"{base} (pid {pid}{extra}): {health} {why}"
        if strangers and not ours:
            return part, False, f"{detail}; port {port} is held by another ({_who(strangers)})"
        return part, ok, detail
    if ours:
        _, why = http_ok(base + health)
        return part, False, (
            f"orphaned workers of pid {recorded['pid']} hold port {port} (pids "
            f"{', '.join(map(str, ours))}; {health} {why}), unsupervised: `baldflow stack up "
            f"--dir {root}` restarts the server"
        )
    if strangers:
        return part, False, (
            f"not running; port {port} is held by an unrelated process ({_who(strangers)})"
        )
    if listening:
        return part, False, f"not running; port {port} is held by another user's process"
    if members:
        return part, False, (
            f"not running; leftover processes of pid {recorded['pid']} (pids "
            f"{', '.join(map(str, members))}) hold no port: `baldflow stack down` stops them"
        )
    return part, False, f"not running ({base or 'never started'})"


def _stop_orphans(state: dict, say: Report) -> list[str]:
    """Stop what is left of each server whose recorded process is gone (orphaned workers,
    which may still serve its port): by their recorded group, never by name. Returns the
    parts that had some."""
    parts = []
    for part, expect in (("mlflow", MLFLOW_COMMAND), ("prefect", PREFECT_COMMAND),
                         (LABEL_STUDIO, LABEL_STUDIO_COMMAND)):
        recorded = state.get(part) or {}
        pid = recorded.get("pid")
        if not pid or _running_pid(recorded, expect) is not None:
            continue
        held = port_holders(recorded["port"])[1] if recorded.get("port") else []
        stopped = stop_group_members(
            recorded.get("pgid", pid), recorded.get("start_ticks"), recorded.get("token")
        )
        if stopped:
            holding = f", which held port {recorded['port']}" if set(stopped) & set(held) else ""
            say(f"{part}: recorded pid {pid} was gone; stopped its orphaned workers (pids "
                f"{', '.join(map(str, stopped))}){holding}")
            parts.append(part)
    return parts


def stack_status(dir: str | Path) -> list[tuple[str, bool, str]]:
    """(part, healthy, detail) for postgres, mlflow, prefect (label-studio when the stack
    has it), git and dvc."""
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
        rows.append(_server_row(root, part, state.get(part, {}), expect, health))
    if LABEL_STUDIO in state:
        rows.append(_server_row(root, LABEL_STUDIO, state[LABEL_STUDIO], LABEL_STUDIO_COMMAND,
                                "/health"))
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
    servers = (("prefect", PREFECT_COMMAND), ("mlflow", MLFLOW_COMMAND),
               (LABEL_STUDIO, LABEL_STUDIO_COMMAND))

    orphaned = _stop_orphans(state, say)

    def stop(part: str, expect: str) -> bool:
        recorded = state.get(part, {})
        pid = recorded.get("pid")
        return bool(pid) and stop_recorded_group(
            pid, recorded.get("start_ticks"), expect, token=recorded.get("token")
        )

    # Side by side: each takes seconds to wind down its workers, PostgreSQL waits for both.
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        was_running = list(pool.map(lambda item: stop(*item), servers))
    stopped = list(orphaned)
    for (part, _), running in zip(servers, was_running, strict=True):
        recorded = state.get(part, {})
        if running:
            stopped.append(part)
            say(f"{part}: stopped (pid {recorded['pid']})")
        elif recorded.get("pid") and part not in orphaned:
            say(f"{part}: was not running (pid {recorded['pid']} gone)")
        for key in ("pid", "pgid", "start_ticks", "token"):
            recorded.pop(key, None)
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
