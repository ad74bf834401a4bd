"""Score tables: every round's full pool scores, read back per sample for the audit."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from baldflow.workspace import LedgerRow, Workspace
from baldflow.workspace.scores import (
    ScoreTableError,
    ScoreTableWriter,
    read_score_table,
    sample_scores,
    score_table_path,
    write_score_table,
)

HOSTILE = [
    "a,b",
    'say "hi"',
    "=1+1",
    "+SUM(A1:A2)",
    "\U0001f600 smile",
    "\u05e9\u05dc\u05d5\u05dd \u202eevil",
    "[red]x[/red]",
    "<script>alert('x')</script>",
    "line\nbreak",
    "",
]


def test_path_names_the_round_with_four_digits(tmp_path):
    assert score_table_path(tmp_path, 3) == tmp_path / "scores" / "round-0003.parquet"
    with pytest.raises(ScoreTableError, match="round_index must be >= 0, got -1"):
        score_table_path(tmp_path, -1)


def test_round_trip_keeps_hostile_ids_nan_scores_and_null_keys(tmp_path):
    scores = np.arange(len(HOSTILE), dtype=np.float64) / 10
    scores[2] = np.nan
    keys = -np.arange(len(HOSTILE), dtype=np.float64)
    path = write_score_table(tmp_path / "t.parquet", HOSTILE, scores, keys)
    table = read_score_table(path)
    assert table.column_names == ["sample_id", "score", "key"]
    assert str(table.schema.field("score").type) == "double"
    assert table.column("sample_id").to_pylist() == HOSTILE
    got = table.column("score").to_pylist()
    assert math.isnan(got[2]) and got[:2] + got[3:] == scores[:2].tolist() + scores[3:].tolist()
    assert table.column("key").to_pylist() == keys.tolist()
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"

    nokeys = write_score_table(tmp_path / "n.parquet", HOSTILE, scores)
    assert read_score_table(nokeys).column("key").null_count == len(HOSTILE)


def test_batched_writes_equal_one_write(tmp_path):
    ids = [f"s{i}" for i in range(100)]
    scores = np.random.default_rng(0).random(100)
    keys = np.random.default_rng(1).random(100)
    one = read_score_table(write_score_table(tmp_path / "one.parquet", ids, scores, keys))
    with ScoreTableWriter(tmp_path / "many.parquet") as writer:
        for start in range(0, 100, 30):
            writer.write(
                ids[start : start + 30], scores[start : start + 30], keys[start : start + 30]
            )
        writer.write([], np.empty(0), np.empty(0))
    assert writer.rows == 100
    many = read_score_table(tmp_path / "many.parquet")
    assert many.equals(one)
    assert pq.ParquetFile(tmp_path / "many.parquet").metadata.num_row_groups == 4


def test_an_exception_inside_the_writer_leaves_no_file(tmp_path):
    path = tmp_path / "scores" / "round-0001.parquet"
    with pytest.raises(RuntimeError, match="killed"), ScoreTableWriter(path) as writer:
        writer.write(["a"], np.array([1.0]), None)
        raise RuntimeError("killed")
    assert list(path.parent.iterdir()) == []
    # A bad batch is refused with the field named, and also leaves nothing behind.
    with pytest.raises(ScoreTableError, match=r"sample_ids\[1\] must be str, got int"):
        write_score_table(path, ["a", 2], np.array([1.0, 2.0]))
    with pytest.raises(ScoreTableError, match="one value per sample_id"):
        write_score_table(path, ["a"], np.array([1.0, 2.0]))
    with pytest.raises(ScoreTableError, match="keys must have the shape"):
        write_score_table(path, ["a"], np.array([1.0]), np.array([1.0, 2.0]))
    assert list(path.parent.iterdir()) == []


def test_sample_scores_ranks_each_round_and_skips_rounds_without_the_sample(tmp_path):
    # Round 1 scores the whole pool; round 2's pool no longer holds "b" (picked in round 1).
    write_score_table(
        score_table_path(tmp_path, 1),
        ["a", "b", "=1+1", "c"],
        np.array([0.5, 0.9, np.nan, 0.5]),
        np.array([1.0, 2.0, 3.0, 4.0]),
    )
    write_score_table(score_table_path(tmp_path, 2), ["a", "=1+1", "c"], np.array([0.1, 0.3, 0.2]))
    # Stray files (a staged copy, another format) are not rounds.
    (tmp_path / "scores" / ".round-0003.parquet.tmp").write_bytes(b"partial")
    (tmp_path / "scores" / "notes.txt").write_text("x")

    assert sample_scores(tmp_path, "a") == [
        {"round": 1, "score": 0.5, "key": 1.0, "rank": 2, "scored": 3},
        {"round": 2, "score": 0.1, "key": None, "rank": 3, "scored": 3},
    ]
    # Ties share the better rank.
    assert sample_scores(tmp_path, "c")[0]["rank"] == 2
    assert sample_scores(tmp_path, "b") == [
        {"round": 1, "score": 0.9, "key": 2.0, "rank": 1, "scored": 3}
    ]
    assert sample_scores(tmp_path, "=1+1") == [
        {"round": 1, "score": None, "key": 3.0, "rank": None, "scored": 3},
        {"round": 2, "score": 0.3, "key": None, "rank": 1, "scored": 3},
    ]
    assert sample_scores(tmp_path, "nope") == []
    assert sample_scores(tmp_path / "no-such-campaign", "a") == []


def _row(round_index: int, sid: str, rank: int, score: float) -> LedgerRow:
    return LedgerRow(
        "camp",
        round_index,
        sid,
        1,
        "power-bald",
        rank,
        score,
        0.2,
        -0.5,
        7,
        "2026-01-01T00:00:00.000Z",
        f"run{round_index}",
        "flow",
        "",
    )


@pytest.fixture
def scored_workspace(tmp_path):
    """Round 0 (the initial set, no scores), rounds 1 and 2 with their pools' score tables."""
    ws = Workspace.init(tmp_path / "ws")
    base = {"p0": 0.1, "p1": 0.2, "=HYPERLINK(1)": 0.3, "p3": 0.4, "\U0001f600": np.nan}
    pool = list(base)
    ws.commit_round("camp", 0, [_row(0, "init", 0, None)], summary={"round": 0, "labeled": 1})
    for round_index, picked in ((1, "p1"), (2, "p3")):
        scores = np.array([base[sid] for sid in pool]) * round_index
        keys = np.arange(len(pool), dtype=np.float64)
        staged = write_score_table(tmp_path / f"staged-{round_index}.parquet", pool, scores, keys)
        score = float(scores[pool.index(picked)])
        ws.commit_round(
            "camp",
            round_index,
            [_row(round_index, picked, 0, score)],
            summary={"round": round_index, "labeled": 1 + round_index},
            score_table=staged,
        )
        pool.remove(picked)
    ws.close()
    return ws.root


def test_sample_story_has_every_rounds_score_picked_or_not(scored_workspace, capsys):
    from baldflow.audit.queries import sample_story
    from baldflow.audit.report import print_story

    campaign_dir = Workspace(scored_workspace).campaign_dir("camp")
    assert score_table_path(campaign_dir, 2).is_file()

    story = sample_story(scored_workspace, "p3")
    assert [a["round"] for a in story["acquisitions"]] == [2]
    assert story["scores"] == [
        {
            "campaign": "camp",
            "round": 1,
            "score": 0.4,
            "key": 3.0,
            "rank": 1,
            "scored": 4,
            "picked": False,
        },
        {
            "campaign": "camp",
            "round": 2,
            "score": 0.8,
            "key": 2.0,
            "rank": 1,
            "scored": 3,
            "picked": True,
        },
    ]
    print_story(story)
    out = capsys.readouterr().out
    assert "camp round 1: score 0.4, key 3, rank by score 1 among 4, not picked" in out
    assert "camp round 2: score 0.8, key 2, rank by score 1 among 3, picked" in out

    # Never picked: still a story (its scores), where there used to be an AuditError.
    story = sample_story(scored_workspace, "=HYPERLINK(1)")
    assert story["acquisitions"] == [] and len(story["scores"]) == 2
    assert [s["rank"] for s in story["scores"]] == [2, 2]
    print_story(story)
    out = capsys.readouterr().out
    assert "camp round 2: score 0.6, key 1, rank by score 2 among 3, not picked" in out
    assert "is in the pool of camp but was never acquired" in out

    story = sample_story(scored_workspace, "\U0001f600")
    print_story(story)
    assert "round 1: score -, key 4, not scored, not picked" in capsys.readouterr().out

    # Round 0's initial sample: no score table held it; the story is the ledger's alone.
    story = sample_story(scored_workspace, "init")
    assert story["scores"] == []
    print_story(story)
    assert "every scored round" not in capsys.readouterr().out


def test_history_cli_prints_the_per_round_scores(scored_workspace, capsys):
    from baldflow.audit.queries import AuditError, sample_story
    from baldflow.cli import main

    assert main(["history", "-w", str(scored_workspace), "--sample", "p0"]) == 0
    out = capsys.readouterr().out
    assert "camp round 1: score 0.1, key 0, rank by score 4 among 4, not picked" in out
    assert main(["history", "-w", str(scored_workspace), "--sample", "nope"]) == 1
    with pytest.raises(AuditError, match="not in the pool"):
        sample_story(scored_workspace, "nope")


def test_workspace_without_score_tables_shows_nothing_extra(tmp_path, capsys):
    from baldflow.audit.queries import sample_story
    from baldflow.audit.report import print_story

    ws = Workspace.init(tmp_path / "ws")
    ws.commit_round("camp", 0, [_row(0, "a", 0, None)], summary={"round": 0, "labeled": 1})
    ws.close()
    story = sample_story(ws.root, "a")
    assert story["scores"] == [] and len(story["acquisitions"]) == 1
    print_story(story)
    assert "scored round" not in capsys.readouterr().out
