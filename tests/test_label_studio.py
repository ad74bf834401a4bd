"""People labeling in Label Studio: a campaign whose batches become tasks of a real Label Studio
server (started once per test session, stopped by PID), with the tests posting annotations
through its API in place of people. Real Prefect, MLflow, git and DVC in a temp dir.

One module fixture walks a campaign through round 0 (every refusal on the way, then the pull
that completes it) and round 1 (sent with the model's guesses, interrupted after the import and
resumed); the tests check what it saw.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from baldflow.cli import main
from baldflow.labeling import HandOff, LabelImportError
from baldflow.labeling.label_studio import TOKEN_ENV, Connection, LabelStudioClient
from baldflow.labeling.studio_rounds import (
    LINK_FILE,
    StudioLink,
    batch_key,
    campaign_key,
    label_config,
    pull_annotations,
)
from baldflow.workspace import Workspace

pytestmark = pytest.mark.usefixtures("prefect_harness")

CAMPAIGN = "studio"


class Studio:
    """What a person does in Label Studio, through its API (as the server's admin)."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, **kwargs):
        response = self.http.request(method, self.url + path, timeout=60, **kwargs)
        assert response.status_code < 400, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    def tasks(self, project_id: int) -> list[dict]:
        return self.call(
            "GET", f"/api/projects/{project_id}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )  # fmt: skip

    def batch_tasks(self, project_id: int, round_index: int) -> dict[str, dict]:
        return {
            t["data"]["sample_id"]: t
            for t in self.tasks(project_id)
            if t["data"].get("round") == round_index
        }

    def annotate(self, task_id: int, *choices: str, cancelled: bool = False) -> int:
        result = [
            {"from_name": "label", "to_name": "item", "type": "choices",
             "value": {"choices": list(choices)}}
        ] if choices else []  # fmt: skip
        body = {"result": result, "was_cancelled": cancelled}
        return self.call("POST", f"/api/tasks/{task_id}/annotations", json=body)["id"]

    def delete_annotation(self, annotation_id: int) -> None:
        self.call("DELETE", f"/api/annotations/{annotation_id}")

    def our_projects(self, key: str) -> list[dict]:
        body = self.call("GET", "/api/projects", params={"page_size": 100})
        return [p for p in body["results"] if key in (p.get("description") or "")]


def pull_cli(workspace: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["label", "pull", "-w", str(workspace), *extra])
    return code, out.getvalue(), err.getvalue()


def labels_stored(handoff: HandOff, round_index: int) -> bool:
    return handoff.labels_path(round_index).exists()


@pytest.fixture(scope="module")
def walked(tmp_path_factory, prefect_harness, tiny_defaults, label_studio_server):
    from baldflow.compute import campaign_data
    from baldflow.config import validate
    from baldflow.flows.campaign import campaign_flow

    server = label_studio_server
    root = tmp_path_factory.mktemp("label-studio")
    workspace = root / "ws"
    params = {
        **tiny_defaults,
        "oracle": {
            "kind": "label-studio",
            "label_studio": {"url": server.url, "document_root": str(server.document_root)},
        },
    }
    params["campaign"] = {**params["campaign"], "name": CAMPAIGN, "rounds": 1}
    data = campaign_data.prepare_data(validate(params))
    truth = dict(zip(data.splits.pool_ids, data.splits.pool_y.tolist(), strict=True))
    names = [str(n) for n in data.class_names]
    seen: dict = {"workspace": workspace, "truth": truth, "names": names, "params": params}
    studio = Studio(server.url, server.token)
    old_token = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = server.token
    try:
        ws = Workspace(workspace)
        handoff = HandOff(ws.campaign_dir(CAMPAIGN), CAMPAIGN)

        # 1. Round 0 goes out as tasks of a new project; the campaign waits.
        state = campaign_flow(workspace=str(workspace), params=params, return_state=True)
        seen["state0"] = (state.name, state.message)
        seen["result0"] = state.result()
        pending = handoff.pending()
        link = StudioLink.load(handoff)
        project = link.project_id
        seen.update(pending0=pending, project=project, key=campaign_key(ws.workspace_id, CAMPAIGN))
        tasks0 = studio.batch_tasks(project, 0)
        seen["tasks0"] = tasks0
        first = tasks0[pending.sample_ids[0]]
        picture = studio.http.get(server.url + first["data"]["image"], timeout=30)
        seen["picture"] = (picture.status_code, picture.content[:8])
        seen["label_config"] = studio.call("GET", f"/api/projects/{project}")["label_config"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["status", "-w", str(workspace)])
        seen["status0"] = out.getvalue()
        # A second run while people label sends nothing again and computes nothing.
        state = campaign_flow(workspace=str(workspace), params=params, return_state=True)
        seen["state0_again"] = state.name
        seen["tasks0_again"] = len(studio.batch_tasks(project, 0))

        # 2. Refusals, each leaving nothing stored.
        client = LabelStudioClient(Connection(server.url, server.token, server.document_root))
        ids = pending.sample_ids
        task_of = {sid: tasks0[sid]["id"] for sid in ids}
        seen["refused"] = {}

        def refused(name: str, conflicts: str = "refuse") -> None:
            with pytest.raises(LabelImportError) as info:
                pull_annotations(client, handoff, pending, conflicts=conflicts)
            seen["refused"][name] = (str(info.value), labels_stored(handoff, 0))

        # Half annotated: not complete, nothing stored, no error.
        half = len(ids) // 2
        for sid in ids[:half]:
            studio.annotate(task_of[sid], names[truth[sid]])
        seen["partial"] = pull_annotations(client, handoff, pending, conflicts="refuse")
        seen["partial_stored"] = labels_stored(handoff, 0)
        # A label outside the class list (edited labeling config, or an API client).
        bad = studio.annotate(task_of[ids[half]], "<b>not-a-class</b>")
        refused("outside")
        studio.delete_annotation(bad)
        # An empty annotation (submitted without a choice).
        empty = studio.annotate(task_of[ids[half]])
        refused("empty")
        studio.delete_annotation(empty)
        # Two annotators disagree: refused by default; majority needs a majority.
        sid = ids[0]
        right, wrong = names[truth[sid]], names[(truth[sid] + 1) % len(names)]
        disagree = studio.annotate(task_of[sid], wrong)
        refused("conflict")
        refused("tie", conflicts="majority")
        # An edited task: its data names another sample.
        edited = dict(tasks0[ids[1]]["data"], sample_id="someone-else")
        studio.call("PATCH", f"/api/tasks/{task_of[ids[1]]}", json={"data": edited})
        refused("edited")
        studio.call("PATCH", f"/api/tasks/{task_of[ids[1]]}", json={"data": tasks0[ids[1]]["data"]})
        # A deleted task: refused until --resend gives the sample a new task.
        gone = ids[-1]
        studio.call("DELETE", f"/api/tasks/{task_of[gone]}")
        refused("deleted")
        seen["cli_refused"] = pull_cli(workspace)
        seen["resend"] = pull_cli(workspace, "--resend", "--no-complete")
        task_of[gone] = studio.batch_tasks(project, 0)[gone]["id"]
        seen["resent_task"] = (gone, task_of[gone])
        seen["resent_record"] = StudioLink.load(handoff).rounds["0"]["tasks"]

        # 3. The rest annotated; a third vote makes a majority; the pull completes round 0.
        for sid in ids[half:]:
            studio.annotate(task_of[sid], names[truth[sid]])
        studio.annotate(task_of[ids[0]], right)
        studio.annotate(task_of[ids[2]], cancelled=True)  # a cancelled (skipped) one is ignored
        refused("still-conflict")  # 2 against 1, but the rule is refuse
        # The batch carries its own parameters: a pull settles with the rule it was sent with.
        seen["majority"] = pull_annotations(client, handoff, pending, conflicts="majority")
        handoff.labels_path(0).unlink()
        studio.delete_annotation(disagree)
        seen["complete0"] = pull_cli(workspace)
        seen["tags_after0"] = ws.completed_rounds(CAMPAIGN)
        seen["ledger0"] = [r for r in ws.ledger(CAMPAIGN) if r.round == 0]

        # 4. Round 1 is sent with the model's guesses; a run killed right after the import
        #    resumes without a second project or a second import.
        log = root / "kill.log"
        (workspace / "kill-params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "PREFECT_API_URL": prefect_harness,
               "BALDFLOW_FAULT": "label-studio-send:imported:1:kill"}  # fmt: skip
        with log.open("w") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "baldflow.cli", "run", "-w", str(workspace),
                 "--config", str(workspace / "kill-params.yaml")],
                env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600,
            )  # fmt: skip
        seen["killed"] = (proc.returncode, log.read_text(errors="replace")[-3000:])
        pending1 = handoff.pending()
        seen["pending1"] = pending1
        seen["recorded_after_kill"] = str(1) in StudioLink.load(handoff).rounds
        seen["tasks1_after_kill"] = len(studio.batch_tasks(project, 1))
        state = campaign_flow(workspace=str(workspace), params=params, return_state=True)
        seen["state1"] = state.name
        seen["tasks1"] = studio.batch_tasks(project, 1)
        seen["recorded1"] = StudioLink.load(handoff).rounds.get("1")
        seen["projects"] = studio.our_projects(seen["key"])
        seen["project_info"] = studio.call("GET", f"/api/projects/{project}")
        # A project id lost (killed between creating the project and recording it) is found
        # again by the campaign key in its description.
        link_path = handoff.dir / LINK_FILE
        saved = link_path.read_text()
        forgotten = StudioLink.load(handoff)
        forgotten.project_id = None
        forgotten.rounds.pop("1")
        forgotten.save()
        campaign_flow(workspace=str(workspace), params=params, return_state=True)
        adopted = StudioLink.load(handoff).project_id
        seen["adopted"] = (adopted, len(studio.our_projects(seen["key"])))
        seen["tasks1_after_adopt"] = len(studio.batch_tasks(project, 1))
        link_path.write_text(saved)
        # 5. Round 1 annotated; a pull killed right after storing the labels leaves the round
        #    uncommitted, and the next run completes it.
        for sid, task in seen["tasks1"].items():
            studio.annotate(task["id"], names[truth[sid]])
        env["BALDFLOW_FAULT"] = "label-studio-pull:stored:1:kill"
        with log.open("w") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "baldflow.cli", "label", "pull", "-w", str(workspace)],
                env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600,
            )  # fmt: skip
        seen["pull_killed"] = (proc.returncode, log.read_text(errors="replace")[-3000:])
        seen["after_pull_kill"] = (labels_stored(handoff, 1), ws.completed_rounds(CAMPAIGN))
        state = campaign_flow(workspace=str(workspace), params=params, return_state=True)
        seen["state_done"] = state.name
        seen["tags_done"] = ws.completed_rounds(CAMPAIGN)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["history", "-w", str(workspace), "--sample", ids[0]])
        seen["history"] = out.getvalue()
    finally:
        if old_token is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = old_token
    return seen


def test_a_batch_goes_out_as_tasks_with_pictures_and_the_campaign_waits(walked):
    name, message = walked["state0"]
    assert name == "WaitingForLabels"
    assert "Label Studio" in message and "label pull" in message
    waiting = walked["result0"]["waiting_for_labels"]
    assert waiting["studio"].endswith(f"/projects/{walked['project']}/data")
    pending = walked["pending0"]
    assert set(walked["tasks0"]) == set(pending.sample_ids)
    for sid, task in walked["tasks0"].items():
        assert task["data"]["batch"] == batch_key(pending)
        assert task["data"]["round"] == 0
        assert sid not in task["data"]["image"]  # files are named by a hash, never by the id
    assert walked["picture"] == (200, b"\x89PNG\r\n\x1a\n")
    for name in walked["names"]:
        assert f'<Choice value="{name}"/>' in walked["label_config"]
    assert (
        f"waiting for labels (0 of {len(pending.sample_ids)} imported): Label Studio "
        f"project {walked['project']}" in walked["status0"]
    )
    assert walked["state0_again"] == "WaitingForLabels"
    assert walked["tasks0_again"] == len(pending.sample_ids)


def test_a_partial_batch_stores_nothing(walked):
    partial = walked["partial"]
    assert not partial.complete
    assert 0 < partial.annotated < partial.batch_size
    assert not walked["partial_stored"]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("outside", "is not a class"),
        ("empty", "no class chosen"),
        ("conflict", "annotators disagree"),
        ("tie", "no majority"),
        ("edited", "was edited in Label Studio"),
        ("deleted", "deleted in Label Studio"),
        ("still-conflict", "oracle.label_studio.conflicts: majority"),
    ],
)
def test_every_refusal_names_the_problem_and_stores_nothing(walked, case, words):
    message, stored = walked["refused"][case]
    assert words in message
    assert "nothing was imported" in message
    assert not stored


def test_deleted_tasks_are_refused_by_the_cli_and_resent(walked):
    code, _, err = walked["cli_refused"]
    assert code == 4 and "--resend" in err
    code, out, err = walked["resend"]
    assert "sent 1 task(s) again" in out
    # The task is back; the disagreement on another sample still refuses the pull.
    assert code == 4 and "annotators disagree" in err and "deleted" not in err
    gone, task_id = walked["resent_task"]
    assert walked["resent_record"][gone] == task_id


def test_majority_settles_a_disagreement_and_records_it(walked):
    majority = walked["majority"]
    assert majority.complete
    assert any("majority 2 of 3" in d for d in majority.decisions)


def test_the_pull_that_completes_the_batch_completes_the_round(walked):
    code, out, err = walked["complete0"]
    assert code == 0, err
    assert "committed" in out
    assert walked["tags_after0"] == [0]
    ledger = walked["ledger0"]
    assert len(ledger) == len(walked["pending0"].sample_ids)
    for row in ledger:
        assert row.label == walked["truth"][row.sample_id]
        assert "admin@baldflow.local (annotation " in row.labeled_by
        assert f"Label Studio project {walked['project']} task" in row.labeled_by
    assert "annotation" in walked["history"] and "admin@baldflow.local" in walked["history"]


def test_a_run_killed_after_the_import_resumes_without_importing_twice(walked):
    code, log = walked["killed"]
    assert code == -9, log
    assert not walked["recorded_after_kill"]
    batch = walked["pending1"].sample_ids
    assert walked["tasks1_after_kill"] == len(batch)
    assert walked["state1"] == "WaitingForLabels"
    assert set(walked["tasks1"]) == set(batch)
    assert walked["recorded1"]["tasks"] == {s: t["id"] for s, t in walked["tasks1"].items()}
    assert len(walked["projects"]) == 1
    assert walked["adopted"] == (walked["project"], 1)
    assert walked["tasks1_after_adopt"] == len(batch)


def test_round_1_tasks_carry_the_model_guess(walked):
    pending = walked["pending1"]
    assert set(pending.predictions) == set(pending.sample_ids)
    for sid, task in walked["tasks1"].items():
        assert task["predictions"], sid
    assert walked["project_info"]["model_version"] == f"{CAMPAIGN} round 1"


def test_a_pull_killed_after_storing_is_completed_by_the_next_run(walked):
    code, log = walked["pull_killed"]
    assert code == -9, log
    assert walked["after_pull_kill"] == (True, [0])
    assert walked["state_done"] == "Completed"
    assert walked["tags_done"] == [0, 1]


def test_the_next_run_pulls_and_completes_round_1(walked):
    assert walked["state_done"] == "Completed"
    assert walked["tags_done"] == [0, 1]


def test_class_names_are_escaped_in_the_labeling_form():
    import xml.etree.ElementTree as ET

    names = ['a"b', "<c>", "&d", "é", "x' onload='y"]
    xml = label_config(names, images=True)
    assert "<c>" not in xml
    assert [c.get("value") for c in ET.fromstring(xml).iter("Choice")] == names


def test_a_server_that_does_not_answer_is_a_clear_error(tmp_path):
    from baldflow.labeling.label_studio import LabelStudioError
    from baldflow.stack.process import free_port

    client = LabelStudioClient(Connection(f"http://127.0.0.1:{free_port()}", "x" * 40, None))
    with pytest.raises(LabelStudioError, match="does not answer"):
        client.whoami()


def test_a_url_without_a_token_is_refused(monkeypatch, tmp_path):
    from functools import partial

    from baldflow.config import validate
    from baldflow.labeling.label_studio import LabelStudioError, connect
    from baldflow.stack.label_studio import workspace_connection

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = validate({"oracle": {"kind": "label-studio",
                                  "label_studio": {"url": "http://127.0.0.1:9"}}})  # fmt: skip
    with pytest.raises(LabelStudioError, match=TOKEN_ENV):
        connect(config.oracle.label_studio, partial(workspace_connection, tmp_path))


def test_a_wrong_token_is_refused_with_the_fix(label_studio_server):
    from baldflow.labeling.label_studio import LabelStudioError

    client = LabelStudioClient(Connection(label_studio_server.url, "0" * 40, None))
    with pytest.raises(LabelStudioError, match="refused the API token"):
        client.whoami()


def test_params_without_the_label_studio_section_still_validate(tmp_path):
    from baldflow.config import validate

    config = validate({"oracle": {"kind": "file"}})
    assert config.oracle.label_studio.conflicts == "refuse"
    assert "label_studio" not in config.identity()["oracle"]
    assert Path  # the module's imports are used
