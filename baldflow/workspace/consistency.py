"""Whether a campaign's workspace is consistent at rest: git tags, DVC versions, the ledger,
MLflow runs and hand-off files all telling the same story.

Read-only. `baldflow verify`, the crash tests and the soak benchmark judge a workspace by these
same rules, so a problem found by one is reported in the same words by the others.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from baldflow.workspace import ledger as ledger_mod
from baldflow.workspace.ledger import LedgerError
from baldflow.workspace.repo import (
    DATA_DIR,
    LABELED_FILE,
    LEDGER_FILE,
    TO_LABEL_DIR,
    TRAILER_CAMPAIGN,
    TRAILER_ROUND,
    Workspace,
    WorkspaceError,
    round_tag,
)
from baldflow.workspace.tracking import (
    TAG_CAMPAIGN,
    TAG_KIND,
    TAG_PARENT,
    TAG_ROUND,
    local_tracking_uri,
)

try:
    from baldflow.workspace.tracking import TAG_WORKSPACE
except ImportError:  # tracking.py before runs carried the workspace id
    TAG_WORKSPACE = "baldflow.workspace_id"

# What check_campaign checks, in the words the soak benchmark and `baldflow verify --help`
# print: a reader of a green run should know what "consistent" meant.
INVARIANTS = (
    "round tags are contiguous from round 0, each on the commit that records that round, "
    "in history order, and no round commit lacks its tag",
    "the ledger has no sample twice, is in round order and covers exactly the committed rounds",
    "labeled.csv in the working tree equals the labeled set the ledger implies",
    "the labeled set read through DVC (dvc.api.read) at each round tag equals the ledger up to "
    "that round, and the ledger at each tag is a prefix of the newest one (append-only)",
    "each ledger row's labeled_set_md5 is the md5 of the labeled set DVC versioned at its tag",
    "every version at a tag is in the local DVC remote (it was pushed)",
    "rounds.csv has one row per committed round, matching the tag's labeled-set md5",
    "the working copies of the DVC-tracked files match their .dvc files, and git status is clean",
    "exactly one FINISHED MLflow round run per committed round r >= 1, tagged with the round's "
    "git tag and commit, named by the ledger and rounds.csv, under the campaign's one parent run",
    "no MLflow run of the workspace's campaign is RUNNING, and none is FINISHED for a round "
    "that was not committed",
    "no hand-off file (pending batch, labels, model) is left for a committed round, and at most "
    "one pending batch exists, for the next round",
)

# Show this many offending items per problem; the count says how many there are in all.
_SHOWN = 5


def _listed(items: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_SHOWN])
    return shown + (f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def check_campaign(
    workspace_root: str | Path,
    campaign: str,
    *,
    tracking_uri: str | None = None,
    experiment: str = "baldflow",
) -> list[str]:
    """Every inconsistency found in one campaign of a workspace; empty when it is consistent.

    `tracking_uri` defaults to the workspace's own MLflow store. Meant for a workspace at
    rest (no run writing to it): a round in progress legitimately breaks several rules.
    """
    root = Path(workspace_root).resolve()
    if not Workspace.is_workspace(root):
        return [f"{root} is not a baldflow workspace"]
    ws = Workspace(root)
    problems: list[str] = []
    commits = _check_tags(ws, campaign, problems)
    committed = sorted(commits)
    pending_round = _check_handoff(ws, campaign, committed, problems)
    if not committed and pending_round is None:
        if ws.campaign_dir(campaign).exists():
            problems.append(f"campaign {campaign!r} has data in {root} but no committed round")
        else:
            problems.append(f"campaign {campaign!r} is not in {root}")
        return problems

    rows = _check_ledger(ws, campaign, committed, problems)
    ledger_now = ws.ledger_path(campaign).read_bytes() if ws.ledger_path(campaign).exists() else b""
    md5_at = _check_versions(ws, campaign, commits, rows, ledger_now, problems)
    summary = _check_rounds_file(ws, campaign, committed, md5_at, problems)
    _check_working_copy(ws, campaign, bool(committed), problems)
    _check_mlflow(
        ws,
        campaign,
        commits,
        rows,
        summary,
        md5_at,
        pending_round,
        tracking_uri or local_tracking_uri(ws.mlflow_dir),
        experiment,
        problems,
    )
    return problems


def check_history(workspace_root: str | Path, campaign: str) -> list[str]:
    """The part of check_campaign that must hold at every instant, even right after a SIGKILL
    and before any recovery: the committed history (tags, and what DVC versioned at them).

    The working copy, MLflow and hand-off files may be mid-round then; a commit whose tag is
    missing is accepted for the newest round only (killed between commit and tag: the next
    run tags it). The ledger judged is the one versioned at the newest tag.
    """
    root = Path(workspace_root).resolve()
    if not Workspace.is_workspace(root):
        return [f"{root} is not a baldflow workspace"]
    ws = Workspace(root)
    problems: list[str] = []
    commits = _check_tags(ws, campaign, problems, untagged_newest_ok=True)
    committed = sorted(commits)
    if not committed:
        return problems

    rel = f"{DATA_DIR}/{campaign}/{LEDGER_FILE}"
    newest = round_tag(campaign, committed[-1])
    try:
        ledger_then = _read_version(ws, newest, commits[committed[-1]], rel)
    except Exception as exc:  # noqa: BLE001 (DVC raises many kinds; all mean "missing")
        return [*problems, f"{rel} cannot be read through DVC at {newest}: {exc}"]
    rows = _parse_ledger(ledger_then.decode("utf-8"), problems, f"the ledger at {newest}")
    if rows is not None:
        _check_rows(rows, campaign, committed, problems, f"the ledger at {newest}")
    _check_versions(ws, campaign, commits, rows, ledger_then, problems)
    return problems


# ------------------------------------------------------------------------------- git
def _check_tags(
    ws: Workspace, campaign: str, problems: list[str], *, untagged_newest_ok: bool = False
) -> dict[int, str]:
    """Round -> commit of every well-formed round tag; records what is wrong with them."""
    prefix = f"refs/tags/{campaign}/"
    out = ws.git("for-each-ref", "--format=%(refname)%00%(objectname)%00%(*objectname)", prefix)
    commits: dict[int, str] = {}
    for line in out.splitlines():
        ref, obj, peeled = line.split("\x00")
        name = ref.removeprefix("refs/tags/")
        suffix = name.removeprefix(f"{campaign}/round-")
        if suffix == name or not suffix.isdigit() or name != round_tag(campaign, int(suffix)):
            problems.append(f"tag {name} does not name a round (expected {campaign}/round-NNNN)")
            continue
        # Annotated tags point at a tag object; %(*objectname) is the commit behind it.
        commits[int(suffix)] = peeled or obj
    rounds = sorted(commits)
    if rounds != list(range(len(rounds))):
        missing = sorted(set(range(max(rounds) + 1)) - set(rounds)) if rounds else []
        problems.append(
            f"round tags of {campaign} are not contiguous from round 0: rounds {_listed(rounds)}"
            f" are tagged, {_listed(missing)} missing"
        )

    # Every commit of HEAD's history that records a round of this campaign, newest first.
    log = ws.git("log", "--format=%H%x00%B%x1e", "--", f"{DATA_DIR}/{campaign}", check=False)
    recorded: list[tuple[str, int]] = []
    for entry in log.split("\x1e"):
        sha, _, body = entry.strip().partition("\x00")
        if not sha:
            continue
        trailers = _trailers(body)
        if trailers.get(TRAILER_CAMPAIGN) == campaign and trailers.get(TRAILER_ROUND, "").isdigit():
            recorded.append((sha, int(trailers[TRAILER_ROUND])))
    by_sha = dict(recorded)
    for round_index, sha in sorted(commits.items()):
        found = by_sha.get(sha)
        if found is None:
            problems.append(
                f"tag {round_tag(campaign, round_index)} points at {sha[:10]}, which is not a "
                f"round commit of {campaign} in HEAD's history"
            )
        elif found != round_index:
            problems.append(
                f"tag {round_tag(campaign, round_index)} points at the commit of round {found}"
            )
    for position, (sha, round_index) in enumerate(recorded):
        if untagged_newest_ok and position == 0 and round_index not in commits:
            continue
        if commits.get(round_index) != sha:
            problems.append(
                f"commit {sha[:10]} records round {round_index} of {campaign} but "
                f"{round_tag(campaign, round_index)} "
                + ("is missing" if round_index not in commits else "points elsewhere")
            )
    order = [r for _, r in reversed(recorded)]
    if order != sorted(set(order)):
        problems.append(
            f"the round commits of {campaign} are not in round order in git history: {order}"
        )
    return commits


def _trailers(body: str) -> dict[str, str]:
    found = {}
    for line in body.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            found[key.strip()] = value.strip()
    return found


# ------------------------------------------------------------------------------- ledger
@dataclasses.dataclass(frozen=True)
class _Row:
    """The ledger columns the checks compare (a ledger read from DVC need not parse fully)."""

    campaign: str
    round: int
    sample_id: str
    label: int
    mlflow_run_id: str
    labeled_set_md5: str


def _parse_ledger(text: str, problems: list[str], what: str) -> list[_Row] | None:
    try:
        return [
            _Row(
                r["campaign"],
                int(r["round"]),
                r["sample_id"],
                int(r["label"]),
                r["mlflow_run_id"],
                r["labeled_set_md5"],
            )
            for r in csv.DictReader(io.StringIO(text))
        ]
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"{what} cannot be read: {type(exc).__name__} {exc}")
        return None


def _check_ledger(
    ws: Workspace, campaign: str, committed: list[int], problems: list[str]
) -> list[_Row] | None:
    path = ws.ledger_path(campaign)
    try:
        # The library's reader first: it also refuses columns it does not know.
        ws.ledger(campaign)
    except (LedgerError, ValueError, KeyError) as exc:
        problems.append(f"the ledger of {campaign} cannot be read: {exc}")
        return None
    what = f"the ledger of {campaign}"
    rows = _parse_ledger(path.read_text() if path.exists() else "", problems, what)
    if rows is None:
        return None
    _check_rows(rows, campaign, committed, problems, what)
    implied = _labeled_from(rows)
    try:
        on_disk = ws.labeled(campaign)
    except (KeyError, ValueError) as exc:
        problems.append(f"{ws.labeled_path(campaign)} cannot be read: {exc}")
    else:
        if on_disk != implied:
            problems.append(
                f"{ws.labeled_path(campaign).relative_to(ws.root)} differs from the ledger: "
                + _difference(on_disk, implied)
            )
    return rows


def _check_rows(
    rows: list[_Row], campaign: str, committed: list[int], problems: list[str], what: str
) -> None:
    counts = collections.Counter(r.sample_id for r in rows)
    twice = sorted(sid for sid, n in counts.items() if n > 1)
    if twice:
        problems.append(f"{what} lists samples more than once: {_listed(twice)}")
    order = [r.round for r in rows]
    if order != sorted(order):
        problems.append(f"{what} is not in round order")
    present = set(order)
    extra = sorted(present - set(committed))
    if extra:
        problems.append(f"{what} has rows for rounds that were never committed: {_listed(extra)}")
    empty = sorted(set(committed) - present)
    if empty:
        problems.append(f"committed rounds of {campaign} have no rows in {what}: {_listed(empty)}")
    bad = sorted({r.round for r in rows if r.campaign != campaign})
    if bad:
        problems.append(f"rows of {what} name another campaign (rounds {_listed(bad)})")


def _labeled_from(
    rows: Iterable[_Row], up_to_round: int | None = None
) -> list[tuple[str, int, int]]:
    # Not ledger.labeled_rows_from_ledger: that one raises on a duplicate, and a duplicate is
    # reported on its own here, so the other comparisons should still run.
    return [
        (r.sample_id, r.label, r.round)
        for r in rows
        if up_to_round is None or r.round <= up_to_round
    ]


def _difference(found: Sequence[tuple], expected: Sequence[tuple]) -> str:
    if len(found) != len(expected):
        return f"{len(found)} rows, the ledger implies {len(expected)}"
    for index, (a, b) in enumerate(zip(found, expected, strict=True)):
        if a != b:
            return f"row {index + 1} is {a}, the ledger implies {b}"
    return "they differ"


# ------------------------------------------------------------------------------- DVC
# What DVC returned for a file at a commit, by (workspace, commit, path). A commit is
# immutable and its .dvc files name the content by md5, so reading it once per process is
# enough: the crash tests check the same workspace after every fault, and without this each
# check would read every earlier round again (two DVC reads per tag).
_VERSIONS: dict[tuple[str, str, str], bytes] = {}


def _read_version(ws: Workspace, tag: str, commit: str, rel: str) -> bytes:
    """`rel` as DVC versioned it at `tag` (whose commit is `commit`), read through dvc.api."""
    import dvc.api

    key = (str(ws.root), commit, rel)
    if key not in _VERSIONS:
        _VERSIONS[key] = dvc.api.read(rel, repo=str(ws.root), rev=tag, mode="rb")
    return _VERSIONS[key]


def _check_versions(
    ws: Workspace,
    campaign: str,
    commits: dict[int, str],
    rows: list[_Row] | None,
    ledger_now: bytes,
    problems: list[str],
) -> dict[int, str]:
    """Read each tag's labeled set and ledger through DVC; return round -> labeled-set md5.

    `rows` and `ledger_now` are the newest ledger (parsed and as bytes) that every tag's
    versions must agree with.
    """

    rel = f"{DATA_DIR}/{campaign}"
    remote = _local_remote(ws)
    md5_at: dict[int, str] = {}
    for round_index, commit in sorted(commits.items()):
        tag = round_tag(campaign, round_index)
        blobs = {}
        for name in (LABELED_FILE, LEDGER_FILE):
            try:
                blobs[name] = _read_version(ws, tag, commit, f"{rel}/{name}")
            except Exception as exc:  # noqa: BLE001 (DVC raises many kinds; all mean "missing")
                problems.append(f"{rel}/{name} cannot be read through DVC at {tag}: {exc}")
        labeled_blob = blobs.get(LABELED_FILE)
        if labeled_blob is not None:
            md5 = hashlib.md5(labeled_blob).hexdigest()
            md5_at[round_index] = md5
            if rows is not None:
                at_tag = ledger_mod.parse_labeled(labeled_blob.decode("utf-8"))
                implied = _labeled_from(rows, round_index)
                if at_tag != implied:
                    problems.append(
                        f"the labeled set DVC versioned at {tag} differs from the ledger up to "
                        f"round {round_index}: {_difference(at_tag, implied)}"
                    )
                stamped = sorted({r.labeled_set_md5 for r in rows if r.round == round_index})
                if stamped and stamped != [md5]:
                    problems.append(
                        f"ledger rows of round {round_index} record labeled_set_md5 "
                        f"{_listed(stamped)}, but DVC versioned {md5} at {tag}"
                    )
        ledger_blob = blobs.get(LEDGER_FILE)
        if ledger_blob is not None and not ledger_now.startswith(ledger_blob):
            problems.append(
                f"the ledger versioned at {tag} is not a prefix of the newest ledger: an "
                "earlier row was rewritten or removed"
            )
        if remote is not None:
            for name, blob in blobs.items():
                digest = hashlib.md5(blob).hexdigest()
                if not (remote / "files" / "md5" / digest[:2] / digest[2:]).exists():
                    problems.append(
                        f"{rel}/{name} at {tag} (md5 {digest}) is not in the DVC remote {remote}"
                    )
    return md5_at


def _local_remote(ws: Workspace) -> Path | None:
    """The default DVC remote's directory if it is a local one; None for any other kind."""
    try:
        config = ws.dvc.config
        name = config["core"].get("remote")
        url = config["remote"][name]["url"] if name else None
    except Exception:  # noqa: BLE001 (an unreadable config is reported by DVC reads already)
        return None
    finally:
        ws.close()
    if not url or "://" in url:
        return None
    path = Path(url)
    # DVC resolves a relative url against .dvc/ when it loads the config; be safe either way.
    return path if path.is_absolute() else (ws.root / ".dvc" / path).resolve()


def _check_rounds_file(
    ws: Workspace,
    campaign: str,
    committed: list[int],
    md5_at: dict[int, str],
    problems: list[str],
) -> dict[int, dict[str, str]]:
    rows = ws.rounds_summary(campaign)
    by_round: dict[int, dict[str, str]] = {}
    listed = []
    for row in rows:
        try:
            round_index = int(row["round"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"rounds.csv of {campaign} has a row without a round number: {row}")
            continue
        listed.append(round_index)
        by_round[round_index] = row
    if listed != committed:
        problems.append(
            f"rounds.csv of {campaign} lists rounds {_listed(listed)}, the committed rounds are "
            f"{_listed(committed)}"
        )
    for round_index, md5 in md5_at.items():
        row = by_round.get(round_index)
        if row is not None and row.get("labeled_set_md5") != md5:
            problems.append(
                f"rounds.csv of {campaign} records md5 {row.get('labeled_set_md5')} for round "
                f"{round_index}, DVC versioned {md5}"
            )
    return by_round


def _check_working_copy(ws: Workspace, campaign: str, versioned: bool, problems: list[str]) -> None:
    cdir = ws.campaign_dir(campaign)
    # Before round 0 is committed (its batch still with people) nothing is versioned yet.
    for name in (LABELED_FILE, LEDGER_FILE) if versioned else ():
        dvcfile = cdir / f"{name}.dvc"
        target = cdir / name
        if not dvcfile.exists():
            problems.append(f"{dvcfile.relative_to(ws.root)} is missing")
            continue
        import yaml

        outs = (yaml.safe_load(dvcfile.read_text()) or {}).get("outs") or [{}]
        recorded = outs[0].get("md5")
        if not target.exists():
            problems.append(f"{target.relative_to(ws.root)} is missing (DVC tracks it)")
        elif ledger_mod.md5_of_file(target) != recorded:
            problems.append(
                f"{target.relative_to(ws.root)} differs from the version its .dvc file records"
            )
    status = ws.git("status", "--porcelain", "--untracked-files=all")
    if status.strip():
        lines = status.strip().splitlines()
        problems.append(f"git status is not clean: {_listed(lines)}")


# ------------------------------------------------------------------------------- hand-off
def _check_handoff(
    ws: Workspace, campaign: str, committed: list[int], problems: list[str]
) -> int | None:
    """Records leftovers of committed rounds; returns the round of the pending batch, if any."""
    folder = ws.campaign_dir(campaign) / TO_LABEL_DIR
    if not folder.is_dir():
        return None
    done = set(committed)
    pending = []
    for path in sorted(folder.glob("round-*")):
        stem = path.name.split(".", 1)[0]
        digits = stem.removeprefix("round-")
        if not digits.isdigit():
            continue
        round_index = int(digits)
        if path.name.endswith(".pending.json"):
            pending.append(round_index)
        if round_index in done:
            what = "a pending batch" if path.name.endswith(".pending.json") else "a hand-off file"
            problems.append(
                f"{path.relative_to(ws.root)} is {what} of round {round_index}, which is "
                "committed already"
            )
    if len(pending) > 1:
        problems.append(f"{folder.relative_to(ws.root)} holds several pending batches: {pending}")
    expected = committed[-1] + 1 if committed else 0
    for round_index in pending:
        if round_index not in done and round_index != expected:
            problems.append(
                f"the pending batch of {campaign} is for round {round_index}, but the next round "
                f"is {expected}"
            )
    waiting = [r for r in pending if r == expected]
    return waiting[0] if waiting else None


# ------------------------------------------------------------------------------- MLflow
def _check_mlflow(
    ws: Workspace,
    campaign: str,
    commits: dict[int, str],
    rows: list[_Row] | None,
    summary: dict[int, dict[str, str]],
    md5_at: dict[int, str],
    pending_round: int | None,
    tracking_uri: str,
    experiment: str,
    problems: list[str],
) -> None:
    if not commits:
        # Round 0 waits for labels: nothing is tracked per round before it is committed.
        return
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.exists():
            problems.append(f"the MLflow store {db} does not exist")
            return
    try:
        workspace_id = ws.workspace_id
    except WorkspaceError as exc:
        problems.append(str(exc))
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        problems.append(f"MLflow at {tracking_uri} has no experiment {experiment!r}")
        return
    runs = _search_all(
        client,
        found.experiment_id,
        f"tags.`{TAG_WORKSPACE}` = '{workspace_id}' and tags.`{TAG_CAMPAIGN}` = '{campaign}'",
    )
    parents = [r for r in runs if r.data.tags.get(TAG_KIND) == "campaign"]
    round_runs = [r for r in runs if r.data.tags.get(TAG_KIND) == "round"]
    running = [
        f"{r.info.run_id} ({r.data.tags.get(TAG_KIND)} run"
        + (f" of round {r.data.tags.get(TAG_ROUND)})" if r.data.tags.get(TAG_ROUND) else ")")
        for r in runs
        if r.info.status == "RUNNING"
    ]
    if running:
        problems.append(f"MLflow runs of {campaign} are still RUNNING: {_listed(running)}")
    parent_id = None
    if len(parents) != 1:
        problems.append(
            f"{campaign} has {len(parents)} MLflow campaign (parent) runs in this workspace, "
            "expected 1"
        )
    else:
        parent_id = parents[0].info.run_id
        if rows is not None:
            named = sorted({r.mlflow_run_id for r in rows if r.round == 0})
            if named and named != [parent_id]:
                problems.append(
                    f"round-0 ledger rows name MLflow run(s) {_listed(named)}, the campaign run "
                    f"is {parent_id}"
                )

    by_round: dict[int, list[Any]] = collections.defaultdict(list)
    for run in round_runs:
        tag = run.data.tags.get(TAG_ROUND, "")
        if not tag.isdigit():
            problems.append(f"MLflow round run {run.info.run_id} has no round number")
            continue
        by_round[int(tag)].append(run)
    for round_index, sha in sorted(commits.items()):
        if round_index == 0:
            continue
        tag = round_tag(campaign, round_index)
        finished = [r for r in by_round.get(round_index, []) if r.info.status == "FINISHED"]
        if len(finished) != 1:
            problems.append(
                f"round {round_index} of {campaign} is committed but has {len(finished)} FINISHED "
                f"MLflow round runs, expected 1 (runs: "
                f"{_describe_runs(by_round.get(round_index, []))})"
            )
            continue
        run = finished[0]
        run_id = run.info.run_id
        tags = run.data.tags
        if tags.get("git.tag") != tag:
            problems.append(
                f"MLflow run {run_id} of round {round_index} has git.tag "
                f"{tags.get('git.tag')!r}, expected {tag!r}"
            )
        if tags.get("git.commit") != sha:
            problems.append(
                f"MLflow run {run_id} of round {round_index} has git.commit "
                f"{tags.get('git.commit')!r}, but {tag} is {sha}"
            )
        md5 = md5_at.get(round_index)
        if "dvc.labeled_set_md5" in tags and md5 and tags["dvc.labeled_set_md5"] != md5:
            problems.append(
                f"MLflow run {run_id} of round {round_index} records labeled-set md5 "
                f"{tags['dvc.labeled_set_md5']}, DVC versioned {md5} at {tag}"
            )
        if parent_id is not None and tags.get(TAG_PARENT) != parent_id:
            problems.append(
                f"MLflow run {run_id} of round {round_index} hangs under "
                f"{tags.get(TAG_PARENT)!r}, not the campaign run {parent_id}"
            )
        if rows is not None:
            named = sorted({r.mlflow_run_id for r in rows if r.round == round_index})
            if named and named != [run_id]:
                problems.append(
                    f"ledger rows of round {round_index} name MLflow run(s) {_listed(named)}, "
                    f"the round's FINISHED run is {run_id}"
                )
        recorded = (summary.get(round_index) or {}).get("mlflow_run_id")
        if recorded and recorded != run_id:
            problems.append(
                f"rounds.csv names MLflow run {recorded} for round {round_index}, the round's "
                f"FINISHED run is {run_id}"
            )
    for round_index, found_runs in sorted(by_round.items()):
        if round_index in commits:
            continue
        for run in found_runs:
            status = run.info.status
            if status == "FINISHED":
                problems.append(
                    f"MLflow run {run.info.run_id} of round {round_index} is FINISHED, but round "
                    f"{round_index} of {campaign} was never committed"
                )
            elif status == "SCHEDULED" and round_index != pending_round:
                problems.append(
                    f"MLflow run {run.info.run_id} of round {round_index} waits for labels "
                    "(SCHEDULED), but no batch of that round is pending"
                )


def _search_all(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def _describe_runs(runs: Sequence[Any]) -> str:
    if not runs:
        return "none"
    return ", ".join(f"{r.info.run_id} {r.info.status}" for r in runs)


def check_workspace(
    workspace_root: str | Path,
    campaigns: Sequence[str] | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str = "baldflow",
) -> dict[str, list[str]]:
    """check_campaign for each campaign (default: every campaign of the workspace)."""
    root = Path(workspace_root).resolve()
    if not Workspace.is_workspace(root):
        return {"": [f"{root} is not a baldflow workspace"]}
    names = list(campaigns) if campaigns is not None else _campaigns(root)
    return {
        name: check_campaign(root, name, tracking_uri=tracking_uri, experiment=experiment)
        for name in names
    }


def _campaigns(root: Path) -> list[str]:
    """Campaigns with a committed round or a batch waiting for labels (round 0 included)."""
    base = root / DATA_DIR
    if not base.is_dir():
        return []
    return sorted(
        p.name
        for p in base.iterdir()
        if (p / f"{LABELED_FILE}.dvc").exists() or any((p / TO_LABEL_DIR).glob("*.pending.json"))
    )
