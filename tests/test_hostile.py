"""Hostile input: users' ids, class names and label files, as people and spreadsheets make them.

Ids and class names are untrusted text. They must come out of every output as they went in
(terminal tables, CSV sheets, plots, the HTML report) or be refused at load; label files in
every shape a spreadsheet saves must import exactly, or be refused with nothing stored.
Everything runs on real files in temp dirs; one campaign at the end goes through the real flow.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import os
import tempfile
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baldflow.common import from_spreadsheet, spreadsheet_safe, text_problem
from baldflow.labeling import HandOff, LabelImportError, PendingRound, import_labels

# Ids that every output must show as they are: markup, mathtext, CSV metacharacters, formula
# triggers, scripts, combining marks, emoji, HTML and a very long one.
HOSTILE_IDS = [
    "[red]x[/red]",
    "[/]",
    "$\\foo$",
    "$x_1$",
    'a,b "q" it\'s',
    '=HYPERLINK("http://evil.example/","click")',
    "-0.5",
    "+1",
    "@SUM(A1)",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "cafe\u0301 \U0001f642 \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "<script>alert('x')</script> :smile: &amp;",
    "L" + "o" * 9_998 + "ng",
]


def make_handoff(
    directory: Path, ids: list[str], class_names: list[str], round_index: int = 3
) -> HandOff:
    """A campaign folder with one pending batch, as the flow hands it off."""
    handoff = HandOff(directory / "campaign", "hostile")
    handoff.write(
        PendingRound(
            campaign="hostile",
            round=round_index,
            sample_ids=list(ids),
            items=[f"npz at /data/x.npz, sample {sid}" for sid in ids],
            class_names=list(class_names),
            base_md5="",
            created_at="2026-01-01T00:00:00.000Z",
        )
    )
    return handoff


def stored(handoff: HandOff) -> dict[str, int]:
    pending = handoff.pending()
    return {sid: int(r["label"]) for sid, r in handoff.imported(pending.round).items()}


def labels_file_bytes(handoff: HandOff) -> bytes | None:
    path = handoff.labels_path(handoff.pending().round)
    return path.read_bytes() if path.exists() else None


def write_rows(path: Path, rows, header=("sample_id", "label"), *, bom=False, newline="\n"):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + buffer.getvalue().encode("utf-8"))
    return path


def refused(handoff: HandOff, path: Path, *, partial=False) -> str:
    """Import a file that must be refused; nothing stored may change. Returns the message."""
    before = labels_file_bytes(handoff)
    with pytest.raises(LabelImportError) as info:
        import_labels(handoff, path, partial=partial, labeled_by="tester")
    assert labels_file_bytes(handoff) == before
    return str(info.value)


# ---------------------------------------------------------------------------- the helpers
def test_spreadsheet_safe_neutralises_formula_text_only():
    for text in ("=1+1", "+1", "-0.5", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("x")'):
        assert spreadsheet_safe(text) == "'" + text
        assert from_spreadsheet(spreadsheet_safe(text)) == text
    for text in ("plain", "0.5", "a=b", "", " =x", "[/]", "\u05e9"):
        assert spreadsheet_safe(text) == text
    assert from_spreadsheet("x") == "x" and from_spreadsheet("''x") == "'x"


def test_text_problem_accepts_hostile_printable_text_and_names_what_it_refuses():
    for sid in HOSTILE_IDS:
        assert text_problem(sid) is None, sid
    assert text_problem("a\nb") == "holds the control character U+000A at position 1"
    assert "U+202E RIGHT-TO-LEFT OVERRIDE" in text_problem("a\u202eb")
    assert "lone surrogate" in text_problem("a\ud800")
    assert "apostrophe" in text_problem("'x") and "empty" in text_problem("")


# ---------------------------------------------------------------------------- the sheet
def read_sheet(handoff: HandOff) -> list[dict[str, str]]:
    path = handoff.sheet_path(handoff.pending().round)
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_sheet_neutralises_formulas_and_imports_back_with_or_without_apostrophes(tmp_path):
    classes = ["[b]cat", "$\\dog$", "=bird"]
    handoff = make_handoff(tmp_path / "a", HOSTILE_IDS, classes)
    sheet = read_sheet(handoff)
    cells = [row["sample_id"] for row in sheet]
    for cell, sid in zip(cells, HOSTILE_IDS, strict=True):
        assert cell == ("'" + sid if sid[0] in "=+-@" else sid)
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in sheet for cell in row.values())
    # Filled in as a spreadsheet keeps it: apostrophes stay, class names with markup and '='.
    truth = {sid: i % 3 for i, sid in enumerate(HOSTILE_IDS)}
    rows = [
        (cell, spreadsheet_safe(classes[truth[sid]]))
        for cell, sid in zip(cells, HOSTILE_IDS, strict=True)
    ]
    write_rows(tmp_path / "kept.csv", rows)
    result = import_labels(handoff, tmp_path / "kept.csv", labeled_by="ann")
    assert result.complete and stored(handoff) == truth
    # A spreadsheet that drops the apostrophes on save: the same ids.
    other = make_handoff(tmp_path / "b", HOSTILE_IDS, classes)
    write_rows(tmp_path / "dropped.csv", [(sid, str(truth[sid])) for sid in HOSTILE_IDS])
    import_labels(other, tmp_path / "dropped.csv", labeled_by="bob")
    assert stored(other) == truth
    # Machine files keep the exact ids.
    labels = handoff.labels_path(3).read_text(encoding="utf-8")
    assert "'=HYPERLINK" not in labels and '"=HYPERLINK(""http://evil.example/""' in labels


def test_ids_in_another_unicode_normalisation_import_as_the_batch_id(tmp_path):
    nfc = "caf\u00e9"
    handoff = make_handoff(tmp_path, [nfc, "tea"], ["a", "b"])
    write_rows(tmp_path / "nfd.csv", [(unicodedata.normalize("NFD", nfc), "a"), ("tea", "b")])
    import_labels(handoff, tmp_path / "nfd.csv", labeled_by="ann")
    assert stored(handoff) == {nfc: 0, "tea": 1}


# ---------------------------------------------------------------------------- label files
CLASSES = ["cat", "Dog", "=x", "\u05de\u05d6\u05d4"]
BATCH = ["=1+2", "-0.5", "caf\u00e9", "[red]x[/red]", 'a,b "q"', "@SUM(A1)", "\U0001f642", "7"]


def test_bom_crlf_extra_columns_whitespace_and_mixed_labels(tmp_path):
    handoff = make_handoff(tmp_path, BATCH, CLASSES)
    text = (
        " Label ,note, SAMPLE_ID ,item\r\n"
        " cat ,hi,'=1+2,x\r\n"
        "1,,-0.5,\r\n"
        '"  =x  ",",",caf\u00e9,\r\n'
        "\u05de\u05d6\u05d4,,[red]x[/red],\r\n"
        ",,,\r\n"
        '\'3,,"a,b ""q""",\r\n'
        "DOG,,@SUM(A1),\r\n"
        "0,,\U0001f642,\r\n"
        "2,,7,\r\n"
        ",,,\r\n"
    )
    path = tmp_path / "excel.csv"
    path.write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    result = import_labels(handoff, path, labeled_by="ann")
    assert result.added == 8 and result.complete
    assert stored(handoff) == {
        "=1+2": 0, "-0.5": 1, "caf\u00e9": 2, "[red]x[/red]": 3,
        'a,b "q"': 3, "@SUM(A1)": 1, "\U0001f642": 0, "7": 2,
    }  # fmt: skip


def test_unicode_digits_are_indices_and_digit_like_characters_are_refused(tmp_path):
    handoff = make_handoff(tmp_path, ["a", "b", "c"], CLASSES)
    # Arabic-Indic three, fullwidth one, ASCII zero with a leading zero.
    write_rows(tmp_path / "digits.csv", [("a", "\u0663"), ("b", "\uff11"), ("c", "00")])
    import_labels(handoff, tmp_path / "digits.csv", labeled_by="ann")
    assert stored(handoff) == {"a": 3, "b": 1, "c": 0}
    other = make_handoff(tmp_path / "o", ["a", "b", "c"], CLASSES)
    write_rows(tmp_path / "bad.csv", [("a", "\u00b3"), ("b", "\u2462"), ("c", "-1")])
    message = refused(other, tmp_path / "bad.csv")
    for line, raw in ((2, "\u00b3"), (3, "\u2462"), (4, "-1")):
        assert (
            f"line {line}: sample_id {'abc'[line - 2]!r} has label {raw!r}, not one of" in message
        )
    assert "(or their indices 0..3)" in message


def test_class_names_that_are_numbers_win_over_indices(tmp_path):
    ids = ["a", "b", "c", "d"]
    handoff = make_handoff(tmp_path, ids, ["1", "2", "3"])
    # '1' is the class named "1" (index 0), never index 1; '٣' spells the name "3".
    write_rows(tmp_path / "names.csv", [("a", "1"), ("b", "2"), ("c", "\u0663"), ("d", "03")])
    import_labels(handoff, tmp_path / "names.csv", labeled_by="ann")
    assert stored(handoff) == {"a": 0, "b": 1, "c": 2, "d": 2}
    other = make_handoff(tmp_path / "o", ids, ["1", "2", "3"])
    write_rows(tmp_path / "index.csv", [("a", "0"), ("b", "1"), ("c", "2"), ("d", "3")])
    message = refused(other, tmp_path / "index.csv")
    assert "label '0', not one of the classes 1, 2, 3; indices are not accepted" in message
    assert "1 problem(s)" in message
    # Digit names at their own positions (MNIST's '0'..'9') keep indices and names agreeing.
    same = make_handoff(tmp_path / "s", ["a", "b"], ["0", "1", "2"])
    write_rows(tmp_path / "same.csv", [("a", "2"), ("b", "\uff10")])
    import_labels(same, tmp_path / "same.csv", labeled_by="ann")
    assert stored(same) == {"a": 2, "b": 0}


def test_names_match_ignoring_case_only_when_that_names_one_class(tmp_path):
    handoff = make_handoff(tmp_path, ["a", "b"], ["Cat", "cat", "Dog"])
    write_rows(tmp_path / "f.csv", [("a", "CAT"), ("b", "dog")])
    message = refused(handoff, tmp_path / "f.csv")
    assert "label 'CAT', which matches the classes 'Cat', 'cat' ignoring case" in message
    assert "'b'" not in message


def test_duplicates_unknown_ids_and_contradictions_are_refused_with_their_lines(tmp_path):
    handoff = make_handoff(tmp_path, ["a", "b", "c"], CLASSES)
    write_rows(tmp_path / "first.csv", [("a", "cat"), ("b", ""), ("c", "")])
    import_labels(handoff, tmp_path / "first.csv", partial=True, labeled_by="ann")
    rows = [("b", "cat"), ("'b", "cat"), ("zzz", "cat"), ("a", "Dog"), ("", "cat"), ("c", "")]
    message = refused(handoff, write_rows(tmp_path / "dup.csv", rows))
    assert "line 3: sample_id 'b' appears more than once (first on line 2)" in message
    assert "line 4: sample_id 'zzz' is not in the pending batch (round 3)" in message
    assert "line 5: sample_id 'a' was already imported with label 0" in message
    assert "line 6: empty sample_id" in message
    assert "line 7: sample_id 'c' has an empty label" in message
    assert stored(handoff) == {"a": 0}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty"),
        (b"  \r\n\n", "the file is empty"),
        (b"sample_id,label\r\n", "has a header (line 1) but no rows"),
        (b"sample_id,label\n,\n , \n", "has a header (line 1) but no rows"),
        (b"id,label\na,cat\n", "column 'sample_id' is missing (header: 'id', 'label')"),
        (b"sample_id,label,LABEL\na,cat,Dog\n", "column 'label' is present 2 times"),
        (b"sample_id,label\ncaf\xe9,cat\n", "not UTF-8: byte 0xe9 at offset 19 (line 2)"),
        (codecs.BOM_UTF16_LE + "sample_id,label\n".encode("utf-16-le"), "the file is UTF-16"),
        ("sample_id,label\na,cat\n".encode("utf-16-le"), "holds NUL bytes (line 1)"),
        (b'sample_id,label\n"a,cat\n', "line 2: not readable as CSV"),
        (b'sample_id,label\n"a"b,cat\n', "line 2: not readable as CSV"),
        (b"sample_id,label\n" + b"x" * 200_000 + b",cat\n", "not readable as CSV"),
    ],
)
def test_files_that_are_no_label_sheet_are_refused_naming_the_file(tmp_path, content, expected):
    handoff = make_handoff(tmp_path, ["a", "b"], CLASSES)
    path = tmp_path / "labels.csv"
    path.write_bytes(content)
    message = refused(handoff, path)
    assert expected in message and str(path) in message


def test_labelers_and_file_names_with_control_characters_are_refused(tmp_path):
    handoff = make_handoff(tmp_path, ["a"], CLASSES)
    good = write_rows(tmp_path / "ok.csv", [("a", "cat")])
    with pytest.raises(LabelImportError, match=r"labeled_by 'ann\\x1b\[31m'"):
        import_labels(handoff, good, labeled_by="ann\x1b[31m")
    odd = write_rows(tmp_path / "new\nline.csv", [("a", "cat")])
    with pytest.raises(LabelImportError, match=r"the file name 'new\\nline.csv'"):
        import_labels(handoff, odd, labeled_by="ann")
    assert labels_file_bytes(handoff) is None


# ---------------------------------------------------------------------------- properties
def _id_forms(sid: str) -> st.SearchStrategy[str]:
    """How a person's sheet may write an id back."""
    return st.sampled_from(
        [sid, "'" + sid, " " + sid + " ", unicodedata.normalize("NFD", sid), spreadsheet_safe(sid)]
    )


def _label_forms(index: int) -> st.SearchStrategy[str]:
    name = CLASSES[index]
    return st.sampled_from(
        [
            name,
            name.swapcase(),
            f"  {name} ",
            spreadsheet_safe(name),
            str(index),
            chr(0x660 + index),  # Arabic-Indic digit
            chr(0xFF10 + index),  # fullwidth digit
        ]
    )


JUNK_LABELS = ["nope", "-1", "4", "99", "\u00b3", "1.0", "ca t", "\u2462"]


@st.composite
def label_files(draw):
    """A label file for BATCH with what importing it must store, or None if it must fail."""
    earlier = draw(st.dictionaries(st.sampled_from(BATCH), st.integers(0, 3), max_size=4))
    partial = draw(st.booleans())
    chosen = draw(st.lists(st.sampled_from(BATCH), unique=True))
    truth = {sid: earlier.get(sid, draw(st.integers(0, 3))) for sid in chosen}
    rows, valid, expected = [], True, dict(earlier)
    for sid in chosen:
        empty = partial and draw(st.integers(0, 4)) == 0
        rows.append([draw(_id_forms(sid)), "" if empty else draw(_label_forms(truth[sid]))])
        if not empty:
            expected[sid] = truth[sid]
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["unknown", "label", "duplicate", "no-id", "conflict"]))
        if kind == "unknown":
            rows.append([draw(st.sampled_from(["zzz", "=2+1", "caf"])), "cat"])
        elif kind == "label":
            rows.append([draw(st.sampled_from(BATCH)), draw(st.sampled_from(JUNK_LABELS))])
        elif kind == "duplicate" and chosen:
            rows.append([draw(st.sampled_from(chosen)), "cat"])
        elif kind == "no-id":
            rows.append(["", "cat"])
        elif kind == "conflict" and earlier:
            sid = draw(st.sampled_from(sorted(earlier)))
            rows.append([sid, str((earlier[sid] + 1) % 4)])
        else:
            continue
        valid = False
    rows = draw(st.permutations(rows))
    if not partial and set(expected) != set(BATCH):
        valid = False
    if not rows:
        valid = False
    # The sheet's other columns, in any order, and what a spreadsheet does to the file.
    header = ["sample_id", "label", "item", "note"]
    order = draw(st.permutations(range(4)))
    # Any text but NUL, which no text CSV holds (the import refuses it), and a lone CR, which
    # csv.writer leaves unquoted with "\n" line ends (a spreadsheet would quote it).
    note = st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r"), max_size=5
    )
    table = [[header[i] for i in order]]
    for sid_cell, label_cell in rows:
        full = [sid_cell, label_cell, draw(note), draw(note)]
        table.append([full[i] for i in order])
        if draw(st.integers(0, 6)) == 0:
            table.append(["", "", "", ""])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows(table)
    bom = codecs.BOM_UTF8 if draw(st.booleans()) else b""
    content = bom + buffer.getvalue().encode("utf-8")
    return earlier, partial, content, expected if valid else None


def _fresh_handoff(directory: Path, earlier: dict[str, int]) -> HandOff:
    handoff = make_handoff(directory, BATCH, CLASSES)
    if earlier:
        first = write_rows(directory / "earlier.csv", [(s, str(v)) for s, v in earlier.items()])
        import_labels(handoff, first, partial=True, labeled_by="earlier")
    return handoff


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_files())
def test_an_import_stores_exactly_the_valid_rows_or_nothing(case):
    earlier, partial, content, expected = case
    with tempfile.TemporaryDirectory() as tmp:
        handoff = _fresh_handoff(Path(tmp), earlier)
        before = labels_file_bytes(handoff)
        path = Path(tmp) / "labels.csv"
        path.write_bytes(content)
        if expected is None:
            with pytest.raises(LabelImportError):
                import_labels(handoff, path, partial=partial, labeled_by="ann")
            assert labels_file_bytes(handoff) == before
        else:
            import_labels(handoff, path, partial=partial, labeled_by="ann")
            assert stored(handoff) == expected


# Pieces of label files glued at random: separators, quotes, line ends, ids, names, digits.
_JUNK_TEXT = st.lists(
    st.sampled_from(list(",\"'\n\r\t =+-@ 0123\u0663") + BATCH + CLASSES), max_size=40
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    earlier=st.dictionaries(st.sampled_from(BATCH), st.integers(0, 3), max_size=3),
    body=st.one_of(_JUNK_TEXT.map(str.encode), st.binary(max_size=200)),
    header=st.booleans(),
    partial=st.booleans(),
)
def test_junk_is_refused_cleanly_or_only_adds_valid_labels(earlier, body, header, partial):
    with tempfile.TemporaryDirectory() as tmp:
        handoff = _fresh_handoff(Path(tmp), earlier)
        before = labels_file_bytes(handoff)
        path = Path(tmp) / "junk.csv"
        path.write_bytes((b"sample_id,label\n" if header else b"") + body)
        try:
            import_labels(handoff, path, partial=partial, labeled_by="ann")
        except LabelImportError:
            assert labels_file_bytes(handoff) == before
            return
        after = stored(handoff)
        # What was stored stays; what was added is a batch id with a class index.
        assert {s: after[s] for s in earlier} == earlier
        assert set(after) <= set(BATCH) and all(0 <= v < len(CLASSES) for v in after.values())


# ---------------------------------------------------------------------------- terminal, plots
@pytest.fixture
def wide_terminal(monkeypatch):
    # rich folds long cells to the terminal width; a wide one keeps each id on one line.
    monkeypatch.setenv("COLUMNS", "500")


def _record(sid: str, rank: int) -> dict:
    return {
        "campaign": "hostile",
        "round": 1,
        "sample_id": sid,
        "label": rank % 3,
        "strategy": "power-bald",
        "rank": rank,
        "score": -0.5,
        "first_pick_probability": 0.25,
        "selection_key": 1.5,
        "seed": 7,
        "acquired_at": "2026-01-01T00:00:00.000Z",
        "mlflow_run_id": "abc",
        "prefect_flow_run_id": "def",
        "labeled_set_md5": "0" * 32,
        "labeled_by": "[bold]ann[/bold] via :smile:.csv",
    }


SHORT_HOSTILE = [sid for sid in HOSTILE_IDS if len(sid) < 100]


def test_show_diff_and_story_tables_print_users_text_literally(capsys, wide_terminal):
    from baldflow.audit.report import print_diff, print_round, print_story

    batch = [_record(sid, i) for i, sid in enumerate(HOSTILE_IDS)]
    print_round(
        {
            "campaign": "hostile",
            "round": 1,
            "strategy": "power-bald",
            "git_tag": "hostile/round-0001",
            "git_commit": "f" * 40,
            "committed_at": "2026-01-01",
            "labeled_size": 13,
            "labeled_set_md5": "0" * 32,
            "test_accuracy": 0.5,
            "class_histogram": {"0": 5, "1": 4, "2": 4},
            "batch": batch,
            "mlflow": {"run_id": "abc", "status": "FINISHED"},
        }
    )
    out = capsys.readouterr().out
    for sid in SHORT_HOSTILE:
        assert sid in out, sid
    assert "[bold]ann[/bold] via :smile:.csv" in out and "\U0001f604" not in out
    print_diff(
        {
            "campaign": "hostile",
            "from": {"tag": "hostile/round-0000", "size": 0},
            "to": {"tag": "hostile/round-0001", "size": 13},
            "added": [{"sample_id": s, "label": 1, "round": 1} for s in HOSTILE_IDS],
            "removed": [],
            "relabeled": [],
        }
    )
    out = capsys.readouterr().out
    assert all(sid in out for sid in SHORT_HOSTILE)
    for sid in ("[/]", "[red]x[/red]", "<script>alert('x')</script> :smile: &amp;"):
        record = _record(sid, 0) | {"chosen_by": "m", "batch_size": 1, "git_tag": "t"}
        print_story({"sample_id": sid, "acquisitions": [record], "pending": []})
        assert f"sample {sid}" in capsys.readouterr().out


def test_contact_sheets_draw_mathtext_and_markup_ids_as_plain_text(tmp_path):
    from baldflow.figures.thumbnails import caption_text, contact_sheet

    images = torch.rand(len(HOSTILE_IDS), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    png = contact_sheet(images, HOSTILE_IDS, tmp_path / "sheet.png", columns=5)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "sheet.png").read_bytes() == png
    long = caption_text(HOSTILE_IDS[-1])
    assert len(long) == 24 and long.startswith("Loo") and long.endswith("ong")
    assert caption_text("a\nb") == "a\\nb"


def test_history_csv_for_people_neutralises_text_but_not_numbers():
    from baldflow.workspace.ledger import LedgerRow, ledger_text

    rows = [LedgerRow(**_record(sid, i)) for i, sid in enumerate(HOSTILE_IDS)]
    exact = list(csv.DictReader(io.StringIO(ledger_text(rows, header=True))))
    people = list(csv.DictReader(io.StringIO(ledger_text(rows, header=True, for_people=True))))
    assert [r["sample_id"] for r in exact] == HOSTILE_IDS
    for a, b in zip(exact, people, strict=True):
        assert b["sample_id"] == spreadsheet_safe(a["sample_id"])
        assert b["score"] == a["score"] == "-0.5"
        assert {k: v for k, v in a.items() if k != "sample_id"} == {
            k: v for k, v in b.items() if k != "sample_id"
        }
    assert people[5]["sample_id"] == "'" + HOSTILE_IDS[5]


# ---------------------------------------------------------------------------- end to end
class _Cells(HTMLParser):
    """Text of every table cell and heading of a page, entities decoded."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cells: list[str] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("td", "th", "h1", "h2", "h3", "title"):
            self._text = []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th", "h1", "h2", "h3", "title") and self._text is not None:
            self.cells.append("".join(self._text).strip())
            self._text = None


def _pool_rows(npz: Path, n: int, **options) -> list[int]:
    """Which rows of an n-row npz become the pool: the split depends on n and the seed only."""
    from baldflow.data import load_source

    probe = npz.with_name("probe.npz")
    np.savez(probe, X=np.zeros((n, 8, 8), np.uint8), y=np.arange(n) % 3,
             ids=np.array([f"row{i}" for i in range(n)]),
             X_test=np.zeros((6, 8, 8), np.uint8), y_test=np.arange(6) % 3)  # fmt: skip
    splits = load_source("npz", root=str(probe), **options)
    return [int(sid.removeprefix("row")) for sid in splits.pool_ids]


@pytest.fixture(scope="module")
def hostile_campaign(tmp_path_factory, prefect_harness, tiny_defaults):
    """A real campaign on an npz whose every pool id is hostile: round 0 and round 1 labeled by
    people through the sheet, as a spreadsheet saves it, then audited through the CLI."""
    from baldflow.cli import main
    from baldflow.flows.campaign import campaign_flow
    from baldflow.workspace import Workspace

    root = tmp_path_factory.mktemp("hostile")
    npz = root / "hostile.npz"
    options = {"val_size": 6, "seed": 5}
    n = len(HOSTILE_IDS) + 6
    pool_rows = _pool_rows(npz, n, **options)
    ids = [f"val-{i}" for i in range(n)]
    for row, sid in zip(pool_rows, HOSTILE_IDS, strict=True):
        ids[row] = sid
    y = np.zeros(n, dtype=np.int64)
    for k, row in enumerate(pool_rows):
        y[row] = k % 3  # 5, 4, 4 per class: room for 2 of each in round 0
    generator = np.random.default_rng(0)
    np.savez(
        npz,
        X=generator.integers(0, 256, (n, 8, 8), dtype=np.uint8),
        y=y,
        ids=np.array(ids),
        class_names=np.array(["[b]cat", "$\\dog$", "=bird"]),
        X_test=generator.integers(0, 256, (6, 8, 8), dtype=np.uint8),
        y_test=np.arange(6) % 3,
    )
    params = json.loads(json.dumps(tiny_defaults))
    params["campaign"] = {"name": "hostile", "seed": 5, "rounds": 1, "initial_per_class": 2}
    params["data"] = {"source": "npz", "root": str(npz), "options": {"val_size": 6}}
    params["acquisition"] = {**params["acquisition"], "batch_size": 7}
    params["oracle"] = {"kind": "file"}
    workspace = root / "ws"
    seen: dict = {"workspace": workspace, "npz": npz}
    truth = {sid: int(y[row]) for row, sid in zip(pool_rows, HOSTILE_IDS, strict=True)}
    seen["truth"] = truth
    handoff = HandOff(Workspace(workspace).campaign_dir("hostile"), "hostile")

    def label_round(index: int, name: str, *, keep_apostrophes: bool, by_name: bool) -> int:
        campaign_flow(workspace=str(workspace), params=params, return_state=True)
        sheet = read_sheet(handoff)
        seen[f"sheet{index}"] = sheet
        seen[f"contact{index}"] = handoff.contact_sheet_path(index).read_bytes()[:8]
        classes = ["[b]cat", "$\\dog$", "=bird"]
        rows = []
        for row in sheet:
            sid = from_spreadsheet(row["sample_id"])
            cell = row["sample_id"] if keep_apostrophes else sid
            label = spreadsheet_safe(classes[truth[sid]]) if by_name else str(truth[sid])
            rows.append((cell, row["item"], label))
        path = write_rows(root / name, rows, ("sample_id", "item", "label"), bom=True,
                          newline="\r\n")  # fmt: skip
        return main(["label", "import", str(path), "-w", str(workspace), "--by", "[i]ann[/i]"])

    seen["import0"] = label_round(0, "round0.csv", keep_apostrophes=True, by_name=True)
    seen["import1"] = label_round(1, "round1.csv", keep_apostrophes=False, by_name=False)
    outputs = {}
    for key, argv in {
        "history": ["history"],
        "history_csv": ["history", "--format", "csv"],
        "history_json": ["history", "--format", "json"],
        "show": ["show", "--round", "1"],
        "diff": ["diff", "--from", "0", "--to", "1"],
        "diff_csv": ["diff", "--from", "0", "--to", "1", "--format", "csv"],
        "status": ["status"],
        "report": ["report", "--output", str(root / "report.html")],
    }.items():
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), _wide():
            code = main([*argv, "-w", str(workspace)])
        outputs[key] = (code, buffer.getvalue())
    # The last one as copied from the sheet, with its neutralising apostrophe.
    for sid in ("[/]", "$\\foo$", HOSTILE_IDS[5], "'" + HOSTILE_IDS[5]):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), _wide():
            code = main(["history", "--sample", sid, "-w", str(workspace)])
        outputs[f"story {sid}"] = (code, buffer.getvalue())
    seen["outputs"] = outputs
    seen["report"] = (root / "report.html").read_text(encoding="utf-8")
    return seen


@contextlib.contextmanager
def _wide():
    """A wide terminal for rich (the module fixture cannot use monkeypatch)."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "500"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


def test_hostile_ids_are_handed_off_neutralised_and_come_back_exact(hostile_campaign):
    seen = hostile_campaign
    assert seen["import0"] == 0 and seen["import1"] == 0
    assert seen["contact0"] == b"\x89PNG\r\n\x1a\n" == seen["contact1"]
    cells = [r["sample_id"] for r in seen["sheet0"] + seen["sheet1"]]
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    assert sorted(from_spreadsheet(c) for c in cells) == sorted(HOSTILE_IDS)
    from baldflow.workspace import Workspace

    ws = Workspace(seen["workspace"])
    ledger = ws.ledger("hostile")
    assert sorted(r.sample_id for r in ledger) == sorted(HOSTILE_IDS)
    assert all(r.label == seen["truth"][r.sample_id] for r in ledger)
    assert {r.labeled_by for r in ledger} == {
        "[i]ann[/i] via round0.csv",
        "[i]ann[/i] via round1.csv",
    }
    assert sorted(sid for sid, _, _ in ws.labeled_at("hostile", 1)) == sorted(HOSTILE_IDS)


def test_cli_audit_output_shows_hostile_ids_literally(hostile_campaign):
    outputs = hostile_campaign["outputs"]
    assert all(code == 0 for code, _ in outputs.values()), {
        k: v[1][-500:] for k, v in outputs.items() if v[0] != 0
    }
    history = outputs["history"][1]
    for sid in SHORT_HOSTILE:
        assert sid in history, sid
    records = json.loads(outputs["history_json"][1])
    assert sorted(r["sample_id"] for r in records) == sorted(HOSTILE_IDS)
    show = outputs["show"][1]
    round1 = [r["sample_id"] for r in records if r["round"] == 1]
    assert all(sid in show for sid in round1 if len(sid) < 100)
    assert "[i]ann[/i] via round1.csv" in show
    assert all(sid in outputs["diff"][1] for sid in round1 if len(sid) < 100)
    for sid in ("[/]", "$\\foo$", HOSTILE_IDS[5]):
        assert f"sample {sid}" in outputs[f"story {sid}"][1]
    assert f"sample {HOSTILE_IDS[5]}" in outputs[f"story '{HOSTILE_IDS[5]}"][1]


def test_csv_exports_for_people_neutralise_formulas(hostile_campaign):
    outputs = hostile_campaign["outputs"]
    rows = list(csv.DictReader(io.StringIO(outputs["history_csv"][1])))
    assert sorted(from_spreadsheet(r["sample_id"]) for r in rows) == sorted(HOSTILE_IDS)
    for row in rows:
        for key, value in row.items():
            if key in ("score", "first_pick_probability", "selection_key"):
                continue
            assert not value.startswith(("=", "+", "-", "@")), (key, value)
    diff = list(csv.DictReader(io.StringIO(outputs["diff_csv"][1])))
    assert diff and not any(r["sample_id"].startswith(("=", "+", "-", "@")) for r in diff)


def test_the_report_escapes_hostile_ids(hostile_campaign):
    text = hostile_campaign["report"]
    assert "<script>" not in text
    parser = _Cells()
    parser.feed(text)
    parser.close()
    for sid in HOSTILE_IDS:
        assert sid in parser.cells, sid[:40]
