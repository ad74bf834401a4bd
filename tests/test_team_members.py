"""A team of several logins: members made by `baldflow stack user`, on the session's
authenticated team stack (PostgreSQL, MLflow behind basic auth, Prefect with its auth string).

The commands themselves, the permission check a login without the member role meets before any
work, and clones of new campaigns started at one instant again and again. Three members racing
one campaign from two hosts and two Unix accounts: tests/test_team_hosts.py.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from test_team import (
    BALDFLOW,
    env_for,
    finish,
    run,
    shared_campaign,
    start,
)

from baldflow.stack import members


def member_env(path: Path) -> dict[str, str]:
    """What `. NAME.env` exports, read the way a POSIX shell reads it."""
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def unique(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


def as_member(stack, name: str) -> dict[str, str]:
    added = members.add_member(stack.dir, name)
    env = member_env(added.env_file)
    assert env.pop("BALDFLOW_OPERATOR") == name
    return env_for(name, **env)


@pytest.fixture
def campaign_params(tmp_path, tiny_params, team_auth_stack):
    """A shared campaign on the authenticated stack's MLflow, its models registered."""
    return shared_campaign(tmp_path, tiny_params, team_auth_stack.mlflow_uri, register_model=True)


def clones(tmp_path: Path, campaign_params, envs: list[dict[str, str]]) -> list[Path]:
    bare, dvc_remote, params_path, _ = campaign_params
    first = tmp_path / "clone-0"
    run(["init", str(first), "-c", str(params_path), "--git-remote", str(bare),
         "--dvc-remote", str(dvc_remote)], tmp_path / "init-0.log", envs[0])  # fmt: skip
    made = [first]
    for index, env in enumerate(envs[1:], start=1):
        made.append(tmp_path / f"clone-{index}")
        run(["init", str(made[-1]), "--clone", str(bare)], tmp_path / f"init-{index}.log", env)
    return made


def mlflow_as_admin(stack, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.admin_password())
    return MlflowClient(tracking_uri=stack.mlflow_uri)


# ---------------------------------------------------------------------------- the commands


def test_user_add_list_password_remove(team_auth_stack, monkeypatch):
    stack = team_auth_stack
    name = unique("dana")
    cli = [*BALDFLOW, "stack", "user"]
    added = subprocess.run([*cli, "add", name, "--dir", str(stack.dir)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert added.returncode == 0, added.stderr
    path = members.env_file(stack, name)
    assert f". {path}" in added.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o711
    env = member_env(path)
    assert env["MLFLOW_TRACKING_USERNAME"] == name and env["BALDFLOW_OPERATOR"] == name
    assert env["MLFLOW_TRACKING_URI"] == stack.mlflow_uri
    assert env["PREFECT_API_URL"] == stack.prefect_api_url
    text = path.read_text()
    assert stack.admin_password() not in text and "admin" not in text.lower().split("# use")[0]

    listed = subprocess.run([*cli, "list", "--dir", str(stack.dir)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(name + " "))
    assert "member" in row and str(path) in row

    # Adding again changes nothing but the file's addresses: the password stands.
    assert members.add_member(stack.dir, name).password == env["MLFLOW_TRACKING_PASSWORD"]
    rotated = members.set_password(stack.dir, name).password
    assert rotated != env["MLFLOW_TRACKING_PASSWORD"]
    assert member_env(path)["MLFLOW_TRACKING_PASSWORD"] == rotated

    removed = subprocess.run([*cli, "remove", name, "--dir", str(stack.dir)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    assert not path.exists()
    assert name not in {m.name for m in members.list_members(stack.dir)}

    bad = subprocess.run([*cli, "add", "x; rm -rf /", "--dir", str(stack.dir)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "is not a member name" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_members_need_a_stack_with_auth(team_stack):
    with pytest.raises(members.MemberError, match="without auth"):
        members.add_member(team_stack.dir, "erin")


# ---------------------------------------------------------------------------- preflight


def test_a_login_without_the_member_role_is_refused_before_prefect_starts(
    tmp_path, campaign_params, team_auth_stack
):
    """Ann (a member) starts the campaign; Fay, a login the admin made without the role,
    may read it but not write it: one line naming the permission and the command that grants
    it, exit 5, before any server or flow. Made a member, she runs."""
    from baldflow.stack.mlflow_server import create_user

    stack = team_auth_stack
    ann, fay = unique("ann"), unique("fay")
    ann_env = as_member(stack, ann)
    (first,) = clones(tmp_path, campaign_params, [ann_env])
    run(["run", "--workspace", str(first), "--set", "campaign.rounds=0"], tmp_path / "a.log",
        ann_env)  # fmt: skip

    password = "fay-" + uuid.uuid4().hex
    create_user(stack.mlflow_uri, stack.admin_username, stack.admin_password(), fay, password)
    fay_env = env_for(fay, MLFLOW_TRACKING_USERNAME=fay, MLFLOW_TRACKING_PASSWORD=password,
                      PREFECT_API_URL=stack.prefect_api_url, **stack.member_secrets())  # fmt: skip
    run(["init", str(tmp_path / "fay"), "--clone", str(campaign_params[0])],
        tmp_path / "fay-init.log", fay_env)  # fmt: skip
    refused = subprocess.run(
        [*BALDFLOW, "run", "--workspace", str(tmp_path / "fay"), "--set", "campaign.rounds=1"],
        capture_output=True, text=True, env=fay_env, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 5, refused.stdout + refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line and "Traceback" not in refused.stderr
    assert f"MLflow user {fay!r} may not delete and tag runs in experiment" in line
    assert "needs MANAGE" in line and f"baldflow stack user add {fay}" in line
    assert "starting Prefect" not in refused.stdout

    members.add_member(stack.dir, fay)
    run(["run", "--workspace", str(tmp_path / "fay"), "--set", "campaign.rounds=1"],
        tmp_path / "fay.log", fay_env)  # fmt: skip


# ---------------------------------------------------------------------------- same instant


def test_clones_started_at_the_same_instant_never_crash_or_leave_a_stray_run(
    tmp_path, tiny_params, team_auth_stack, monkeypatch
):
    """Two clones of a new campaign, started together again and again (each time a new
    campaign, so each start creates the experiment, the registered model, the workspace's
    Prefect limit and a parent run at once): no run fails, and after both finished the
    campaign has one parent run. Twice here; BALDFLOW_TEST_SAME_INSTANT_TRIALS=20 for the
    soak (about 30 s a trial on 2 cores)."""
    stack = team_auth_stack
    trials = int(os.environ.get("BALDFLOW_TEST_SAME_INSTANT_TRIALS", "2"))
    names = [unique("gus"), unique("hal")]
    envs = [as_member(stack, name) for name in names]
    client = None
    for trial in range(trials):
        root = tmp_path / f"trial-{trial}"
        root.mkdir()
        campaign = shared_campaign(root, tiny_params, stack.mlflow_uri, register_model=True)
        params = campaign[3]
        made = clones(root, campaign, envs)
        logs = [root / f"{name}.log" for name in names]
        procs = [start(["run", "--workspace", str(c), "--set", "campaign.rounds=1"], log, env)
                 for c, log, env in zip(made, logs, envs, strict=True)]  # fmt: skip
        for proc, log in zip(procs, logs, strict=True):
            finish(proc, log, timeout=300)
        client = client or mlflow_as_admin(stack, monkeypatch)
        experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
        parents = client.search_runs(
            [experiment.experiment_id], filter_string="tags.`baldflow.kind` = 'campaign'"
        )
        assert len(parents) == 1, (trial, [(p.info.run_id, p.info.status) for p in parents])
