"""People labeling through the file hand-off, and the audit commands, with real Prefect, MLflow,
git and DVC in a temp dir (no mocks).

One module fixture walks a campaign through two hand-offs (round 0, then round 1 in two partial
imports) and records what it saw; the tests check those records and audit the result.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from baldflow.cli import main
from baldflow.labeling import HandOff, LabelImportError, import_labels
from baldflow.workspace import Workspace
from baldflow.workspace.ledger import read_ledger
from baldflow.workspace.tracking import local_tracking_uri

pytestmark = pytest.mark.usefixtures("prefect_harness")


def write_labels(path: Path, rows: list[tuple[str, str]], extra_header: bool = True) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "item", "label"] if extra_header else ["sample_id", "label"])
        for sid, label in rows:
            writer.writerow([sid, "-", label] if extra_header else [sid, label])
    return path


def snapshot(ws: Workspace, campaign: str) -> tuple:
    """What a rejected import must leave exactly as it was."""
    handoff = HandOff(ws.campaign_dir(campaign), campaign)
    files = {p.name: p.read_bytes() for p in sorted(handoff.dir.glob("*")) if p.is_file()}
    ledger = ws.ledger_path(campaign)
    return (
        files,
        ledger.read_bytes() if ledger.exists() else b"",
        ws.git("tag", "--list"),
        ws.head(),
    )


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, prefect_harness, tiny_defaults):
    from baldflow.compute import campaign_data
    from baldflow.config import validate
    from baldflow.flows.campaign import campaign_flow

    root = tmp_path_factory.mktemp("labeling")
    workspace = root / "ws"
    params = {**tiny_defaults, "oracle": {"kind": "file"}}
    params["campaign"] = {**params["campaign"], "name": "people", "rounds": 1}
    data = campaign_data.prepare_data(validate(params))
    truth = {
        sid: int(y)
        for sid, y in zip(data.splits.pool_ids, data.splits.pool_y.tolist(), strict=True)
    }
    seen: dict = {"workspace": workspace, "truth": truth}
    ws = Workspace(workspace)
    handoff = HandOff(ws.campaign_dir("people"), "people")

    # 1. Round 0 is handed to people: a sheet, a contact sheet, nothing versioned.
    state = campaign_flow(workspace=str(workspace), params=params, return_state=True)
    seen["state0"] = (state.type.value, state.name, state.message)
    seen["result0"] = state.result()
    seen["tags0"] = ws.completed_rounds("people")
    seen["ledger0_exists"] = ws.ledger_path("people").exists()
    with handoff.sheet_path(0).open(newline="") as handle:
        seen["sheet0"] = list(csv.DictReader(handle))
    seen["contact0"] = handoff.contact_sheet_path(0).read_bytes()[:8]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main(["status", "-w", str(workspace)])
    seen["status0"] = buffer.getvalue()
    batch0 = [r["sample_id"] for r in seen["sheet0"]]

    # 2. Bad label files are refused with the offending rows listed; nothing is written.
    before = snapshot(ws, "people")
    good = [(sid, str(truth[sid])) for sid in batch0]
    bad_files = {
        "unknown": [*good[:-1], ("no-such-id", "3")],
        "missing": good[:-1],
        "empty": [*good[:-1], (batch0[-1], "")],
        "outside": [*good[:-1], (batch0[-1], "11")],
        "duplicate": [*good, (batch0[0], good[0][1])],
    }
    seen["rejections"] = {}
    for kind, rows in bad_files.items():
        path = write_labels(root / f"bad-{kind}.csv", rows)
        code = main(["label", "import", str(path), "-w", str(workspace), "--by", "tester"])
        seen["rejections"][kind] = code
        with pytest.raises(LabelImportError) as info:
            import_labels(handoff, path, labeled_by="tester")
        seen["rejections"][kind + "-message"] = str(info.value)
    seen["unchanged_after_bad"] = snapshot(ws, "people") == before

    # 3. A good file completes round 0 through the same flow code.
    path = write_labels(root / "round0.csv", good, extra_header=False)
    seen["import0"] = main(["label", "import", str(path), "-w", str(workspace), "--by", "ann"])
    seen["tags1"] = ws.completed_rounds("people")
    seen["handoff_cleared0"] = not handoff.sheet_path(0).exists()

    # 4. The next cycle computes round 1 and hands it off: the tags stay, MLflow waits.
    state = campaign_flow(workspace=str(workspace), params=params, return_state=True)
    seen["state1"] = (state.type.value, state.name)
    seen["tags2"] = ws.completed_rounds("people")
    pending = handoff.pending()
    seen["pending1"] = pending
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=local_tracking_uri(workspace / "mlflow"))
    seen["run_waiting"] = client.get_run(pending.state["run_id"]).info.status
    # A cycle while the labels are out recomputes nothing.
    state = campaign_flow(workspace=str(workspace), params=params, return_state=True)
    seen["state1_again"] = state.name
    seen["pending1_again"] = handoff.pending()

    # 5. Two partial imports; the round completes with the second.
    batch1 = pending.sample_ids
    half = len(batch1) // 2
    first = [(sid, str(truth[sid])) for sid in batch1[:half]] + [(sid, "") for sid in batch1[half:]]
    path = write_labels(root / "round1-a.csv", first)
    seen["partial_a"] = main(
        ["label", "import", str(path), "-w", str(workspace), "--partial", "--by", "bob"]
    )
    seen["tags_after_partial"] = ws.completed_rounds("people")
    path = write_labels(root / "round1-b.csv", [(sid, str(truth[sid])) for sid in batch1[half:]])
    seen["partial_b"] = main(
        ["label", "import", str(path), "-w", str(workspace), "--partial", "--by", "carol"]
    )
    seen["tags3"] = ws.completed_rounds("people")
    seen["run_done"] = client.get_run(pending.state["run_id"])
    return seen


def test_round_0_waits_for_labels_with_a_sheet_and_contact_sheet(labeled):
    kind, name, message = labeled["state0"]
    assert kind == "COMPLETED" and name == "WaitingForLabels"
    assert "waiting for labels" in message and "baldflow label import" in message
    assert labeled["result0"]["stopped"] == "waiting-for-labels"
    assert labeled["tags0"] == [] and not labeled["ledger0_exists"]
    sheet = labeled["sheet0"]
    assert len(sheet) == 10 and all(r["label"] == "" for r in sheet)
    assert all(r["item"] == f"digits sample {r['sample_id']}" for r in sheet)
    assert labeled["contact0"] == b"\x89PNG\r\n\x1a\n"
    assert "people: round 0 waiting for labels (0 of 10 imported)" in labeled["status0"]


def test_bad_imports_are_refused_and_write_nothing(labeled):
    rejections = labeled["rejections"]
    for kind in ("unknown", "missing", "empty", "outside", "duplicate"):
        assert rejections[kind] == 4, kind
    assert (
        "line 11: sample_id 'no-such-id' is not in the pending batch"
        in rejections["unknown-message"]
    )
    assert "of the batch has no label" in rejections["missing-message"]
    assert (
        "line 11:" in rejections["empty-message"] and "empty label" in rejections["empty-message"]
    )
    assert "label '11', not one of the classes 0, 1" in rejections["outside-message"]
    assert "appears more than once" in rejections["duplicate-message"]
    assert labeled["unchanged_after_bad"]


def test_a_good_import_completes_the_round(labeled):
    assert labeled["import0"] == 0
    assert labeled["tags1"] == [0]
    assert labeled["handoff_cleared0"]
    ws = Workspace(labeled["workspace"])
    rows = [r for r in read_ledger(ws.ledger_path("people")) if r.round == 0]
    assert len(rows) == 10
    assert all(r.labeled_by == "ann via round0.csv" for r in rows)
    assert all(r.label == labeled["truth"][r.sample_id] for r in rows)


def test_a_computed_round_waits_without_touching_tags_or_recomputing(labeled):
    assert labeled["state1"] == ("COMPLETED", "WaitingForLabels")
    assert labeled["tags2"] == [0]
    assert labeled["run_waiting"] == "SCHEDULED"
    assert labeled["state1_again"] == "WaitingForLabels"
    # Same batch, same MLflow run: the second cycle did not train or select again.
    assert labeled["pending1_again"] == labeled["pending1"]


def test_partial_imports_complete_the_round_once_the_batch_is_whole(labeled):
    assert labeled["partial_a"] == 0 and labeled["tags_after_partial"] == [0]
    assert labeled["partial_b"] == 0 and labeled["tags3"] == [0, 1]
    ws = Workspace(labeled["workspace"])
    ledger = read_ledger(ws.ledger_path("people"))
    round1 = [r for r in ledger if r.round == 1]
    pending = labeled["pending1"]
    assert [r.sample_id for r in round1] == pending.sample_ids
    assert {r.labeled_by for r in round1} == {"bob via round1-a.csv", "carol via round1-b.csv"}
    assert [r.score for r in round1] == pending.state["scores"]
    assert all(r.mlflow_run_id == pending.state["run_id"] for r in round1)
    run = labeled["run_done"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["git.tag"] == "people/round-0001"
    assert run.data.tags["baldflow.state"] == "labeled"
    assert run.data.metrics["labeled_size"] == 15
    assert ws.labeled_at("people", 1)[-5:] == [(r.sample_id, r.label, 1) for r in round1]
    assert ws.git("status", "--porcelain").strip() == ""


# ---------------------------------------------------------------------------- audit
def test_history_of_one_sample_tells_its_whole_story(labeled, capsys):
    from baldflow.audit.queries import sample_story

    workspace = labeled["workspace"]
    sample = labeled["pending1"].sample_ids[0]
    story = sample_story(workspace, sample)
    (record,) = story["acquisitions"]
    assert record["round"] == 1 and record["git_tag"] == "people/round-0001"
    assert record["mlflow_run_id"] == labeled["pending1"].state["run_id"]
    assert record["labeled_by"] == "bob via round1-a.csv"
    assert record["first_pick_probability"] is not None and record["score"] is not None
    ws = Workspace(workspace)
    assert record["git_commit"] == ws.git("rev-parse", "people/round-0001^{commit}").strip()
    assert record["labeled_set_md5"] in record["labeled_set_version"]
    assert main(["history", "-w", str(workspace), "--sample", sample]) == 0
    out = capsys.readouterr().out
    for text in ("people/round-0001", "bob via round1-a.csv", "first-pick probability"):
        assert text in out
    assert main(["history", "-w", str(workspace), "--sample", "nope"]) == 1


def test_show_round_lists_the_batch_with_its_mlflow_run(labeled, capsys):
    workspace = labeled["workspace"]
    assert main(["show", "-w", str(workspace), "--round", "1", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    pending = labeled["pending1"]
    assert [r["sample_id"] for r in record["batch"]] == pending.sample_ids
    assert record["git_tag"] == "people/round-0001"
    assert record["mlflow"]["run_id"] == pending.state["run_id"]
    assert record["mlflow"]["status"] == "FINISHED"
    assert record["mlflow"]["tags"]["git.tag"] == "people/round-0001"
    assert sum(record["class_histogram"].values()) == 5
    assert main(["show", "-w", str(workspace), "--round", "1"]) == 0
    assert "class histogram" in capsys.readouterr().out
    assert main(["show", "-w", str(workspace), "--round", "7"]) == 1


def test_diff_reads_both_labeled_sets_through_dvc(labeled, capsys):
    workspace = labeled["workspace"]
    assert main(["diff", "-w", str(workspace), "--from", "0", "--to", "1", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["from"]["size"] == 10 and record["to"]["size"] == 15
    assert sorted(r["sample_id"] for r in record["added"]) == sorted(labeled["pending1"].sample_ids)
    assert record["removed"] == [] and record["relabeled"] == []
    assert main(["diff", "-w", str(workspace), "--from", "0", "--to", "1", "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("added,") == 5


def test_report_is_one_self_contained_html_page(labeled, tmp_path):
    workspace = labeled["workspace"]
    out = tmp_path / "report.html"
    assert main(["report", "-w", str(workspace), "--output", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # Learning curve + one contact sheet per round, all inline.
    assert text.count("src='data:image/png;base64,") == 3
    assert "http://" not in text and "https://" not in text
    # Ids are digits, and digits occur in the base64 images too: read them from the tables.
    tables = report_tables(text)
    assert sample_ids_under(tables, "Round 1:") == labeled["pending1"].sample_ids
    ledger = read_ledger(Workspace(workspace).ledger_path("people"))
    assert sample_ids_under(tables, "Ledger") == [r.sample_id for r in ledger]


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, with the heading (h2/h3) above it."""

    def __init__(self):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.heading = ""
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append((self.heading, []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th", "h2", "h3"):
            self._text = []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][1][-1].append("".join(self._text).strip())
        elif tag in ("h2", "h3"):
            self.heading = "".join(self._text).strip()
        if tag in ("td", "th", "h2", "h3"):
            self._text = None


def report_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    parser = _Tables()
    parser.feed(text)
    parser.close()
    return parser.tables


def sample_ids_under(tables, heading: str) -> list[str]:
    """The sample_id column of the one table with that heading (prefix) and that column."""
    (rows,) = [rows for h, rows in tables if h.startswith(heading) and "sample_id" in rows[0]]
    column = rows[0].index("sample_id")
    return [row[column] for row in rows[1:]]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
def test_report_renders_in_headless_chromium(labeled, tmp_path):
    report = tmp_path / "report.html"
    assert main(["report", "-w", str(labeled["workspace"]), "--output", str(report)]) == 0
    shot = tmp_path / "report.png"
    script = Path(__file__).resolve().parents[1] / "scripts" / "render_report.sh"
    subprocess.run([str(script), str(report), str(shot)], check=True, timeout=120)
    # A blank page compresses to a few kB; the curve, tables and digits do not.
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 30_000
