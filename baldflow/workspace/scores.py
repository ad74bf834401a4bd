"""Every round's full pool scores, one Parquet file a round, so an audit can say what any sample
scored in every round (picked or not) without rerunning a model.

The ledger keeps the scores of the acquired samples only; a score table keeps all of them.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

SCORES_DIR = "scores"
# round-0003.parquet; temporary files (".round-0003.parquet.tmp", "...tmpXYZ") never match.
_ROUND_FILE = re.compile(r"round-(\d+)\.parquet")
COLUMNS = ("sample_id", "score", "key")


class ScoreTableError(ValueError):
    """A score table's input or file is not what the format says (lengths, types, columns)."""


def _schema():
    import pyarrow as pa

    # score NaN = "not scored" (kept, not dropped, so the table lists the whole pool);
    # key null = the strategy has no selection key (top-k, BatchBALD).
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("score", pa.float64()),
            pa.field("key", pa.float64()),
        ]
    )


def score_table_path(campaign_dir: Path, round_index: int) -> Path:
    """Where round `round_index`'s table lives: `<campaign_dir>/scores/round-NNNN.parquet`."""
    if round_index < 0:
        raise ScoreTableError(f"round_index must be >= 0, got {round_index}")
    return Path(campaign_dir) / SCORES_DIR / f"round-{round_index:04d}.parquet"


def _batch(sample_ids: Sequence[str], scores: np.ndarray, keys: np.ndarray | None):
    # numpy and pyarrow are imported where used: `baldflow history` imports this module and
    # should stay fast for workspaces that have no score tables.
    import numpy as np
    import pyarrow as pa

    ids = list(sample_ids)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) != len(ids):
        raise ScoreTableError(
            f"scores must be 1-D with one value per sample_id ({len(ids)}), got shape "
            f"{scores.shape}"
        )
    for i, sid in enumerate(ids):
        if not isinstance(sid, str):
            # An int or None would be stored as text that no longer matches the ledger's id.
            raise ScoreTableError(
                f"sample_ids[{i}] must be str, got {type(sid).__name__} {sid!r:.60}"
            )
    if keys is None:
        key_array = pa.nulls(len(ids), type=pa.float64())
    else:
        keys = np.asarray(keys, dtype=np.float64)
        if keys.shape != scores.shape:
            raise ScoreTableError(
                f"keys must have the shape of scores {scores.shape}, got {keys.shape}"
            )
        key_array = pa.array(keys, type=pa.float64())
    return pa.record_batch(
        [pa.array(ids, type=pa.string()), pa.array(scores, type=pa.float64()), key_array],
        schema=_schema(),
    )


class ScoreTableWriter:
    """Writes a score table batch by batch (O(batch) memory for a pool of any size).

    The rows go to a temporary file beside `path`, renamed onto `path` only when the `with`
    block exits cleanly: a crash or exception never leaves a partial table under the final
    name that an audit (or DVC) could take for the round's scores.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._writer = None
        self._tmp: Path | None = None
        self.rows = 0

    def __enter__(self) -> ScoreTableWriter:
        import pyarrow.parquet as pq

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._writer = pq.ParquetWriter(str(self._tmp), _schema(), compression="zstd")
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        return self

    def write(
        self, sample_ids: Sequence[str], scores: np.ndarray, keys: np.ndarray | None = None
    ) -> None:
        """Append one batch; each batch becomes at least one row group of the file."""
        if self._writer is None:
            raise ScoreTableError(f"write to {self.path} outside its `with` block")
        batch = _batch(sample_ids, scores, keys)
        if batch.num_rows:
            self._writer.write_batch(batch)
            self.rows += batch.num_rows

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        writer, tmp = self._writer, self._tmp
        self._writer = self._tmp = None
        try:
            if writer is not None:
                writer.close()
            if exc_type is None and tmp is not None:
                os.replace(tmp, self.path)
                tmp = None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)


def write_score_table(
    path: str | Path,
    sample_ids: Sequence[str],
    scores: np.ndarray,
    keys: np.ndarray | None = None,
) -> Path:
    """Write a whole table in one batch; returns its path."""
    with ScoreTableWriter(path) as writer:
        writer.write(sample_ids, scores, keys)
    return Path(path)


def read_score_table(path: str | Path):
    """The whole table as a pyarrow.Table (sample_id, score, key), checked against the format."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    if table.column_names != list(COLUMNS):
        raise ScoreTableError(f"{path} has columns {table.column_names}, expected {list(COLUMNS)}")
    return table


def round_tables(campaign_dir: Path) -> list[tuple[int, Path]]:
    """(round, path) of every score table of a campaign, by round; none for older workspaces."""
    folder = Path(campaign_dir) / SCORES_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _ROUND_FILE.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _float_or_none(value: Any) -> float | None:
    # NaN becomes None: the answer goes to JSON, where NaN is not valid.
    if value is None or value != value:
        return None
    return float(value)


def sample_scores(campaign_dir: Path, sample_id: str) -> list[dict[str, Any]]:
    """One sample's score in every round that scored the pool, picked or not.

    Each entry: round, score (None if not scored), key (None if the strategy has none), rank by
    score among the round's scored samples (1 = highest; ties share the best rank; None when not
    scored) and `scored`, how many samples that round ranked. A round whose table does not hold
    the sample (it was labeled before) gives no entry. The id is compared as a literal in a
    pyarrow filter, so only the matching rows and the score column are materialised, never a
    million Python objects.
    """
    tables = round_tables(campaign_dir)
    if not tables:
        return []
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    found = []
    for round_index, path in tables:
        rows = pq.read_table(
            str(path), columns=list(COLUMNS), filters=[("sample_id", "==", sample_id)]
        )
        if rows.num_rows == 0:
            continue
        score = _float_or_none(rows.column("score")[0].as_py())
        key = _float_or_none(rows.column("key")[0].as_py())
        all_scores = pq.read_table(str(path), columns=["score"]).column("score")
        # NaN compares false and nulls are dropped by sum/count: neither is ranked.
        ranked = pc.sum(pc.invert(pc.is_nan(all_scores))).as_py() or 0
        rank = None
        if score is not None:
            rank = 1 + (pc.sum(pc.greater(all_scores, score)).as_py() or 0)
        found.append(
            {"round": round_index, "score": score, "key": key, "rank": rank, "scored": ranked}
        )
    return found
