"""Human-readable audit output: terminal tables for show/diff/history, and the HTML report.

The HTML report is one self-contained file (images as base64, inline CSS, no scripts), so it
can be archived or mailed as it is.
"""

from __future__ import annotations

import collections
import html
import io
from pathlib import Path
from typing import Any

from baldflow.audit.queries import open_workspace, pick_campaign
from baldflow.common import format_number, printable
from baldflow.figures.thumbnails import contact_sheet, png_data_uri
from baldflow.workspace.ledger import ACQUISITION_COLUMNS


def _cell(value: Any) -> str:
    return format_number(value, digits=4, missing="-")


# ---------------------------------------------------------------------------- terminal
# Ids, labels and names are users' text: rich would read `[red]` or `[/]` in a plain string as
# markup (or fail on it) and `:smile:` as an emoji code. A Text is shown as it is.
def plain(value: Any):
    """A table cell or title that rich shows literally, control characters made visible."""
    from rich.text import Text

    return Text(printable(value if isinstance(value, str) else _cell(value)))


def console():
    """A console that never reads markup, emoji codes or highlights into plain prints."""
    from rich.console import Console

    return Console(markup=False, emoji=False, highlight=False)


def print_story(story: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    fields = [
        ("campaign", "campaign"),
        ("round", "round"),
        ("acquired at (UTC)", "acquired_at"),
        ("strategy", "strategy"),
        ("chosen by", "chosen_by"),
        ("rank in batch", "rank"),
        ("batch size", "batch_size"),
        ("score", "score"),
        ("selection probability", "selection_probability"),
        ("selection key", "selection_key"),
        ("round seed", "seed"),
        ("label", "label"),
        ("labeled by", "labeled_by"),
        ("MLflow run", "mlflow_run_id"),
        ("Prefect flow run", "prefect_flow_run_id"),
        ("labeled-set version", "labeled_set_version"),
        ("git tag", "git_tag"),
        ("git commit", "git_commit"),
    ]
    for record in story["acquisitions"]:
        table = Table(title=plain(f"sample {story['sample_id']}"), show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for title, key in fields:
            table.add_row(title, plain(_cell(record.get(key))))
        out.print(table)
    for waiting in story["pending"]:
        state = "labeled, round not yet complete" if waiting["labeled"] else "not labeled yet"
        print(
            f"sample {printable(story['sample_id'])} is in the batch of round "
            f"{waiting['round']} of {waiting['campaign']} waiting for labels since "
            f"{waiting['handed_off_at']} ({state})"
        )


def print_round(record: dict[str, Any]) -> None:
    from rich.table import Table

    mlflow = record["mlflow"]
    print(f"campaign {record['campaign']}, round {record['round']} ({record['strategy']})")
    print(
        f"  git tag:          {record['git_tag']} ({record['git_commit'][:12]}, "
        f"{record['committed_at']})"
    )
    print(f"  labeled set:      {record['labeled_size']} samples, md5 {record['labeled_set_md5']}")
    print(f"  test accuracy:    {_cell(record['test_accuracy'])} (the model that chose the batch)")
    status = mlflow.get("status") or mlflow.get("error", "")
    print(f"  MLflow run:       {mlflow.get('run_id') or '-'} ({status})")
    histogram = ", ".join(f"{k}: {v}" for k, v in record["class_histogram"].items())
    print(f"  class histogram:  {histogram}")
    table = Table(title="batch")
    columns = ["rank", "sample_id", "label", "score", "selection_probability", "labeled_by"]
    for column in columns:
        table.add_column(column.replace("selection_", "sel. "), overflow="fold")
    for row in record["batch"]:
        table.add_row(*[plain(_cell(row.get(c))) for c in columns])
    console().print(table)


def print_diff(record: dict[str, Any]) -> None:
    from rich.table import Table

    a, b = record["from"], record["to"]
    print(
        f"campaign {record['campaign']}: {a['tag']} ({a['size']} labeled) -> "
        f"{b['tag']} ({b['size']} labeled), read through DVC"
    )
    table = Table(title=f"{len(record['added'])} added")
    for column in ("sample_id", "label", "round"):
        table.add_column(column, overflow="fold")
    for row in record["added"]:
        table.add_row(plain(row["sample_id"]), plain(row["label"]), plain(row["round"]))
    console().print(table)
    if record["removed"] or record["relabeled"]:
        print(f"removed: {record['removed']}\nrelabeled: {record['relabeled']}")


# ---------------------------------------------------------------------------- HTML
_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1150px; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0 1.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; }
td.id, th.id { text-align: left; }
.bar { display: inline-block; height: 10px; background: #4878a8; vertical-align: middle; }
.round { border-top: 2px solid #4878a8; margin-top: 1.5em; }
.note { color: #666; font-size: 13px; }
"""


def _learning_curve(rounds: list[dict[str, str]], title: str) -> bytes:
    from baldflow.figures.plots import learning_curve_figure

    buffer = io.BytesIO()
    learning_curve_figure(rounds, title).savefig(buffer, format="png")
    return buffer.getvalue()


def _pool_images(ws_root: Path, campaign: str) -> tuple[Any, dict[str, int], str]:
    """The campaign's pool images by sample id, or why there are none (not an image source)."""
    import yaml

    params_file = ws_root / "data" / campaign / "campaign.yaml"
    if not params_file.exists():
        return None, {}, "no campaign.yaml to rebuild the pool from"
    try:
        from baldflow import steps
        from baldflow.config import validate
        from baldflow.figures.thumbnails import is_image_batch

        config = validate(yaml.safe_load(params_file.read_text()), check_names=False)
        data = steps.prepare_data(config)
    except Exception as exc:  # noqa: BLE001 (the report is still useful without thumbnails)
        return None, {}, f"thumbnails unavailable: {type(exc).__name__}: {exc}"
    if not is_image_batch(data.splits.pool_x):
        return None, {}, "the data are not images"
    return data.splits.pool_x, data.row_of, ""


def _histogram_html(counts: dict[Any, int], class_names: dict[int, str] | None = None) -> str:
    if not counts:
        return ""
    top = max(counts.values())
    rows = []
    for label in sorted(counts):
        width = int(120 * counts[label] / top)
        name = html.escape(str(label))
        rows.append(
            f"<tr><td class='id'>{name}</td><td class='id'><span class='bar' "
            f"style='width:{width}px'></span> {counts[label]}</td></tr>"
        )
    return (
        "<table><tr><th class='id'>label</th><th class='id'>count</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _table_html(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(
        f"<th class='id'>{c}</th>"
        if c in ("sample_id", "labeled_by", "acquired_at")
        else f"<th>{c}</th>"
        for c in columns
    )
    body = []
    for row in rows:
        cells = []
        for c in columns:
            css = " class='id'" if c in ("sample_id", "labeled_by", "acquired_at") else ""
            cells.append(f"<td{css}>{html.escape(_cell(row.get(c)))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_report(ws_root: str | Path, campaign: str | None = None) -> tuple[str, str]:
    """The report's HTML and the campaign it describes."""
    import dataclasses

    ws = open_workspace(ws_root)
    name = pick_campaign(ws, campaign)
    rounds = ws.rounds_summary(name)
    ledger = [dataclasses.asdict(r) for r in ws.ledger(name)]
    images, row_of, image_note = _pool_images(ws.root, name)
    curve = png_data_uri(_learning_curve(rounds, f"{name}: test accuracy"))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>baldflow report: {html.escape(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>baldflow campaign <code>{html.escape(name)}</code></h1>",
        f"<p class='note'>workspace {html.escape(str(ws.root))}; {len(rounds)} completed "
        f"round(s), {len(ledger)} labeled samples. Every round is the git tag "
        f"<code>{html.escape(name)}/round-NNNN</code>.</p>",
        "<h2>Learning curve</h2>",
        f"<img alt='learning curve' src='{curve}'>",
        "<h2>Rounds</h2>",
        _table_html(
            rounds,
            ["round", "train_size", "labeled", "acquired", "test_accuracy", "seconds_acquisition"],
        ),
        "<h2>Acquisitions per round</h2>",
    ]
    if image_note:
        parts.append(f"<p class='note'>{html.escape(image_note)}</p>")
    by_round: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in ledger:
        by_round[row["round"]].append(row)
    for round_index in sorted(by_round):
        batch = by_round[round_index]
        counts = collections.Counter(r["label"] for r in batch)
        parts.append(
            f"<div class='round'><h3>Round {round_index}: {len(batch)} sample(s) by "
            f"{html.escape(batch[0]['strategy'])}</h3>"
        )
        parts.append(_histogram_html(dict(counts)))
        if images is not None:
            picks = [r for r in batch if r["sample_id"] in row_of]
            rows = [row_of[r["sample_id"]] for r in picks]
            sheet = contact_sheet(
                images[rows], [f"{r['sample_id']}: {r['label']}" for r in picks], columns=10
            )
            parts.append(
                f"<img alt='round {round_index} acquisitions' src='{png_data_uri(sheet)}'>"
            )
        parts.append(
            _table_html(
                batch,
                ["rank", "sample_id", "label", "score", "selection_probability", "labeled_by"],
            )
        )
        parts.append("</div>")
    parts.append("<h2>Ledger</h2>")
    parts.append(
        _table_html(
            ledger,
            [*ACQUISITION_COLUMNS, "labeled_by", "mlflow_run_id"],
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts), name


def write_report(
    ws_root: str | Path, campaign: str | None = None, output: str | Path | None = None
) -> Path:
    text, name = render_report(ws_root, campaign)
    path = Path(output) if output else Path(ws_root).resolve() / f"report-{name}.html"
    path.write_text(text, encoding="utf-8")
    return path
