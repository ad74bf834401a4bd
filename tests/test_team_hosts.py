"""A team on several hosts and several Unix accounts, as far as one machine allows.

The stack binds its servers to 198.18.N.1 (a veth link into a network namespace); a member is
another Unix account whose processes run in that namespace, so they reach the stack over that
address only, through MLflow's basic auth and Prefect's API auth string, and push to the git
and DVC remotes over ssh (a private sshd on the same address). The same account on the
stack's host then works through the shared directory (Unix group, setgid, safe.directory).
Without root or `ip netns` this module skips, except on CI, where it fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import netns
import pytest
import yaml

pytestmark = pytest.mark.servers

BALDFLOW = [sys.executable, "-c", "import sys; from baldflow.cli import main; sys.exit(main())"]
CAMPAIGN = "tiny"


def _needs_or_skip() -> None:
    from baldflow.stack.postgres import PostgresNotInstalledError, find_bindir

    why = netns.why_not_available()
    if why is None:
        try:
            find_bindir()
        except PostgresNotInstalledError as exc:
            why = f"the team stack needs PostgreSQL: {exc}"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the several-hosts tests: {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def site():
    """(base directory, network namespace, Unix account), all removed on every way out."""
    _needs_or_skip()
    base = Path(tempfile.mkdtemp(prefix="baldflow-hosts-"))
    os.chmod(base, 0o755)  # the account and the PostgreSQL account pass through
    try:
        with netns.Netns() as ns, netns.UnixAccount(base) as account:
            yield base, ns, account
    finally:
        shutil.rmtree(base, ignore_errors=True)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_up_refuses_an_open_address_without_auth_and_an_unknown_group(site):
    from baldflow.stack.team import (
        BindAddressError,
        InsecureBindError,
        SharedRemotesError,
        stack_up,
    )

    base, ns, _ = site
    target = base / "refused"
    with pytest.raises(InsecureBindError, match="--auth"):
        stack_up(target, host=ns.stack_address)
    assert not (target / "stack.json").exists()  # refused before anything started
    with pytest.raises(BindAddressError, match="not an address of this machine"):
        stack_up(target, host="198.19.255.254", auth=True)
    with pytest.raises(BindAddressError, match="every network"):
        stack_up(target, host="0.0.0.0", auth=True)
    said = subprocess.run(
        [*BALDFLOW, "stack", "up", "--dir", str(target), "--host", ns.stack_address],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert said.returncode != 0
    lines = said.stderr.strip().splitlines()
    assert len(lines) == 1 and "--auth" in lines[0] and "Traceback" not in said.stderr, said
    with pytest.raises(SharedRemotesError, match="groupadd"):
        stack_up(base / "no-group", group=f"bfnone{uuid.uuid4().hex[:6]}")
    assert not (base / "no-group" / "stack.json").exists()  # before PostgreSQL started


class Member:
    """The account's processes: in the namespace ("another host") or here (the stack's host),
    with the env file `stack user add` wrote for it sourced, as a login shell would."""

    def __init__(self, base: Path, ns: netns.Netns, account: netns.UnixAccount, env_file: Path):
        self.base, self.ns, self.account, self.env_file = base, ns, account, env_file
        self.logs = base / "logs"
        self.logs.mkdir(exist_ok=True)
        self.seconds: dict[str, float] = {}

    def run(self, args: list[str], log: str, *, elsewhere: bool, timeout: float = 240) -> str:
        from baldflow.workspace.repo import OFFLINE_ENVIRONMENT

        account = self.account
        env = account.environment({
            **OFFLINE_ENVIRONMENT,
            "PREFECT_HOME": str(account.home / "prefect"),
            "DVC_SITE_CACHE_DIR": str(account.home / "dvc-site"),
            "PYTHONDONTWRITEBYTECODE": "1",
        })  # fmt: skip
        shell = ['. "$0" && exec "$@"', str(self.env_file), *BALDFLOW, *args]
        argv = account.command(["/bin/sh", "-c", *shell])
        if elsewhere:
            argv = [*self.ns.prefix(), *argv]
        argv = [*netns.expose_interpreter(self.base / "interpreter"), *argv]
        path = self.logs / f"{log}.log"
        with path.open("w") as handle:
            proc = subprocess.Popen(
                argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=account.home,
                start_new_session=True,
            )  # fmt: skip
        started = time.monotonic()
        try:
            code = proc.wait(timeout=timeout)
            self.seconds[log] = round(time.monotonic() - started, 1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        text = path.read_text()
        assert code == 0, text[-6000:]
        return text


def _prefect_flow_runs(api_url: str, auth_string: str | None) -> int | str:
    """How many flow runs the server has, or the HTTP status it refused with."""
    request = urllib.request.Request(
        f"{api_url}/flow_runs/count", data=b"{}", method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    if auth_string is not None:
        token = base64.b64encode(auth_string.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as answer:
            return int(json.loads(answer.read()))
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"


def _shared_with(top: Path, gid: int) -> list[str]:
    """What under `top` a member of the group could not extend: directories not the group's,
    not setgid or not group-writable; files not group-readable."""
    problems = []
    for folder, dirs, files in os.walk(top):
        for name in dirs:
            info = (Path(folder) / name).stat()
            if info.st_gid != gid or (info.st_mode & 0o2070) != 0o2070:
                problems.append(f"{folder}/{name} {oct(info.st_mode)} gid {info.st_gid}")
        for name in files:
            info = (Path(folder) / name).stat()
            if info.st_gid != gid or not info.st_mode & stat.S_IRGRP:
                problems.append(f"{folder}/{name} {oct(info.st_mode)} gid {info.st_gid}")
    return problems


def test_a_member_on_another_host_and_account_runs_rounds_against_a_bound_stack(
    site, tiny_params, monkeypatch
):
    from baldflow.stack.members import add_member
    from baldflow.stack.team import StackError, stack_down, stack_up

    base, ns, account = site
    started = time.monotonic()
    stack = stack_up(base / "stack", host=ns.stack_address, auth=True, group=account.group)
    try:
        assert stack.mlflow_uri == f"http://{ns.stack_address}:{stack.mlflow_port}"
        assert stack.prefect_api_url == f"http://{ns.stack_address}:{stack.prefect_port}/api"
        secret = stack.member_secrets()["PREFECT_API_AUTH_STRING"]
        assert stat.S_IMODE(stack.prefect_auth_file.stat().st_mode) == 0o600
        assert secret not in stack.env_file.read_text()
        state = json.loads((stack.dir / "stack.json").read_text())
        assert state["host"] == ns.stack_address and secret not in json.dumps(state)
        assert _prefect_flow_runs(stack.prefect_api_url, None) == "HTTP 401"
        stack_s = time.monotonic() - started

        member = add_member(stack.dir, "ann", unix_user=account.name)
        # The stack's host, as ssh sessions of the account see it: git there trusts the
        # stack's repository (git refuses another account's repository otherwise).
        server_gitconfig = base / "server-gitconfig"
        server_gitconfig.write_text(f"[safe]\n\tdirectory = {stack.git_remote}\n")
        sshd = netns.PrivateSshd(
            base, ns.stack_address, account, {"GIT_CONFIG_GLOBAL": str(server_gitconfig)}
        )
        with sshd:
            _member_rounds(base, ns, account, member.env_file, stack, sshd, tiny_params,
                           monkeypatch)  # fmt: skip
        # `up` again keeps the recorded address, auth and group; moving it needs a `down`.
        again = stack_up(stack.dir)
        assert again.already_up and again.environment() == stack.environment()
        assert again.member_secrets() == stack.member_secrets() and again.group == account.group
        with pytest.raises(StackError, match="down"):
            stack_up(stack.dir, host="127.0.0.1")
        print(f"stack up on {ns.stack_address} with auth: {stack_s:.1f} s; "
              f"whole test {time.monotonic() - started:.1f} s")  # fmt: skip
    finally:
        with contextlib.suppress(StackError):
            stack_down(stack.dir)


def _member_rounds(base, ns, account, env_file, stack, sshd, tiny_params, monkeypatch):
    experiment = f"hosts-{uuid.uuid4().hex[:8]}"
    params = dict(tiny_params)
    params["campaign"] = {**params["campaign"], "rounds": 0}
    params["tracking"] = {"mlflow_uri": stack.mlflow_uri, "experiment": experiment,
                          "register_model": False}  # fmt: skip
    params["training"] = {**params["training"], "num_threads": 1}
    params_path = account.write("params.yaml", yaml.safe_dump(params), 0o644)
    member = Member(base, ns, account, env_file)
    bare, dvc_remote = Path(stack.git_remote), Path(stack.dvc_remote)

    # On another host: git and DVC over ssh, MLflow and Prefect at the bound address.
    away = account.home / "ws"
    member.run(["init", str(away), "-c", str(params_path), "--git-remote",
                sshd.url(bare), "--dvc-remote", sshd.url(dvc_remote)],
               "init-away", elsewhere=True)  # fmt: skip
    member.run(["run", "--workspace", str(away)], "run-away", elsewhere=True)
    tags = [f"{CAMPAIGN}/round-{r:04d}" for r in range(2)]
    assert sorted(git(bare, "tag", "--list", f"{CAMPAIGN}/round-*").split()) == tags[:1]
    objects = [p for p in dvc_remote.rglob("*") if p.is_file()]
    assert objects and all(p.stat().st_uid == account.uid for p in objects)
    auth_string = stack.member_secrets()["PREFECT_API_AUTH_STRING"]
    assert _prefect_flow_runs(stack.prefect_api_url, auth_string) >= 1

    # On the stack's host: the same account clones through the shared directory (another
    # account's repository: baldflow names it safe for its own git calls) and runs a round.
    here = account.home / "ws-here"
    member.run(["init", str(here), "--clone", str(bare)], "clone-here", elsewhere=False)
    member.run(["run", "--workspace", str(here), "--set", "campaign.rounds=1"], "run-here",
               elsewhere=False)  # fmt: skip
    assert sorted(git(bare, "tag", "--list", f"{CAMPAIGN}/round-*").split()) == tags
    assert git(bare, "config", "core.sharedRepository") == "group"
    gid = account.gid
    assert _shared_with(bare.parent, gid) == []
    assert _shared_with(dvc_remote, gid) == []

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.admin_password())
    client = MlflowClient(tracking_uri=stack.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert runs and {r.info.user_id for r in runs} == {"ann"}
    rounds = {r.data.tags.get("baldflow.round") for r in runs if r.info.status == "FINISHED"}
    assert "1" in rounds
    print(f"member's commands (s): {member.seconds}")
