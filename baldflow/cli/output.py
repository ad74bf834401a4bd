"""How the CLI prints the application layer's results: the run summary, what waits for
labels, what to do next, and the small formatting helpers the commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def say(line: str) -> None:
    """The CLI's `progress`: a line now, not when the buffer fills."""
    print(line, flush=True)


def quoted(path: object) -> str:
    """A path as a shell reads it back (quoted when it has spaces or other specials)."""
    import shlex

    return shlex.quote(str(path))


def short(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def baldflow_command() -> str:
    """`baldflow` as this shell runs it (its full path when it is not on PATH)."""
    from baldflow.audit.hints import shell_command

    return shell_command("baldflow")


def last_completed(last_round: int | None) -> str:
    """The campaign's progress in words; before round 0 is committed there is no round yet."""
    if last_round is None:
        return "no round completed yet"
    return f"last completed round {last_round}"


def print_waiting(result: dict[str, Any]) -> None:
    waiting = result.get("waiting_for_labels")
    if not waiting:
        return
    print(f"Waiting for labels: round {waiting['round']} ({waiting['batch_size']} samples).")
    if waiting.get("studio"):
        print(f"  label its tasks in Label Studio: {waiting['studio']}")
        print(f"  then: baldflow label pull --workspace {quoted(result['workspace'])}")
        return
    print(f"  fill in the label column of {waiting['sheet']}")
    print(
        f"  then: {baldflow_command()} label import {quoted(waiting['sheet'])} "
        f"--workspace {quoted(result['workspace'])}"
    )


def print_run_summary(result: dict[str, Any]) -> None:
    from rich.table import Table

    from baldflow.app import recorded_bookkeeping
    from baldflow.audit.hints import where_to_look
    from baldflow.audit.report import console as make_console

    console = make_console()
    # A run that stopped for labels leads with what the user must do now.
    print_waiting(result)
    bookkeeping = {t["round"]: t["seconds_bookkeeping"] for t in result.get("timings", [])}
    earlier = [int(row["round"]) for row in result["rounds"] if int(row["round"]) > 0]
    if any(r not in bookkeeping for r in earlier):
        bookkeeping = {**recorded_bookkeeping(result), **bookkeeping}
    table = Table(title=f"campaign {result['campaign']}")
    # Round r's model is trained on the labeled set of round r-1, then acquires the batch that
    # makes the labeled count of round r.
    for column in (
        "round",
        "trained on",
        "test accuracy",
        "labeled",
        "acquisition s",
        "bookkeeping s",
    ):
        table.add_column(column, justify="right")
    for row in result["rounds"]:
        r = int(row["round"])
        acc = row.get("test_accuracy") or ""
        seconds = bookkeeping.get(r)
        table.add_row(
            str(r),
            str(row.get("train_size") or "-") if r > 0 else "-",
            f"{float(acc):.4f}" if acc else "-",
            str(row.get("labeled", "")),
            f"{float(row['seconds_acquisition']):.2f}" if row.get("seconds_acquisition") else "-",
            f"{seconds:.2f}" if seconds is not None else "-",
        )
    if result["rounds"]:  # none before round 0 is labeled: no empty table
        console.print(table)
    if result.get("stopped") == "pool-empty":
        console.print("The pool is empty: every sample is labeled, so the campaign ended.")
    # Plain print: rich would wrap the long commands mid-word on narrow terminals.
    for line in where_to_look(result):
        print(line)


def say_batch_beyond(ws_root: Path, campaign: str, finished: Any) -> None:
    """A batch out for a round past the campaign's length waits for a run that asks for it."""
    if finished.beyond is None:
        return
    print(
        f"baldflow: a batch for round {finished.beyond} is out for labels, past the campaign's "
        f"length; `label import` of its labels extends the campaign to complete it, as does "
        f"{baldflow_command()} run --workspace {quoted(ws_root)} --campaign {campaign} "
        f"--set campaign.rounds={finished.beyond}"
    )


def say_what_next(ws_root: Path, outcome: dict[str, Any]) -> None:
    """After `label import` or `label pull` completed a round: the command that produces the
    next batch, or that the campaign is over."""
    name = outcome["campaign"]
    if outcome.get("stopped") == "pool-empty":
        print(f"campaign {name} is complete: the pool is empty")
    elif outcome.get("stopped") == "rounds":
        print(
            f"campaign {name} is complete: all {outcome['last_round']} rounds are done (to go "
            f"on: {baldflow_command()} run --workspace {quoted(ws_root)} --campaign "
            f"{name} --set campaign.rounds=N)"
        )
    else:
        print(
            f"next batch: {baldflow_command()} run --workspace {quoted(ws_root)} --campaign {name}"
        )


def print_json(record: Any) -> None:
    import json

    print(json.dumps(record, indent=2))
