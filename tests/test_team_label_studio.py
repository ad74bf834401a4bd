"""One labeling server for the team: Label Studio as part of the team stack (`stack up
--label-studio`), labeler accounts with tokens of their own, every label in the ledger naming
who gave it, a Data Manager tab per round, non-class labels refused at import, and clones that
create the campaign's project at one instant ending with one. Real servers: the session's
Label Studio (its one fresh start), a small team stack of its own (a restart of a copy of the
session server's database), people's annotations posted through the API with their own tokens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from baldflow.config import LabelStudioSettings
from baldflow.labeling import FileOracle, HandOff, LabelImportError, PendingRound
from baldflow.labeling.label_studio import (
    TOKEN_ENV,
    URL_ENV,
    Connection,
    LabelStudioClient,
    LabelStudioError,
    connect,
)
from baldflow.labeling.studio_rounds import (
    StudioLink,
    batch_key,
    campaign_key,
    pull_annotations,
    round_view_title,
    send_batch,
)
from baldflow.stack import label_studio as studio
from baldflow.stack.backup import copy_tree
from baldflow.stack.process import start_ticks

PASSWORD = "correct-horse-battery"
# Class names from user data: markup, a formula, unicode.
CLASSES = ["<b>cat</b>", "=HYPERLINK(\"x\")", "chien é"]


def _no_server(*_args):
    raise LookupError("no workspace server in this test")


def _as(server, token: str) -> requests.Session:
    http = requests.Session()
    http.headers["Authorization"] = f"Token {token}"
    return http


def _annotate(server, token: str, task_id: int, choice: str) -> int:
    body = {"result": [{"from_name": "label", "to_name": "item", "type": "choices",
                        "value": {"choices": [choice]}}]}  # fmt: skip
    answer = _as(server, token).post(
        f"{server.url}/api/tasks/{task_id}/annotations", json=body, timeout=60
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def _pending(campaign: str, round_index: int = 0, n: int = 6) -> PendingRound:
    ids = [f"{campaign}-<i>{i}</i>" for i in range(n)]
    return PendingRound(
        campaign=campaign, round=round_index, sample_ids=ids,
        items=[f"item {i}" for i in range(n)], class_names=list(CLASSES),
        base_md5=f"md5-{campaign}-{round_index}", created_at="2026-12-07T00:00:00Z",
    )  # fmt: skip


@pytest.fixture(scope="module")
def labelers(label_studio_server):
    """Two labeler accounts on the session server: a team member by name, a person by email."""
    home = label_studio_server.home
    return {
        "ann@baldflow.local": studio.add_labeler(home, "ann", PASSWORD),
        "bob@example.org": studio.add_labeler(home, "Bob@Example.org", PASSWORD),
    }


# -- a round labeled by two people -------------------------------------------------------------


@pytest.fixture(scope="module")
def two_people(label_studio_server, labelers, tmp_path_factory):
    """A batch sent by a member's clone that knows the server only from the environment (the
    member env file's URL and token), labeled half by ann, half by bob, then pulled."""
    server = label_studio_server
    ann, bob = labelers["ann@baldflow.local"], labelers["bob@example.org"]
    pending = _pending("two-people")
    handoff = HandOff(tmp_path_factory.mktemp("two-people"), pending.campaign)
    handoff.write(pending)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(URL_ENV, server.url)
        env.setenv(TOKEN_ENV, ann)
        connection = connect(LabelStudioSettings(), _no_server)
    client = LabelStudioClient(connection)
    sent = send_batch(client, handoff, pending, workspace_id="ws-two", images=None)
    again = send_batch(client, handoff, pending, workspace_id="ws-two", images=None, resend=True)
    link = StudioLink.load(handoff)
    tasks = link.rounds["0"]["tasks"]
    ids = pending.sample_ids
    who = {sid: ("ann@baldflow.local" if i % 2 == 0 else "bob@example.org")
           for i, sid in enumerate(ids)}  # fmt: skip
    # One label outside the class list, through the API (which the form would have refused).
    outsider = _annotate(server, bob, tasks[ids[1]], "<img src=x onerror=alert(1)>")
    with pytest.raises(LabelImportError) as refused:
        pull_annotations(client, handoff, pending, conflicts="refuse")
    stored_after_refusal = handoff.labels_path(0).exists()
    _as(server, bob).delete(f"{server.url}/api/annotations/{outsider}", timeout=30)
    for i, sid in enumerate(ids):
        token = ann if who[sid] == "ann@baldflow.local" else bob
        _annotate(server, token, tasks[sid], CLASSES[i % len(CLASSES)])
    pulled = pull_annotations(client, handoff, pending, conflicts="refuse")
    return {
        "pending": pending, "handoff": handoff, "sent": sent, "again": again, "link": link,
        "who": who, "refused": str(refused.value), "stored_after_refusal": stored_after_refusal,
        "pulled": pulled, "connection": connection, "client": client,
    }  # fmt: skip


def test_a_member_clone_finds_the_team_server_through_the_environment(
    label_studio_server, two_people
):
    connection = two_people["connection"]
    assert connection.url == label_studio_server.url and connection.document_root is None
    assert two_people["sent"].created_project and two_people["sent"].imported == 6
    assert two_people["again"].imported == 0


def test_every_ledger_row_names_the_person_who_labeled_it(two_people):
    pending, handoff = two_people["pending"], two_people["handoff"]
    assert two_people["pulled"].complete
    rows = FileOracle(handoff, kind="label-studio").labeled_by(pending.sample_ids)
    for sid, row in zip(pending.sample_ids, rows, strict=True):
        assert row.startswith(f"{two_people['who'][sid]} (annotation "), row
        assert "via Label Studio project" in row
    assert {r.split(" ")[0] for r in rows} == {"ann@baldflow.local", "bob@example.org"}
    labels = FileOracle(handoff, kind="label-studio").label(pending.sample_ids)
    assert labels == [i % len(CLASSES) for i in range(len(pending.sample_ids))]


def test_a_non_class_label_is_refused_at_import_and_the_form_requires_a_class(
    label_studio_server, two_people
):
    assert "is not a class" in two_people["refused"]
    assert "nothing was imported" in two_people["refused"]
    assert not two_people["stored_after_refusal"]
    project = two_people["client"].project(two_people["sent"].project_id)
    assert 'choice="single"' in project["label_config"]
    assert 'required="true"' in project["label_config"]


def test_the_round_has_a_data_manager_tab_showing_its_batch(label_studio_server, two_people):
    client, pending = two_people["client"], two_people["pending"]
    project_id = two_people["sent"].project_id
    views = [v for v in client.views(project_id) if v["data"]["title"] == round_view_title(0)]
    assert len(views) == 1  # the second send made no second tab
    assert two_people["link"].rounds["0"]["view"] == views[0]["id"]
    shown = _as(label_studio_server, label_studio_server.token).get(
        f"{label_studio_server.url}/api/tasks",
        params={"view": views[0]["id"], "project": project_id}, timeout=30,
    ).json()["tasks"]  # fmt: skip
    assert sorted(t["data"]["sample_id"] for t in shown) == sorted(pending.sample_ids)
    assert {t["data"]["batch"] for t in shown} == {batch_key(pending)}


def test_clones_creating_the_project_at_one_instant_end_with_one(
    label_studio_server, labelers, tmp_path
):
    """Two clones (ann's and bob's) send round 0 of a new campaign at once: both look, find
    no project, and create one (a barrier holds each create until both looked)."""
    server = label_studio_server
    pending = _pending("race", n=2)
    barrier = threading.Barrier(2, timeout=60)

    class Racing(LabelStudioClient):
        def create_project(self, *args, **kwargs):
            barrier.wait()
            return super().create_project(*args, **kwargs)

    results, errors = {}, []

    def clone(name: str, token: str) -> None:
        try:
            client = Racing(Connection(server.url, token, None))
            handoff = HandOff(tmp_path / name, pending.campaign)
            results[name] = send_batch(client, handoff, pending, workspace_id="ws-race",
                                       images=None)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=clone, args=item) for item in labelers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    ids = {r.project_id for r in results.values()}
    assert len(ids) == 1
    admin = LabelStudioClient(Connection(server.url, server.token, None))
    marker = f"baldflow campaign key: {campaign_key('ws-race', pending.campaign)}"
    marked = [p["id"] for p in admin.projects() if marker in (p.get("description") or "")]
    assert marked == list(ids)
    # Both imported the batch; a duplicate task nobody annotated yet is deleted by its
    # importer, so each sample has one task, the one both clones recorded.
    tasks = admin.tasks(ids.pop())
    assert sorted(t["data"]["sample_id"] for t in tasks) == sorted(pending.sample_ids)
    recorded = [StudioLink.load(HandOff(tmp_path / name, pending.campaign)).rounds["0"]["tasks"]
                for name in labelers]  # fmt: skip
    assert recorded[0] == recorded[1] == {t["data"]["sample_id"]: t["id"] for t in tasks}


# -- labeler accounts ------------------------------------------------------------------------


def test_labelers_get_tokens_of_their_own_adding_again_is_idempotent_and_removing_ends_it(
    label_studio_server, labelers, two_people
):
    """Last of the tests that use the accounts: ann is removed at its end (add_labeler would
    bring her back, same account and token)."""
    server = label_studio_server
    for email, token in labelers.items():
        me = _as(server, token).get(f"{server.url}/api/current-user/whoami", timeout=30)
        assert me.status_code == 200 and me.json()["email"] == email
    # Again, with another password: the same account and token (its annotations stay its own).
    assert studio.add_labeler(server.home, "ann", PASSWORD + "-2") == labelers["ann@baldflow.local"]
    # Removed: login and token refused at once; the account keeps its name for the ledger.
    assert studio.remove_labeler(server.home, "ann") is True
    token = labelers["ann@baldflow.local"]
    refused = _as(server, token).get(f"{server.url}/api/current-user/whoami", timeout=30)
    assert refused.status_code == 401
    names = LabelStudioClient(Connection(server.url, server.token, None)).user_emails()
    assert "ann@baldflow.local" in names.values()


@pytest.mark.parametrize(
    ("user", "password", "words"),
    [
        ("<script>x</script>", PASSWORD, "is not a labeler name"),
        ("=cmd|' /C calc'!A0", PASSWORD, "is not a labeler name"),
        ("carol", "short", "the password is refused"),
        (studio.ADMIN, PASSWORD, "the server's admin"),
    ],
)
def test_a_bad_labeler_is_a_clear_one_line_error(label_studio_server, user, password, words):
    with pytest.raises(studio.LabelerError, match=words) as raised:
        studio.add_labeler(label_studio_server.home, user, password)
    assert "\n" not in str(raised.value)


# -- the env-file route ------------------------------------------------------------------------


def test_the_env_url_needs_the_members_token_and_a_params_url_wins(monkeypatch):
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(LabelStudioError, match=f"{URL_ENV} is .*{TOKEN_ENV} is not set"):
        connect(LabelStudioSettings(), _no_server)
    monkeypatch.setenv(TOKEN_ENV, "t" * 40)
    assert connect(LabelStudioSettings(), _no_server).url == "http://127.0.0.1:9"
    named = LabelStudioSettings(url="http://127.0.0.1:8/")
    assert connect(named, _no_server).url == "http://127.0.0.1:8"
    monkeypatch.setenv(URL_ENV, "javascript:alert(1)")
    with pytest.raises(LabelStudioError, match="must be an http"):
        connect(LabelStudioSettings(), _no_server)


# -- `stack up --label-studio` ---------------------------------------------------------------


def _stack_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "baldflow.cli", "stack", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _seed(server, root: Path) -> None:
    """STACK/label-studio from a copy of the session server's database (SQLite's backup API:
    consistent while it writes) and its admin: a restart (seconds), not a first start."""
    home = root / studio.STACK_HOME
    source = server.home / "data"
    copy_tree(source, home / "data", live_sqlite=True)
    (root / "secrets").mkdir(mode=0o700, exist_ok=True)
    shutil.copy2(server.credentials_path, root / studio.STACK_CREDENTIALS)


def _listeners(port: int) -> list[str]:
    with open("/proc/net/tcp") as handle:
        rows = [line.split() for line in handle.read().splitlines()[1:]]
    return [r[1] for r in rows if r[3] == "0A" and r[1].endswith(f":{port:04X}")]


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while start_ticks(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return start_ticks(pid) is None


def test_stack_up_with_label_studio_starts_records_restarts_and_stops_it(label_studio_server):
    from baldflow.stack.postgres import PostgresNotInstalledError, find_bindir

    try:
        find_bindir()
    except PostgresNotInstalledError as exc:  # CI installs it; test_stack.py fails there
        pytest.skip(f"the team stack needs PostgreSQL: {exc}")
    from baldflow.stack.team import (
        LABEL_STUDIO_TOKEN_ENV,
        LABEL_STUDIO_URL_ENV,
        StackError,
        load_stack,
        stack_down,
        stack_status,
        stack_up,
    )

    root = Path(tempfile.mkdtemp(prefix="baldflow-test-ls-stack-"))
    try:
        stack_up(root, auth=True)  # PostgreSQL, MLflow with logins, Prefect
        _seed(label_studio_server, root)
        up = _stack_cli("up", "--dir", str(root), "--label-studio")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Label Studio ready" in up.stdout and "MLflow server runs already" in up.stdout
        state = json.loads((root / "stack.json").read_text())["label-studio"]
        pid, port = state["pid"], state["port"]
        assert start_ticks(pid) == state["start_ticks"]
        assert state["url"] == f"http://127.0.0.1:{port}"
        assert _listeners(port) == [f"0100007F:{port:04X}"]  # 127.0.0.1 only
        secret = root / studio.STACK_CREDENTIALS
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert not (root / studio.STACK_HOME / "credentials.json").exists()
        admin_token = json.loads(secret.read_text())["token"]
        assert admin_token not in up.stdout + up.stderr
        assert admin_token not in (root / "team.env").read_text()
        stack = load_stack(root)
        assert stack.environment()[URL_ENV] == state["url"]
        assert f"export {URL_ENV}={state['url']}" in (root / "team.env").read_text()
        status = _stack_cli("status", "--dir", str(root))
        assert status.returncode == 0, status.stdout
        assert f"label-studio ok    {state['url']}" in status.stdout
        # A member of the team labels on its server: `stack user add` made her account, and
        # her env file carries her own token.
        from baldflow.stack import members

        dora = members.add_member(root, "dora")
        token = next(line.split("=", 1)[1].strip("'") for line in
                     dora.env_file.read_text().splitlines()
                     if line.startswith(f"export {TOKEN_ENV}="))  # fmt: skip
        me = requests.get(f"{state['url']}/api/current-user/whoami",
                          headers={"Authorization": f"Token {token}"}, timeout=30)  # fmt: skip
        assert me.status_code == 200 and me.json()["email"] == "dora@baldflow.local"
        assert TOKEN_ENV == LABEL_STUDIO_TOKEN_ENV and URL_ENV == LABEL_STUDIO_URL_ENV
        members.remove_member(root, "dora")
        gone = requests.get(f"{state['url']}/api/current-user/whoami",
                            headers={"Authorization": f"Token {token}"}, timeout=30)  # fmt: skip
        assert gone.status_code == 401

        # Killed on its own: a plain `up` brings it back (recorded), on its port.
        os.kill(pid, signal.SIGTERM)  # ours: recorded by the `up` above
        assert _gone(pid)
        assert [r[0] for r in stack_status(root) if not r[1]] == ["label-studio"]
        again = stack_up(root)
        assert again.label_studio_url == state["url"]
        restarted = json.loads((root / "stack.json").read_text())["label-studio"]
        assert restarted["port"] == port and restarted["pid"] != pid
        assert all(ok for _, ok, _ in stack_status(root))

        said: list[str] = []
        stack_down(root, report=said.append)  # in this process, which reaps its children
        assert f"label-studio: stopped (pid {restarted['pid']})" in said
        assert _gone(restarted["pid"]) and _listeners(port) == []
        # Its data stays where a backup finds it.
        assert any((root / studio.STACK_HOME / "data").glob("*.sqlite3"))
    finally:
        if (root / "stack.json").exists():
            with contextlib.suppress(StackError):
                stack_down(root)
        shutil.rmtree(root, ignore_errors=True)
