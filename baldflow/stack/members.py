"""The team's members: `baldflow stack user add|list|password|remove NAME --dir STACK`.

A member is an MLflow login of the stack's tracking server (basic auth) that holds the role
`baldflow-member`: MANAGE on every experiment and every registered model of the server's
default workspace. That is what running a shared campaign takes. A clone writes runs into an
experiment another member may have created, deletes the parent run it opened for a round 0
another clone committed first (EDIT is not enough for that), and registers versions of a
registered model that belongs to whoever registered its first one. A role granted on the
pattern `*` covers the campaigns created before the member joined as well as later ones;
removing the member (the login is deleted) ends all of it at once.

Each member gets an env file of their own, STACK/members/NAME.env (0600, owned by their Unix
account when one is given): the servers' addresses, their login and nothing of the admin's.
Everything here is done as the stack's MLflow admin, whose password stays in STACK/secrets.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baldflow.stack.loopback import http_ok
from baldflow.stack.mlflow_server import MIN_PASSWORD_LENGTH, write_private_text
from baldflow.stack.team import LABEL_STUDIO_TOKEN_ENV, StackError, TeamStack, load_stack

MEMBER_ROLE = "baldflow-member"
# MLflow keeps roles per workspace; a server without workspaces has the one named "default".
MLFLOW_WORKSPACE = "default"
# What a member needs on every experiment and registered model (see the module's docstring).
MEMBER_GRANTS = (("experiment", "*", "MANAGE"), ("registered_model", "*", "MANAGE"))
MEMBERS_DIR = "members"
# Names become MLflow logins, file names and Label Studio accounts: letters, digits, . _ -.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")

Report = Callable[[str], None]


class MemberError(StackError):
    """A member command cannot do what was asked (the message says what and why)."""


@dataclass
class Member:
    name: str
    env_file: Path | None
    is_admin: bool = False
    member_role: bool = False
    password: str | None = None  # set only by the call that chose it


def _check_name(name: str, stack: TeamStack) -> str:
    if not _NAME.fullmatch(name or ""):
        raise MemberError(
            f"{name!r} is not a member name: use a letter, then letters, digits, '.', '_' or "
            "'-' (at most 64 characters)"
        )
    if name == stack.admin_username:
        raise MemberError(f"{name!r} is the stack's MLflow admin, not a member")
    return name


def _authenticated_stack(dir: str | Path) -> TeamStack:
    stack = load_stack(dir)
    if not stack.auth:
        raise MemberError(
            f"the MLflow server of {stack.dir} runs without auth, so it has no logins: restart "
            f"it with `baldflow stack down --dir {stack.dir}` then `baldflow stack up --dir "
            f"{stack.dir} --auth`"
        )
    answers, why = http_ok(stack.mlflow_uri + "/health")
    if not answers:
        raise MemberError(
            f"the MLflow server of {stack.dir} does not answer ({why}): start it with "
            f"`baldflow stack up --dir {stack.dir}`"
        )
    return stack


class _AdminClient:
    """MLflow's auth client with the admin's credentials given explicitly: MLflow's own
    reads them from MLFLOW_TRACKING_USERNAME/PASSWORD, which the admin's shell may set to a
    member's login."""

    def __init__(self, stack: TeamStack):
        from mlflow.server.auth.client import AuthServiceClient
        from mlflow.utils.credentials import MlflowHostCreds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        creds = MlflowHostCreds(
            stack.mlflow_uri, username=stack.admin_username, password=stack.admin_password()
        )

        class Client(AuthServiceClient):
            def _request(self, endpoint, method, *, expected_status: int = 200, **kwargs):
                response = http_request(creds, endpoint, method, **kwargs)
                response = verify_rest_response(response, endpoint, expected_status)
                if response.status_code == 204 or not response.content:
                    return {}
                return response.json()

        self.client = Client(stack.mlflow_uri)
        self.creds = creds

    def user(self, name: str) -> Any | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_user(name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def users(self) -> list[dict]:
        """Every login, sorted by name, as MLflow lists them: username, is_admin and the
        roles it holds (one request, which the auth client has no method for)."""
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/users/list"
        response = verify_rest_response(http_request(self.creds, endpoint, "GET"), endpoint)
        return sorted(response.json().get("users", []), key=lambda user: user["username"])


def _already_exists(error: Exception) -> bool:
    return getattr(error, "error_code", "") == "RESOURCE_ALREADY_EXISTS"


def ensure_member_role(admin: _AdminClient) -> int:
    """The role's id, created with its grants if missing. Two admins (or two `user add`s) at
    once: "already exists" means use it, so both end with the one role and its grants."""
    from mlflow.exceptions import MlflowException

    def find() -> Any | None:
        return next(
            (r for r in admin.client.list_roles(MLFLOW_WORKSPACE) if r.name == MEMBER_ROLE), None
        )

    role = find()
    if role is None:
        try:
            role = admin.client.create_role(
                MLFLOW_WORKSPACE, MEMBER_ROLE,
                "baldflow team members: run, resume, repair and discard in every campaign",
            )  # fmt: skip
        except MlflowException as error:
            if not _already_exists(error):
                raise
            role = find()
    granted = admin.client.list_role_permissions(role.id)
    have = {(p.resource_type, p.resource_pattern): p for p in granted}
    for resource_type, pattern, permission in MEMBER_GRANTS:
        held = have.get((resource_type, pattern))
        if held is None:
            try:
                admin.client.add_role_permission(role.id, resource_type, pattern, permission)
            except MlflowException as error:
                if not _already_exists(error):
                    raise
        elif held.permission != permission:
            admin.client.update_role_permission(held.id, permission)
    return role.id


def _holds_role(admin: _AdminClient, name: str) -> bool:
    return any(role.name == MEMBER_ROLE for role in admin.client.list_user_roles(name))


# -- member env files -----------------------------------------------------------------------


def members_dir(stack: TeamStack) -> Path:
    return stack.dir / MEMBERS_DIR


def env_file(stack: TeamStack, name: str) -> Path:
    return members_dir(stack) / f"{name}.env"


def _quote(value: str) -> str:
    """A value for a POSIX shell's `export`, quoted so that no character is special."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def member_environment(
    stack: TeamStack, name: str, password: str, label_studio_token: str | None = None
) -> dict[str, str]:
    """What the member exports: the servers' addresses, the shared secrets a member's client
    needs (Prefect's auth string, when the stack has one), their own login and, when the
    stack runs Label Studio, their own API token there."""
    env = {**stack.environment(), **stack.member_secrets()}
    env.update(
        BALDFLOW_OPERATOR=name,
        MLFLOW_TRACKING_USERNAME=name,
        MLFLOW_TRACKING_PASSWORD=password,
    )
    if label_studio_token:
        env[LABEL_STUDIO_TOKEN_ENV] = label_studio_token
    return env


def _labeler(stack: TeamStack, name: str, password: str, say: Report) -> str | None:
    """NAME's Label Studio account (same password as their MLflow login), when the stack
    runs Label Studio; its API token."""
    if not stack.label_studio_url:
        return None
    from baldflow.stack.label_studio import add_labeler, labeler_email

    token = add_labeler(stack.dir, name, password)
    say(f"{name} labels in Label Studio as {labeler_email(name)} (same password)")
    return token


def _unix_account(unix_user: str | None) -> pwd.struct_passwd | None:
    if not unix_user:
        return None
    try:
        return pwd.getpwnam(unix_user)
    except KeyError:
        raise MemberError(f"there is no Unix account {unix_user!r} on this host") from None


def write_env_file(
    stack: TeamStack, name: str, environment: dict[str, str], unix_user: str | None
) -> Path:
    """STACK/members/NAME.env, 0600, owned by `unix_user` when given (else by whoever runs
    this: the member sources a copy the admin hands over). The directory is 0711: a member
    opens their own file by its path and cannot list the others."""
    account = _unix_account(unix_user)
    folder = members_dir(stack)
    folder.mkdir(exist_ok=True)
    os.chmod(folder, 0o711)
    path = env_file(stack, name)
    lines = [
        f"# baldflow team member {name} of the stack in {stack.dir} "
        "(written by `baldflow stack user`).",
        f"# Use it in a shell with: . {path}",
        *(f"export {key}={_quote(value)}" for key, value in environment.items()),
    ]
    write_private_text(path, "\n".join(lines) + "\n")
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    return path


def _password_in(path: Path) -> str | None:
    """The MLflow password an existing env file gives its member (to refresh the file's
    addresses without changing the login)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("export MLFLOW_TRACKING_PASSWORD="):
            value = line.split("=", 1)[1]
            return value[1:-1].replace("'\"'\"'", "'") if value.startswith("'") else value
    return None


def new_password() -> str:
    return secrets.token_urlsafe(max(18, MIN_PASSWORD_LENGTH))


# -- the commands ---------------------------------------------------------------------------


def add_member(
    dir: str | Path,
    name: str,
    *,
    unix_user: str | None = None,
    report: Report | None = None,
) -> Member:
    """Make NAME a member: their MLflow login (created with a new password if missing), the
    member role, and their env file. Safe to run again: an existing login keeps its password
    (its env file is refreshed when there is one; `set_password` chooses a new one)."""
    say = report or (lambda _line: None)
    stack = _authenticated_stack(dir)
    _check_name(name, stack)
    _unix_account(unix_user)  # refuse an unknown account before anything changes
    admin = _AdminClient(stack)
    role_id = ensure_member_role(admin)
    existing = admin.user(name)
    password = None
    if existing is None:
        password = new_password()
        try:
            admin.client.create_user(name, password)
            say(f"MLflow login {name} created")
        except Exception as error:
            if not _already_exists(error):
                raise
            password = None  # another `user add` made it this instant: its password stands
    elif existing.is_admin:
        raise MemberError(f"{name!r} is an MLflow admin of this stack, not a member")
    if not _holds_role(admin, name):
        try:
            admin.client.assign_role(name, role_id)
        except Exception as error:
            if not _already_exists(error):
                raise
        say(f"{name} holds role {MEMBER_ROLE} (MANAGE on every experiment and registered model)")
    path = env_file(stack, name)
    if password is None:
        password = _password_in(path)
        if password is None:
            say(
                f"{name} is an MLflow login already and has no env file here: run `baldflow "
                f"stack user password {name} --dir {stack.dir}` to choose a new password and "
                "write one"
            )
            return Member(name, None, member_role=True)
    token = _labeler(stack, name, password, say)
    environment = member_environment(stack, name, password, token)
    written = write_env_file(stack, name, environment, unix_user)
    say(f"{name}'s env file: {written} (their login and the servers' addresses)")
    return Member(name, written, member_role=True, password=password)


def set_password(
    dir: str | Path, name: str, *, unix_user: str | None = None, report: Report | None = None
) -> Member:
    """Give member NAME a new MLflow password and rewrite their env file (password rotation;
    the old password stops working at once, after the server's one-minute login cache)."""
    say = report or (lambda _line: None)
    stack = _authenticated_stack(dir)
    _check_name(name, stack)
    admin = _AdminClient(stack)
    if admin.user(name) is None:
        raise MemberError(
            f"{name!r} is not a member of the stack in {stack.dir}: add them with `baldflow "
            f"stack user add {name} --dir {stack.dir}`"
        )
    password = new_password()
    admin.client.update_user_password(name, password)
    if unix_user is None:
        unix_user = _owner_of(env_file(stack, name))
    token = _labeler(stack, name, password, say)
    environment = member_environment(stack, name, password, token)
    written = write_env_file(stack, name, environment, unix_user)
    say(f"{name} has a new password, in {written}")
    return Member(name, written, member_role=True, password=password)


def _owner_of(path: Path) -> str | None:
    """The Unix account an env file was handed to (kept when it is rewritten)."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return None
    if uid == os.geteuid():
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def remove_member(dir: str | Path, name: str, *, report: Report | None = None) -> bool:
    """End NAME's access: their MLflow login is deleted (runs they made keep their name) and
    their env file removed. False when they were no member."""
    say = report or (lambda _line: None)
    stack = _authenticated_stack(dir)
    _check_name(name, stack)
    admin = _AdminClient(stack)
    found = admin.user(name)
    if found is not None and found.is_admin:
        raise MemberError(f"{name!r} is an MLflow admin of this stack, not a member")
    if found is not None:
        admin.client.delete_user(name)
        say(f"MLflow login {name} deleted: no more reads or writes on the tracking server")
    if stack.label_studio_url:
        from baldflow.stack.label_studio import remove_labeler

        if remove_labeler(stack.dir, name):
            say(f"{name}'s Label Studio account deactivated (their annotations keep their name)")
    path = env_file(stack, name)
    had_file = path.exists()
    path.unlink(missing_ok=True)
    if had_file:
        say(f"removed {path}")
    return found is not None


def list_members(dir: str | Path) -> list[Member]:
    """Every login of the stack's MLflow server, whether it holds the member role, and its
    env file if the stack wrote one."""
    stack = _authenticated_stack(dir)
    admin = _AdminClient(stack)
    members = []
    for user in admin.users():
        path = env_file(stack, user["username"])
        members.append(
            Member(
                user["username"],
                path if path.exists() else None,
                is_admin=bool(user.get("is_admin")),
                member_role=MEMBER_ROLE in {role.get("name") for role in user.get("roles", [])},
            )
        )
    return members

