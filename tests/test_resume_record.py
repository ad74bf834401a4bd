"""What a campaign records of itself and what a resume takes from that record (issue items 2,
3, 11, 12, 15, 16, 17): `run --campaign NAME` keeps the campaign's length, a campaign with
nothing to do answers without a Prefect server, and what the CLI prints around a hand-off.

The integration fixture walks one people-labeled campaign (oracle `file`) through real Prefect
(the session's test server), MLflow, git and DVC; the no-server checks run the CLI in a fresh
interpreter with no Prefect API configured, where any flow would have to start a server.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from baldflow.cli import HIDDEN_ALIASES, build_parser, main
from baldflow.labeling import HandOff
from baldflow.workspace import Workspace


# ---------------------------------------------------------------------------- helpers
def cli_env() -> dict[str, str]:
    """A user's shell: the workspace's own Prefect home and no configured API, so a command
    that ran a flow would have to start (and print) a temporary server."""
    env = dict(os.environ)
    env.pop("PREFECT_HOME", None)
    env.pop("PREFECT_API_URL", None)
    return env


def fresh_cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "baldflow.cli", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    return result, time.monotonic() - started


def in_process(*args: str) -> tuple[int, str]:
    """The CLI in this process, reporting to the session's Prefect test server."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(list(args))
    return code, buffer.getvalue()


def label_everything(handoff: HandOff, path: Path) -> Path:
    pending = handoff.pending()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "label"])
        for index, sid in enumerate(pending.sample_ids):
            writer.writerow([sid, str(index % 10)])
    return path


def recorded(ws: Workspace, campaign: str) -> dict:
    return yaml.safe_load((ws.campaign_dir(campaign) / "campaign.yaml").read_text())


# ---------------------------------------------------------------------------- the campaign
@pytest.fixture(scope="module")
def people(tmp_path_factory, prefect_harness, tiny_defaults):
    """A campaign started with `--set campaign.rounds=1` in a workspace whose params.yaml asks
    for 25 rounds, resumed with `--campaign people` at every step."""
    root = tmp_path_factory.mktemp("resume")
    workspace = root / "ws"
    params = {**tiny_defaults, "campaign": {**tiny_defaults["campaign"], "rounds": 25}}
    params["training"] = {**params["training"], "num_threads": 1}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    ws_arg = ["-w", str(workspace)]
    start = [*ws_arg, "-c", str(params_file), "--set", "campaign.name=people"]
    start += ["--set", "oracle.kind=file"]
    ws = Workspace(workspace)
    handoff = HandOff(ws.campaign_dir("people"), "people")
    seen: dict = {"workspace": workspace}

    # Round 0 goes out for labels.
    seen["start"] = in_process("run", *start, "--set", "campaign.rounds=1")
    # The campaign exists while its round 0 is out: it resumes, and has nothing to do.
    seen["resume0"] = fresh_cli("run", *ws_arg, "--campaign", "people")
    seen["cycle0"] = fresh_cli("cycle", *ws_arg, "--campaign", "people")
    seen["import0"] = in_process(
        "label", "import", str(label_everything(handoff, root / "l0.csv")), *ws_arg
    )
    # Round 1 by the record's length (1), not params.yaml's 25.
    seen["resume1"] = in_process("run", *ws_arg, "--campaign", "people")
    seen["import1"] = in_process(
        "label", "import", str(label_everything(handoff, root / "l1.csv")), *ws_arg
    )
    seen["record1"] = recorded(ws, "people")
    seen["tags1"] = ws.completed_rounds("people")
    seen["done"] = fresh_cli("run", *ws_arg, "--campaign", "people")
    seen["pending_after_done"] = handoff.pending()
    # A run that asks for more hands round 2 out; the campaign still records 1 round, and a
    # run for 1 round has nothing to do whatever batch is out past it.
    seen["more"] = in_process("run", *start, "--set", "campaign.rounds=2")
    seen["status_beyond"] = in_process("status", *ws_arg)
    seen["beyond"] = fresh_cli("run", *start, "--set", "campaign.rounds=1")
    # Extending explicitly: the batch out is round 2's, still unlabeled; once labeled, the
    # commit records the new length.
    seen["extend"] = fresh_cli("run", *ws_arg, "--campaign", "people", "--set", "campaign.rounds=2")
    seen["import2"] = in_process(
        "label", "import", str(label_everything(handoff, root / "l2.csv")), *ws_arg
    )
    seen["record2"] = recorded(ws, "people")
    seen["done2"] = fresh_cli("run", *ws_arg, "--campaign", "people")
    return seen


def assert_no_server(result: subprocess.CompletedProcess, took: float) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "nothing was run or recorded" in result.stdout, out
    assert "Prefect server" not in out and "starting Prefect" not in out, out
    assert took < 20, took


def test_a_stop_for_labels_leads_with_the_labeling_instruction(people):
    code, out = people["start"]
    assert code == 0, out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("Waiting for labels"))
    assert "fill in the label column of" in lines[first + 1]
    assert "label import" in lines[first + 2]
    assert first < lines.index("Where to look next:")
    # Round 0 is not labeled yet: no table of rounds, empty or not.
    assert "┏" not in out and "round ┃" not in out, out


def test_a_campaign_whose_round_0_is_out_resumes_and_answers_without_a_server(people):
    result, took = people["resume0"]
    assert_no_server(result, took)
    assert "waits for labels for round 0" in result.stdout
    assert "Waiting for labels: round 0 (10 samples)." in result.stdout
    result, took = people["cycle0"]
    assert_no_server(result, took)
    assert "waiting for labels for round 0" in result.stdout
    assert "no round completed yet" in result.stdout and "round None" not in result.stdout


def test_label_import_that_completes_a_round_names_the_next_command(people):
    code, out = people["import0"]
    assert code == 0, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("next batch: ") and last.endswith(
        f"run --workspace {people['workspace']} --campaign people"
    ), out
    code, out = people["import1"]
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith("campaign people is complete: all 1 rounds")


def test_run_campaign_resumes_with_the_recorded_length(people):
    code, out = people["resume1"]
    assert code == 0, out
    assert "1 rounds of 5" in out and "Waiting for labels: round 1" in out
    assert people["record1"]["campaign"]["rounds"] == 1
    assert people["tags1"] == [0, 1]
    result, took = people["done"]
    assert_no_server(result, took)
    assert "is complete: all 1 rounds are done" in result.stdout
    assert people["pending_after_done"] is None  # no round 2 the campaign never asked for


def test_a_batch_past_the_campaigns_length_is_nothing_to_do_without_a_server(people):
    code, out = people["more"]
    assert code == 0 and "Waiting for labels: round 2" in out, out
    result, took = people["beyond"]
    assert_no_server(result, took)
    assert "a batch for round 2 is out for labels" in result.stdout
    assert "--campaign people --set campaign.rounds=2" in result.stdout
    # `status` no longer shows "rounds done 1" beside a round-2 batch without a word.
    code, out = people["status_beyond"]
    assert "people: round 2 waiting for labels" in out
    assert "past the 1 round(s) campaign people records" in out


def test_extending_is_explicit_and_recorded(people):
    result, took = people["extend"]
    assert_no_server(result, took)  # round 2's batch is out and unlabeled: it only waits
    assert "waits for labels for round 2" in result.stdout
    code, out = people["import2"]
    assert code == 0, out
    assert people["record2"]["campaign"]["rounds"] == 2
    result, took = people["done2"]
    assert_no_server(result, took)
    assert "is complete: all 2 rounds are done" in result.stdout


# ---------------------------------------------------------------------------- printed commands
def test_printed_ui_commands_keep_telemetry_off():
    from baldflow.audit.hints import mlflow_ui_command, prefect_ui_command, where_to_look

    command = prefect_ui_command("/tmp/some ws")
    assert " server --workspace '/tmp/some ws'" in command
    assert "prefect server start" not in command
    assert mlflow_ui_command("sqlite:////tmp/m.db").startswith("MLFLOW_DISABLE_TELEMETRY=true ")
    lines = where_to_look(
        {"workspace": "/w", "campaign": "c", "tracking_uri": "http://mlflow.example:5000"}
    )
    assert not [line for line in lines if "prefect server start" in line]


# ---------------------------------------------------------------------------- strategy names
def test_a_bare_score_suggests_its_strategies_not_a_lookalike():
    from baldflow.config import ConfigError, validate

    with pytest.raises(ConfigError) as info:
        validate({"acquisition": {"strategy": "bald"}})
    assert str(info.value).endswith("got 'bald'; did you mean power-bald or topk-bald?")
    with pytest.raises(ConfigError) as info:
        validate({"acquisition": {"strategy": "power-bal"}})
    assert str(info.value).endswith("did you mean power-bald?")


def test_strategy_names_have_one_separator_and_old_spellings_still_resolve(tmp_path):
    from baldflow.acquisition.strategies import STRATEGY_NAMES, get_strategy
    from baldflow.config import validate
    from baldflow.workspace.ledger import LEDGER_FIELDS, read_ledger

    assert "power-least-confidence" in STRATEGY_NAMES
    assert [name for name in STRATEGY_NAMES if "_" in name] == []
    old = "power-least_confidence"
    strategy = get_strategy(old)
    assert (strategy.name, strategy.score) == ("power-least-confidence", "least_confidence")
    assert validate({"acquisition": {"strategy": old}}).acquisition.strategy == strategy.name

    # A campaign recorded with the old spelling resumes under today's.
    ws = Workspace.init(tmp_path / "ws")
    config = validate({"acquisition": {"strategy": "power-least-confidence"}})
    identity = config.identity()
    record = {**identity, "acquisition": {**identity["acquisition"], "strategy": old}}
    campaign_dir = ws.campaign_dir(config.campaign.name)
    campaign_dir.mkdir(parents=True)
    (campaign_dir / "campaign.yaml").write_text(yaml.safe_dump(record))
    ws.check_campaign_params(config.campaign.name, identity)  # no ConfigError
    # And its ledger rows read with today's spelling.
    row = dict.fromkeys(LEDGER_FIELDS, "")
    row.update(campaign="c", round="1", sample_id="7", label="3", strategy=old, rank="0")
    row.update(seed="1")
    ledger = tmp_path / "ledger.csv"
    with ledger.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LEDGER_FIELDS)
        writer.writeheader()
        writer.writerow(row)
    assert read_ledger(ledger)[0].strategy == "power-least-confidence"


# ---------------------------------------------------------------------------- command names
def _subcommands():
    import argparse

    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, action.choices


def test_schedule_and_server_say_what_they_do_and_serve_stays_hidden():
    parser, commands = _subcommands()
    listing = parser.format_help()
    assert "schedule" in listing and "server" in listing
    assert "    serve " not in listing  # the old name is no longer listed...
    assert HIDDEN_ALIASES == ("serve",) and "serve" in commands  # ...but still runs
    for name in ("schedule", "serve", "cycle", "deploy"):
        options = {o for a in commands[name]._actions for o in a.option_strings}
        assert "--campaign" in options, name


def test_set_has_one_metavar_everywhere():
    _, commands = _subcommands()
    metavars = {
        name: action.metavar
        for name, command in commands.items()
        for action in command._actions
        if "--set" in action.option_strings
    }
    assert set(metavars) >= {"run", "cycle", "schedule", "deploy"}
    assert set(metavars.values()) == {"SECTION.KEY=VALUE"}, metavars
