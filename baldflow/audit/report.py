"""Human-readable audit output: terminal tables for show/diff/history, and the HTML report.

The HTML report is one self-contained file (images as base64, inline CSS, no scripts), so it
can be archived or mailed as it is.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baldflow.audit.queries import open_workspace, pick_campaign, rebuilt_pool
from baldflow.common import format_number, printable
from baldflow.figures.plots import learning_curve_png
from baldflow.figures.thumbnails import contact_sheet, png_data_uri
from baldflow.workspace.ledger import ACQUISITION_COLUMNS

# The ledger's columns as the history table and the report show them: the round seed beside the
# selection key it drew.
LEDGER_COLUMNS = list(ACQUISITION_COLUMNS)
LEDGER_COLUMNS.insert(LEDGER_COLUMNS.index("selection_key") + 1, "seed")


def _cell(value: Any) -> str:
    return format_number(value, digits=4, missing="-")


# ---------------------------------------------------------------------------- terminal
# Ids, labels and names are users' text: rich would read `[red]` or `[/]` in a plain string as
# markup (or fail on it) and `:smile:` as an emoji code. A Text is shown as it is.
def plain(value: Any):
    """A table cell or title that rich shows literally, control characters made visible."""
    from rich.text import Text

    return Text(printable(value if isinstance(value, str) else _cell(value)))


# Width of tables written to a file or pipe: wide enough that no table is cut or folded (a
# table takes its natural width, not this one).
UNBOUNDED_WIDTH = 10_000


def console():
    """A console that never reads markup, emoji codes or highlights into plain prints.

    In a terminal, tables fit its width. Written to a log or a pipe, they keep their full width
    (rich would cut them to 80 columns) unless $COLUMNS says otherwise.
    """
    import os
    import sys

    from rich.console import Console

    width = None
    if not os.environ.get("COLUMNS", "").isdigit() and not _is_terminal(sys.stdout):
        width = UNBOUNDED_WIDTH
    return Console(markup=False, emoji=False, highlight=False, width=width)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def print_story(story: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    fields = [
        ("campaign", "campaign"),
        ("round", "round"),
        ("acquired at (UTC)", "acquired_at"),
        ("strategy", "strategy"),
        ("chosen by", "chosen_by"),
        ("position in batch", "position_in_batch"),
        ("score", "score"),
        ("first-pick probability", "first_pick_probability"),
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
    for name in story.get("never_acquired") or []:
        print(
            f"sample {printable(story['sample_id'])} is in the pool of {printable(name)} but was "
            "never acquired"
        )
    _print_round_scores(story)


def _print_round_scores(story: dict[str, Any]) -> None:
    """One line per round whose score table holds the sample, picked or passed over.

    Stories from workspaces without score tables (or built before they existed) print nothing.
    """
    scores = story.get("scores") or []
    if not scores:
        return
    print(f"scores of sample {printable(story['sample_id'])} in every scored round:")
    for entry in scores:
        # Not the position in a batch (the story's table has that): the sample's place among
        # all the round's scored samples, 1 = the highest score.
        rank = (
            "not scored"
            if entry["rank"] is None
            else f"rank by score {entry['rank']} among {entry['scored']}"
        )
        picked = "picked" if entry["picked"] else "not picked"
        print(
            f"  {printable(entry['campaign'])} round {entry['round']}: "
            f"score {_cell(entry['score'])}, key {_cell(entry['key'])}, {rank}, {picked}"
        )


# The metrics `show` prints of a round's run (`--format json` has all of them).
_MAIN_METRICS = ("test_accuracy", "test_nll", "train_size", "epochs", "seconds_round")


def print_round(record: dict[str, Any]) -> None:
    from rich.table import Table

    mlflow = record["mlflow"]
    print(f"campaign {record['campaign']}, round {record['round']} ({record['strategy']})")
    print(
        f"  git tag:          {record['git_tag']} ({record['git_commit'][:12]}, "
        f"{record['committed_at']})"
    )
    print(f"  labeled set:      {record['labeled_size']} samples, md5 {record['labeled_set_md5']}")
    status = mlflow.get("status") or mlflow.get("error", "")
    if record["round"] == 0:
        # Round 0 labels the initial set: no model chose it, and its run is the campaign's.
        print("  test accuracy:    - (round 0 is the initial labeled set: no model chose it)")
        print(f"  MLflow run:       {mlflow.get('run_id') or '-'} (the campaign's run; {status})")
    else:
        accuracy = _cell(record["test_accuracy"])
        print(f"  test accuracy:    {accuracy} (the model that chose the batch)")
        print(f"  MLflow run:       {mlflow.get('run_id') or '-'} ({status})")
    metrics = mlflow.get("metrics") or {}
    if metrics:
        keys = [k for k in _MAIN_METRICS if k in metrics] or sorted(metrics)
        shown = ", ".join(f"{k} {_cell(float(metrics[k]))}" for k in keys)
        more = len(metrics) - len(keys)
        tail = f" (and {more} more: --format json)" if more else ""
        print(f"  MLflow metrics:   {shown}{tail}")
    if mlflow.get("experiment_id") not in (None, ""):
        from baldflow.audit.hints import mlflow_ui_command, mlflow_ui_url

        uri = mlflow.get("tracking_uri", "")
        url = mlflow_ui_url(uri, mlflow["experiment_id"], mlflow["run_id"])
        command = mlflow_ui_command(uri)
        if command:
            print(f"  MLflow UI:        {command}")
            print(f"                    then open {url}")
        else:
            print(f"  MLflow UI:        {url}")
    histogram = ", ".join(f"{k}: {v}" for k, v in record["class_histogram"].items())
    print(f"  class histogram:  {histogram}")
    table = Table(title="batch")
    columns = ["rank", "sample_id", "label", "score", "first_pick_probability", "labeled_by"]
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
    out = console()
    out.print(table)
    if not record["removed"] and not record["relabeled"]:
        return
    # Rounds only ever add labels: either of these means the history was rewritten.
    print(
        f"WARNING: the labeled set at {b['tag']} does not contain the one at {a['tag']}: "
        f"{len(record['removed'])} sample(s) removed and {len(record['relabeled'])} relabeled. "
        "Rounds only add labels, so the history at these tags was rewritten; "
        "`baldflow verify` checks every round."
    )
    if record["removed"]:
        table = Table(title=f"{len(record['removed'])} removed")
        for column in ("sample_id", "label", "round"):
            table.add_column(column, overflow="fold")
        for row in record["removed"]:
            table.add_row(plain(row["sample_id"]), plain(row["label"]), plain(row["round"]))
        out.print(table)
    if record["relabeled"]:
        table = Table(title=f"{len(record['relabeled'])} relabeled")
        for column in ("sample_id", f"label at {a['tag']}", f"label at {b['tag']}"):
            table.add_column(plain(column), overflow="fold")
        for row in record["relabeled"]:
            table.add_row(plain(row["sample_id"]), plain(row["label_from"]), plain(row["label_to"]))
        out.print(table)


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
img { max-width: 100%; }
"""


@dataclasses.dataclass
class _Pool:
    """What the report draws from the campaign's data: images by sample id and class names."""

    drawn: Any = None  # the campaign's pool (a CampaignPool) when its samples are images
    ids: frozenset[str] = frozenset()  # the drawn pool's sample ids
    class_names: list[str] = dataclasses.field(default_factory=list)
    note: str = ""


def _pool(ws_root: Path, campaign: str) -> _Pool:
    """The campaign's pool rebuilt from its recorded parameters, or why it could not be."""
    params_file = ws_root / "data" / campaign / "campaign.yaml"
    if not params_file.exists():
        return _Pool(note="no campaign.yaml to rebuild the pool from")
    try:
        from baldflow.data.pool import shows_as_images

        pool = rebuilt_pool(params_file)
    except Exception as exc:  # noqa: BLE001 (the report is still useful without thumbnails)
        return _Pool(note=f"thumbnails and class names unavailable: {type(exc).__name__}: {exc}")
    names = [str(name) for name in pool.class_names]
    if pool.streamed:
        # Reading a streamed pool by id first indexes every id (16 bytes a row): more than a
        # report should cost.
        return _Pool(class_names=names, note="the pool is on disk: no thumbnails drawn")
    if not shows_as_images(pool.input_shape):
        return _Pool(class_names=names, note="the data are not images")
    return _Pool(pool, frozenset(pool.pool_ids), names)


def label_text(label: Any, class_names: Sequence[str] = ()) -> str:
    """A label as people read it: its class name, with the index the ledger stores when the
    name is not the index itself (digits' classes are named "0" to "9")."""
    if isinstance(label, int) and 0 <= label < len(class_names):
        name = class_names[label]
        return name if name == str(label) else f"{name} ({label})"
    return _cell(label)


def _fixed(decimals: int):
    """A formatter of numbers (or the numeric text of rounds.csv) with fixed decimals."""

    def fmt(value: Any) -> str:
        if value is None or value == "":
            return "-"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        return "-" if number != number else f"{number:.{decimals}f}"

    return fmt


def _histogram_html(counts: dict[Any, int], class_names: Sequence[str] = ()) -> str:
    if not counts:
        return ""
    top = max(counts.values())
    rows = []
    for label in sorted(counts):
        width = int(120 * counts[label] / top)
        name = html.escape(label_text(label, class_names))
        rows.append(
            f"<tr><td class='id'>{name}</td><td class='id'><span class='bar' "
            f"style='width:{width}px'></span> {counts[label]}</td></tr>"
        )
    return (
        "<table><tr><th class='id'>label</th><th class='id'>count</th></tr>"
        + "".join(rows)
        + "</table>"
    )


# Columns whose cells are text (left-aligned); the others are numbers.
_TEXT_COLUMNS = ("sample_id", "label", "strategy", "labeled_by", "acquired_at", "mlflow_run_id")


def _table_html(
    rows: list[dict[str, Any]],
    columns: Sequence[str],
    *,
    titles: dict[str, str] | None = None,
    formats: dict[str, Any] | None = None,
) -> str:
    """An HTML table of `rows`; `titles` renames headers, `formats` maps a column to a function
    that turns its value into text (default: numbers to 4 significant digits)."""
    titles, formats = titles or {}, formats or {}

    def css(column: str) -> str:
        return " class='id'" if column in _TEXT_COLUMNS else ""

    head = "".join(f"<th{css(c)}>{html.escape(titles.get(c, c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(
            f"<td{css(c)}>{html.escape(formats.get(c, _cell)(row.get(c)))}</td>" for c in columns
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


_ROUND_TITLES = {
    "round": "round",
    "train_size": "trained on",
    "labeled": "labeled",
    "acquired": "acquired",
    "test_accuracy": "test accuracy",
    "test_nll": "test NLL",
    "seconds_compute": "compute s",
    "seconds_acquisition": "acquisition s",
}


def _rounds_html(rounds: list[dict[str, str]]) -> str:
    """rounds.csv as a table: round 0 named for what it is, numbers to fixed decimals."""

    def round_name(value: Any) -> str:
        return "0 (initial set)" if str(value) == "0" else str(value)

    rows = [
        {**row, "train_size": "" if str(row.get("round")) == "0" else row.get("train_size")}
        for row in rounds
    ]
    columns = [c for c in _ROUND_TITLES if any(c in row for row in rows)]
    formats = {
        "round": round_name,
        "test_accuracy": _fixed(4),
        "test_nll": _fixed(4),
        "seconds_compute": _fixed(2),
        "seconds_acquisition": _fixed(2),
    }
    return _table_html(rows, columns, titles=_ROUND_TITLES, formats=formats)


def rounds_done_text(completed: Sequence[int]) -> str:
    """How many rounds are done, in the words `status` uses: round 0 labels the initial set,
    and the rounds counted are the acquisition rounds after it (what campaign.rounds asks for)."""
    if not completed:
        return "no round completed yet"
    last = max(completed)
    return f"{last} round{'' if last == 1 else 's'} done after the initial labeled set (round 0)"


def round_title(round_index: int, strategy: str, counts: dict[Any, int]) -> str:
    """What a round's batch is: round 0 is the initial labeled set, not a strategy's pick."""
    size = sum(counts.values())
    samples = f"{size} sample{'' if size == 1 else 's'}"
    if round_index == 0:
        balanced = len(set(counts.values())) == 1
        return f"initial labeled set, {samples}" + (", balanced by class" if balanced else "")
    return f"{samples} by {strategy}"


def render_report(ws_root: str | Path, campaign: str | None = None) -> tuple[str, str]:
    """The report's HTML and the campaign it describes."""
    ws = open_workspace(ws_root)
    name = pick_campaign(ws, campaign)
    rounds = ws.rounds_summary(name)
    ledger = [dataclasses.asdict(r) for r in ws.ledger(name)]
    pool = _pool(ws.root, name)
    names = pool.class_names

    def label(value: Any) -> str:
        return label_text(value, names)

    def class_name(value: Any) -> str:
        # Thumbnail captions are short: the name alone.
        return names[value] if isinstance(value, int) and 0 <= value < len(names) else str(value)

    curve = png_data_uri(learning_curve_png(rounds, f"{name}: test accuracy"))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>baldflow report: {html.escape(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>baldflow campaign <code>{html.escape(name)}</code></h1>",
        # The workspace's name, not its path: a report is archived and mailed, and the path
        # of one machine says nothing on another (and may say more than it should).
        f"<p class='note'>workspace {html.escape(ws.root.name)}; "
        f"{html.escape(rounds_done_text(ws.completed_rounds(name)))}, {len(ledger)} labeled "
        f"samples. Every round is the git tag <code>{html.escape(name)}/round-NNNN</code>.</p>",
        "<h2>Learning curve</h2>",
        f"<img alt='learning curve' src='{curve}'>",
        "<h2>Rounds</h2>",
        "<p class='note'>Round r's model is trained on the labeled set of round r-1 and "
        "acquires the batch that makes round r's labeled count.</p>",
        _rounds_html(rounds),
        "<h2>Acquisitions per round</h2>",
    ]
    if pool.note:
        parts.append(f"<p class='note'>{html.escape(pool.note)}</p>")
    by_round: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in ledger:
        by_round[row["round"]].append(row)
    for round_index in sorted(by_round):
        batch = by_round[round_index]
        counts = collections.Counter(r["label"] for r in batch)
        parts.append(
            f"<div class='round'><h3>Round {round_index}: "
            f"{html.escape(round_title(round_index, batch[0]['strategy'], counts))}</h3>"
        )
        parts.append(_histogram_html(dict(counts), names))
        if pool.drawn is not None:
            picks = [r for r in batch if r["sample_id"] in pool.ids]
            images = pool.drawn.inputs([r["sample_id"] for r in picks])
            captions = [f"{r['sample_id']}: {class_name(r['label'])}" for r in picks]
            sheet = contact_sheet(images, captions, columns=10)
            parts.append(
                f"<img alt='round {round_index} acquisitions' src='{png_data_uri(sheet)}'>"
            )
        parts.append(
            _table_html(
                batch,
                ["rank", "sample_id", "label", "score", "first_pick_probability", "labeled_by"],
                formats={"label": label},
            )
        )
        parts.append("</div>")
    parts.append("<h2>Ledger</h2>")
    parts.append(
        _table_html(
            ledger,
            [*LEDGER_COLUMNS, "labeled_by", "mlflow_run_id"],
            formats={"label": label},
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts), name


def write_report(
    ws_root: str | Path, campaign: str | None = None, output: str | Path | None = None
) -> Path:
    from baldflow.workspace.repo import REPORT_PATTERN, exclude_from_git

    text, name = render_report(ws_root, campaign)
    root = Path(ws_root).resolve()
    path = Path(output) if output else root / REPORT_PATTERN.replace("*", name)
    # A report is an output, never a change to the audited history: kept out of git's view
    # (the rule is in .gitignore of newer workspaces; .git/info/exclude covers older ones and
    # an --output inside the workspace), so `verify` stays clean.
    where = path.resolve()
    if where.is_relative_to(root):
        rel = where.relative_to(root).as_posix()
        default = where.parent == root and fnmatch.fnmatchcase(where.name, REPORT_PATTERN)
        exclude_from_git(root, "/" + (REPORT_PATTERN if default else rel))
    path.write_text(text, encoding="utf-8")
    return path
