"""A team on several hosts and several Unix accounts, as far as one machine allows.

The stack binds its servers to 198.18.N.1 (a veth link into a network namespace). Three
members race one campaign from three clones: Ann, another Unix account, and Bob run in that
namespace ("another host"), so they reach MLflow (basic auth) and Prefect (its API auth
string) over that address only; Ann pushes to the git and DVC remotes over ssh (a private sshd
on the same address), Bob through the shared directory; Cid works on the stack's host. Every
member's login and env file come from `baldflow stack user add`. Without root or `ip netns`
this module skips, except on CI, where it fails.
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
    """A member's processes: the account's (`account`, None: root's), in the namespace
    ("another host") or here (the stack's host), with the env file `stack user add` wrote
    for them sourced, as a login shell would."""

    def __init__(
        self, base: Path, ns: netns.Netns, account: netns.UnixAccount | None, env_file: Path,
        name: str,
    ):  # fmt: skip
        self.base, self.ns, self.account, self.env_file = base, ns, account, env_file
        self.name = name
        self.home = account.home if account is not None else base / f"home-{name}"
        self.home.mkdir(exist_ok=True)
        self.logs = base / "logs"
        self.logs.mkdir(exist_ok=True)
        self.seconds: dict[str, float] = {}

    def _argv_env(self, args: list[str], elsewhere: bool) -> tuple[list[str], dict[str, str]]:
        from baldflow.workspace.repo import OFFLINE_ENVIRONMENT

        extra = {
            **OFFLINE_ENVIRONMENT,
            "PREFECT_HOME": str(self.home / "prefect"),
            "DVC_SITE_CACHE_DIR": str(self.home / "dvc-site"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        shell = ["/bin/sh", "-c", '. "$0" && exec "$@"', str(self.env_file), *BALDFLOW, *args]
        if self.account is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
            env.update(extra, HOME=str(self.home))
            argv = shell
        else:
            env = self.account.environment(extra)
            argv = self.account.command(shell)
        if elsewhere:
            argv = [*self.ns.prefix(), *argv]
        if self.account is not None:
            argv = [*netns.expose_interpreter(self.base / "interpreter"), *argv]
        return argv, env

    def start(self, args: list[str], log: str, *, elsewhere: bool) -> subprocess.Popen:
        argv, env = self._argv_env(args, elsewhere)
        with (self.logs / f"{log}.log").open("w") as handle:
            proc = subprocess.Popen(
                argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=self.home,
                start_new_session=True,
            )  # fmt: skip
        proc.started = time.monotonic()  # type: ignore[attr-defined]
        proc.log = log  # type: ignore[attr-defined]
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float = 300, code: int = 0) -> str:
        try:
            returned = proc.wait(timeout=timeout)
            self.seconds[proc.log] = round(time.monotonic() - proc.started, 1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        text = (self.logs / f"{proc.log}.log").read_text()
        assert returned == code, text[-6000:]
        return text

    def run(self, args: list[str], log: str, *, elsewhere: bool, timeout: float = 240) -> str:
        return self.wait(self.start(args, log, elsewhere=elsewhere), timeout)


def _prefect_post(api_url: str, path: str, body: dict, auth_string: str | None):
    """POST `body` to the Prefect API at `path` (with the member's auth string, if any), not
    through a proxy: the answer's JSON."""
    request = urllib.request.Request(
        f"{api_url}/{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    if auth_string is not None:
        token = base64.b64encode(auth_string.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as answer:
        return json.loads(answer.read())


def _prefect_flow_runs(api_url: str, auth_string: str | None) -> int | str:
    """How many flow runs the server has, or the HTTP status it refused with."""
    try:
        return int(_prefect_post(api_url, "flow_runs/count", {}, auth_string))
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"


def _prefect_tagged_runs(api_url: str, auth_string: str, tags: list[str]) -> list[dict]:
    """The server's flow runs that carry every one of `tags`."""
    body = {"flow_runs": {"tags": {"all_": tags}}, "limit": 200}
    return _prefect_post(api_url, "flow_runs/filter", body, auth_string)


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


def test_three_members_on_two_hosts_and_two_accounts_race_one_campaign(
    site, tiny_params, monkeypatch
):
    from baldflow.stack.members import add_member, remove_member
    from baldflow.stack.mlflow_server import AUTH_CACHE_SECONDS
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

        env_files = {"ann": add_member(stack.dir, "ann", unix_user=account.name).env_file,
                     "bob": add_member(stack.dir, "bob").env_file,
                     "cid": add_member(stack.dir, "cid").env_file}  # fmt: skip
        # The stack's host, as ssh sessions of the account see it: git there trusts the
        # stack's repository (git refuses another account's repository otherwise).
        server_gitconfig = base / "server-gitconfig"
        server_gitconfig.write_text(f"[safe]\n\tdirectory = {stack.git_remote}\n")
        sshd = netns.PrivateSshd(
            base, ns.stack_address, account, {"GIT_CONFIG_GLOBAL": str(server_gitconfig)}
        )
        with sshd:
            cid, cid_ws = _three_members_race(base, ns, account, env_files, stack, sshd,
                                              tiny_params, monkeypatch)  # fmt: skip
        # The admin removes Cid, whose shell still has his login (a copy of his env file): his
        # next run is refused at preflight, before any work.
        cid.env_file = Path(shutil.copy(cid.env_file, cid.home / "cid.env"))
        remove_member(stack.dir, "cid")
        time.sleep(AUTH_CACHE_SECONDS)  # the other server process's cached login expires
        head = git(Path(stack.git_remote), "rev-parse", "main")
        refused = cid.wait(cid.start(["run", "--workspace", str(cid_ws), "--set",
                                      "campaign.rounds=3"], "refused-cid", elsewhere=False),
                           code=5)  # fmt: skip
        assert "(401)" in refused and "Traceback" not in refused, refused
        assert git(Path(stack.git_remote), "rev-parse", "main") == head
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


def _three_members_race(base, ns, account, env_files, stack, sshd, tiny_params, monkeypatch):
    """Ann (another Unix account) and Bob on another host, Cid on the stack's host: three
    logins, three clones, one campaign, started at one instant. Ann reaches the remotes over
    ssh; Bob and Cid through the shared directory (a network filesystem, for Bob)."""
    rounds = 2
    experiment = f"hosts-{uuid.uuid4().hex[:8]}"
    params = dict(tiny_params)
    params["campaign"] = {**params["campaign"], "rounds": 0}
    params["tracking"] = {"mlflow_uri": stack.mlflow_uri, "experiment": experiment,
                          "register_model": True}  # fmt: skip
    params["training"] = {**params["training"], "num_threads": 1}
    params_path = account.write("params.yaml", yaml.safe_dump(params), 0o644)
    ann = Member(base, ns, account, env_files["ann"], "ann")
    bob = Member(base, ns, None, env_files["bob"], "bob")
    cid = Member(base, ns, None, env_files["cid"], "cid")
    bare, dvc_remote = Path(stack.git_remote), Path(stack.dvc_remote)

    ann_ws, bob_ws, cid_ws = ann.home / "ws", bob.home / "ws", cid.home / "ws"
    ann.run(["init", str(ann_ws), "-c", str(params_path), "--git-remote",
             sshd.url(bare), "--dvc-remote", sshd.url(dvc_remote)],
            "init-ann", elsewhere=True)  # fmt: skip
    bob.run(["init", str(bob_ws), "--clone", str(bare)], "init-bob", elsewhere=True)
    cid.run(["init", str(cid_ws), "--clone", str(bare)], "init-cid", elsewhere=False)
    for clone in (bob_ws, cid_ws):  # the committed DVC remote is Ann's ssh URL
        subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "local",
                        "url", str(dvc_remote)], cwd=clone, check=True)  # fmt: skip

    go = ["run", "--set", f"campaign.rounds={rounds}", "--workspace"]
    racing = [(ann, ann.start([*go, str(ann_ws)], "race-ann", elsewhere=True)),
              (bob, bob.start([*go, str(bob_ws)], "race-bob", elsewhere=True)),
              (cid, cid.start([*go, str(cid_ws)], "race-cid", elsewhere=False))]  # fmt: skip
    for member, proc in racing:
        member.wait(proc, timeout=400)
    for member, clone, away in ((ann, ann_ws, True), (bob, bob_ws, True), (cid, cid_ws, False)):
        member.run([*go, str(clone)], f"level-{member.name}", elsewhere=away)  # level with it
        said = member.run(["verify", "--workspace", str(clone)], f"verify-{member.name}",
                          elsewhere=away)  # fmt: skip
        assert "consistent" in said, said

    tags = [f"{CAMPAIGN}/round-{r:04d}" for r in range(rounds + 1)]
    assert sorted(git(bare, "tag", "--list", f"{CAMPAIGN}/round-*").split()) == tags
    assert git(bare, "config", "core.sharedRepository") == "group"
    assert _shared_with(bare.parent, account.gid) == []
    assert _shared_with(dvc_remote, account.gid) == []
    auth_string = stack.member_secrets()["PREFECT_API_AUTH_STRING"]
    assert _prefect_flow_runs(stack.prefect_api_url, auth_string) >= 3

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.admin_password())
    client = MlflowClient(tracking_uri=stack.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    names = {"ann", "bob", "cid"}
    assert {r.info.user_id for r in runs} <= names
    parents = [r for r in runs if r.data.tags.get("baldflow.kind") == "campaign"]
    assert len(parents) == 1, [(p.info.run_id, p.info.status) for p in parents]
    finished = [r for r in runs if r.data.tags.get("baldflow.kind") == "round"
                and r.info.status == "FINISHED"]  # fmt: skip
    assert sorted(int(r.data.tags["baldflow.round"]) for r in finished) == [1, 2]
    versions = [client.get_model_version(v.name, v.version)
                for v in client.search_model_versions(f"name = 'baldflow-{CAMPAIGN}'")]  # fmt: skip
    assert sorted(int(v.tags["baldflow.round"]) for v in versions) == [1, 2]
    for version in versions:
        round_index = version.tags["baldflow.round"]
        assert version.description.startswith(f"Round {round_index} of campaign {CAMPAIGN}")
        assert version.tags["baldflow.operator"] in names
    # Prefect's list of flow runs says whose run is whose: tagged and named by member.
    workspace_id = parents[0].data.tags["baldflow.workspace_id"]
    for name in names:
        found = _prefect_tagged_runs(stack.prefect_api_url, auth_string,
                                     [f"operator:{name}", f"campaign:{CAMPAIGN}",
                                      f"workspace:{workspace_id}"])  # fmt: skip
        assert found, f"no flow run of {name} is tagged"
        assert {run["name"] for run in found} == {f"{CAMPAIGN} by {name} in {workspace_id[:8]}"}
    print(f"members' commands (s): ann {ann.seconds}, bob {bob.seconds}, cid {cid.seconds}")
    return cid, cid_ws
