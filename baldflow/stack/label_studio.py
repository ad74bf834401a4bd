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
    credentials.json   admin login (an email), password and API token (0600; never in git;
                       a team stack keeps it in STACK/secrets/label-studio.json instead)
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
import re
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


def credentials(home: Path, path: Path | None = None) -> dict[str, str]:
    """The admin login, password and API token of the server in `home` (made on first use),
    kept in `path` (default `home`/credentials.json)."""
    path = path if path is not None else home / "credentials.json"
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
    """`label-studio start` for the folder `home` (see the module docstring).

    `host`: the address it listens on (127.0.0.1; a team stack may bind the address its
    members reach). `credentials_path`: where the admin's login and token are kept (default
    `home`/credentials.json).
    """

    def __init__(
        self,
        home: str | Path,
        *,
        port: int | None = None,
        host: str = HOST,
        venv: str | Path | None = None,
        detached: bool = False,
        startup_timeout: float = 240.0,
        credentials_path: str | Path | None = None,
    ):
        self.home = Path(home).absolute()
        self.port = port
        self.host = host
        self.venv = Path(venv) if venv is not None else None
        self.detached = detached
        self.startup_timeout = startup_timeout
        self.process: ManagedProcess | None = None
        self.startup_seconds: float | None = None
        self.credentials_path = (
            Path(credentials_path).absolute() if credentials_path is not None
            else self.home / "credentials.json"
        )  # fmt: skip
        self._credentials = credentials(self.home, self.credentials_path)

    url = property(lambda self: f"http://{self.host}:{self.port}")
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
            # Accounts only through the invite link (or add_labeler): never open sign-up.
            LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
        )
        return env

    def command(self, venv: Path) -> list[str]:
        return [
            str(venv / "bin" / "label-studio"), "start", "--no-browser",
            "--internal-host", self.host, "--port", str(self.port),
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
            self.port = free_port(self.host)
        elif not port_is_free(self.port, self.host):
            raise LabelStudioError(
                f"port {self.port} on {self.host} is taken: Label Studio cannot listen there; "
                "choose another with --port"
            )
        self.document_root.mkdir(parents=True, exist_ok=True)
        process = ManagedProcess(
            f"Label Studio on {self.host}:{self.port}", self.command(venv),
            env=self.environment(),
            cwd=self.home, log_path=self.log_path, detached=self.detached,
        )  # fmt: skip
        self.process = process.start()
        return process

    def wait_ready(self, deadline: float) -> None:
        """Wait until the launched server answers and takes the token (LabelStudioError with
        the end of its log if it exits or `deadline`, a time.monotonic(), passes first)."""
        try:
            wait_until_answers(
                self.process, f"{self.url}/health",
                what=f"Label Studio on {self.host}:{self.port}",
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
                f"Label Studio in {self.home} refuses the token of {self.credentials_path} (HTTP "
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


# -- labeler accounts ---------------------------------------------------------------------
# Label Studio 1.23's API cannot set a password, (de)activate an account or bring back a
# removed member (DELETE /api/organizations/ID/memberships/USER/ only hides the member, whose
# annotations then show as "Deleted User"). So accounts are managed where the server's
# database is, through Django in Label Studio's own environment: the password travels on
# stdin, never on a command line. Removing deactivates (is_active false): the login and the
# token stop working at once, and the person's name stays on their annotations.

# Where a team stack keeps its server: STACK/label-studio, the admin in STACK/secrets.
STACK_HOME = LOCAL_SERVER_DIR
STACK_CREDENTIALS = Path("secrets") / "label-studio.json"
# A labeler named by a bare name (a team member) logs in as NAME@LABELER_DOMAIN.
LABELER_DOMAIN = "baldflow.local"
_BARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EMAIL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_RESULT_MARK = "baldflow-result: "
MIN_LABELER_PASSWORD = 8  # Label Studio 1.23's AUTH_PASSWORD_MIN_LENGTH

_USERS_SCRIPT = r"""
import json, os, sys
import label_studio
sys.path.insert(0, os.path.dirname(label_studio.__file__))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")
import django
django.setup()
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from organizations.models import Organization, OrganizationMember
from rest_framework.authtoken.models import Token
from users.models import User

def answer(**body):
    print("@MARK@" + json.dumps(body), flush=True)
    sys.exit(0)

request = json.loads(sys.stdin.read())
org = Organization.objects.order_by("id").first()
if org is None:
    answer(error="the server has no organization yet: start it once first")
email = request.get("email", "")
user = User.objects.filter(email__iexact=email).first() if email else None
if request["action"] == "list":
    members = OrganizationMember.objects.filter(organization=org).select_related("user")
    answer(users=[{"id": m.user.id, "email": m.user.email, "active": m.user.is_active and
                   m.deleted_at is None} for m in members.order_by("user_id")])
if user is not None and org.created_by_id == user.id:
    answer(error="that is the server's admin, not a labeler")
if request["action"] == "remove":
    if user is None or not user.is_active:
        answer(removed=False)
    user.is_active = False
    user.save(update_fields=["is_active"])
    answer(removed=True)
try:
    validate_password(request["password"], user)
except ValidationError as error:
    answer(error="the password is refused: " + " ".join(error.messages))
with transaction.atomic():
    created = user is None
    if created:
        user = User.objects.create_user(email, request["password"])
        user.username = request["username"]
    else:
        user.set_password(request["password"])
        user.is_active = True
    user.save()
    member = OrganizationMember.objects.filter(user=user, organization=org).first()
    if member is None:
        org.add_user(user)
    elif member.deleted_at is not None:
        member.deleted_at = None
        member.save(update_fields=["deleted_at"])
    user.active_organization = org
    user.save(update_fields=["active_organization"])
    token, _ = Token.objects.get_or_create(user=user)
answer(id=user.id, token=token.key, created=created)
""".replace("@MARK@", _RESULT_MARK)


class LabelerError(LabelStudioError):
    """A labeler account cannot be added or removed (the message says why)."""


def labeler_email(user: str) -> str:
    """The login of labeler `user`: an email as given (lower case, as Label Studio keeps
    it), or a bare name (a team member's) as NAME@baldflow.local."""
    user = (user or "").strip()
    if _BARE_NAME.fullmatch(user):
        return f"{user.lower()}@{LABELER_DOMAIN}"
    if _EMAIL.fullmatch(user) and len(user) < 200:
        return user.lower()
    raise LabelerError(
        f"{user[:80]!r} is not a labeler name: give an email address, or a name of letters, "
        "digits, '.', '_' and '-' (at most 64 characters)"
    )


def server_of(where: str | Path) -> LabelStudioServer:
    """The server (not started) of `where`: a team stack's directory (its server in
    STACK/label-studio, the admin in STACK/secrets) or a server's own folder."""
    where = Path(where).absolute()
    if (where / "stack.json").is_file():
        home, creds = where / STACK_HOME, where / STACK_CREDENTIALS
    else:
        home, creds = where, where / "credentials.json"
    if not (home / "data").is_dir() or not creds.is_file():
        raise LabelerError(
            f"no Label Studio server has run in {where}: start it first (`baldflow stack up "
            "--label-studio` or `baldflow label-studio up`)"
        )
    return LabelStudioServer(home, credentials_path=creds)


def _manage_users(where: str | Path, request: dict) -> dict:
    import subprocess

    server = server_of(where)
    venv = ensure_venv(server.venv)
    for attempt in range(3):
        try:
            done = subprocess.run(
                [str(venv / "bin" / "python"), "-c", _USERS_SCRIPT], input=json.dumps(request),
                env=server.environment(), cwd=server.home, capture_output=True, text=True,
                timeout=180,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise LabelerError(
                f"Label Studio's account tool in {server.home} took over 180 s"
            ) from None
        found = [line for line in done.stdout.splitlines() if line.startswith(_RESULT_MARK)]
        if done.returncode == 0 and found:
            break
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[-400:]
        # The running server may hold SQLite's write lock for a moment: try again.
        if "database is locked" not in tail or attempt == 2:
            raise LabelerError(f"Label Studio's account tool failed in {server.home}: {tail}")
        time.sleep(1.0)
    answer = json.loads(found[-1][len(_RESULT_MARK):])
    if "error" in answer:
        raise LabelerError(f"Label Studio in {server.home}: {answer['error']}")
    return answer


def add_labeler(where: str | Path, user: str, password: str) -> str:
    """Give `user` (an email, or a bare name that logs in as NAME@baldflow.local) an account
    on the Label Studio server of `where` (a team stack's directory or a server's folder),
    with `password`; returns the account's API token (a legacy token: what
    BALDFLOW_LABEL_STUDIO_TOKEN holds). Idempotent: an existing account is kept (same id and
    token, so its annotations stay its own), its password set to `password`, and a removed
    one comes back. Works whether or not the server runs (it needs to have run once)."""
    email = labeler_email(user)
    if email == ADMIN:
        raise LabelerError(f"{ADMIN} is the server's admin, not a labeler")
    if not MIN_LABELER_PASSWORD <= len(password or "") <= 128:
        raise LabelerError(
            f"the password is refused: Label Studio takes {MIN_LABELER_PASSWORD} to 128 characters"
        )
    answer = _manage_users(where, {
        "action": "add", "email": email, "username": email.split("@")[0], "password": password,
    })  # fmt: skip
    return str(answer["token"])


def remove_labeler(where: str | Path, user: str) -> bool:
    """Deactivate labeler `user` on the server of `where`: their login and token are refused
    from now on; their annotations keep their name (Label Studio 1.23 deletes no account that
    annotated). Returns whether an active account was deactivated; add_labeler brings it
    back."""
    email = labeler_email(user)
    if email == ADMIN:
        raise LabelerError(f"{ADMIN} is the server's admin, not a labeler")
    return bool(_manage_users(where, {"action": "remove", "email": email})["removed"])


def labelers(where: str | Path) -> list[dict]:
    """The accounts of the server's organization: id, email and whether it is active (the
    admin included)."""
    return list(_manage_users(where, {"action": "list"})["users"])


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
