"""The application layer (baldflow.app) as the docs show it: docs/api.md's example run
as written, on a tiny campaign, with real Prefect, MLflow, git and DVC in a temp dir; its
results are what the CLI prints, and it raises the errors the CLI maps to exit codes."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from baldflow import app
from baldflow.cli import main

pytestmark = pytest.mark.usefixtures("prefect_harness")

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def docs_example() -> str:
    """The first python block of the Python API page (docs/api.md)."""
    text = API_PAGE.read_text()
    section = text[text.index("# The Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the Python API section has no python example"
    return match.group(1)


@pytest.fixture(scope="module")
def example(tmp_path_factory, tiny_defaults):
    """The docs' example, run as written from a directory whose params.yaml is tiny."""
    root = tmp_path_factory.mktemp("api")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_defaults))
    out = io.StringIO()
    namespace: dict = {}
    before = Path.cwd()
    os.chdir(root)  # the example names its files relative to where it runs
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(docs_example(), "docs/api.md", "exec"), namespace)
    finally:
        os.chdir(before)
    return root, namespace, out.getvalue()


def test_the_docs_example_runs_labels_and_verifies_a_campaign(example):
    root, namespace, printed = example
    outcome = namespace["outcome"]
    assert isinstance(outcome, app.CampaignOutcome)
    assert printed.splitlines()[0] == "rounds 2"
    # The last call found every round done: answered from the workspace, nothing run.
    assert outcome.ran is False and outcome.finished is not None
    assert outcome.last_round == 2 and [int(r["round"]) for r in outcome.rounds] == [0, 1, 2]
    labeled = namespace["labeled"]
    assert isinstance(labeled, app.LabelOutcome) and labeled.complete
    assert labeled.completed is not None and labeled.completed.last_round == 2
    # Round 2's batch, every sample labeled by the example's "people" and credited to them.
    rows = app.history(root / "ws", round=2)
    assert len(rows) == 5 and {r.labeled_by for r in rows} == {"ann via round-0002.csv"}
    assert len(printed.splitlines()) == 1 + len(rows)
    assert namespace["report"].consistent


def test_the_api_answers_what_the_cli_prints(example, capsys):
    root, _, _ = example
    ws = root / "ws"
    capsys.readouterr()
    assert main(["history", "-w", str(ws), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [dataclasses.asdict(r) for r in app.history(ws)]
    assert main(["status", "-w", str(ws), "--format", "json"]) == 0
    found = app.status(ws)
    assert json.loads(capsys.readouterr().out) == [dataclasses.asdict(c) for c in found.campaigns]
    assert found.campaigns[0].rounds_done == 2 and found.waiting == []
    assert main(["verify", "-w", str(ws)]) == 0
    report = app.verify(ws)
    assert capsys.readouterr().out.strip() == "tiny: consistent"
    assert report.problems == {"tiny": []}
    # A cycle of the finished campaign has nothing to do either, without a flow run.
    request = app.RunRequest(ws, root / "params.yaml", ["campaign.rounds=2", "oracle.kind=file"])
    cycled = app.run_cycle(request)
    assert cycled.ran is False and cycled.stopped == "rounds"


def test_the_api_raises_the_errors_the_cli_maps_to_exit_codes(example, tmp_path):
    from baldflow.audit.queries import AuditError
    from baldflow.cli import EXIT_CONFIG, EXIT_ERROR, report_error
    from baldflow.config import ConfigError
    from baldflow.labeling import NoPendingBatchError

    root, _, _ = example
    ws = root / "ws"
    bad = app.RunRequest(workspace=tmp_path / "new", overrides=["acquisition.batch_size=0"])
    with pytest.raises(ConfigError, match="acquisition.batch_size must be >= 1, got 0") as error:
        app.run_campaign(bad)
    assert not (tmp_path / "new").exists()  # validated before anything was made
    assert report_error(error.value) == EXIT_CONFIG
    cases = [
        (FileNotFoundError, lambda: app.verify(tmp_path / "nowhere")),
        (LookupError, lambda: app.history(ws, campaign="other")),
        (NoPendingBatchError, lambda: app.import_labels(root / "x.csv", workspace=ws)),
        (AuditError, lambda: app.sample_story("no-such-id", workspace=ws)),
    ]
    for kind, call in cases:
        with pytest.raises(kind) as error:
            call()
        with contextlib.redirect_stderr(io.StringIO()):
            assert report_error(error.value) == EXIT_ERROR
