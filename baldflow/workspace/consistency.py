"""Whether a campaign's workspace is consistent at rest: git tags, DVC versions, the ledger,
MLflow runs and hand-off files all telling the same story.

Read-only. `baldflow verify`, the crash tests and the soak benchmark judge a workspace by these
same rules, so a problem found by one is reported in the same words by the others.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import fnmatch
import hashlib
import io
import shlex
import sqlite3
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from baldflow.workspace import ledger as ledger_mod
from baldflow.workspace.ledger import LedgerError
from baldflow.workspace.remote import CLONE_ID_KEY, REMOTE
from baldflow.workspace.repo import (
    DATA_DIR,
    LABELED_FILE,
    LEDGER_FILE,
    OUTSIDE_HISTORY,
    TO_LABEL_DIR,
    TRAILER_CAMPAIGN,
    TRAILER_ROUND,
    Workspace,
    WorkspaceError,
    _git_env,
    round_tag,
)
from baldflow.workspace.tracking import (
    TAG_CAMPAIGN,
    TAG_CLONE,
    TAG_KIND,
    TAG_PARENT,
    TAG_ROUND,
    local_tracking_uri,
    read_only_store,
    sqlite_store_path,
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
    "the labeled set DVC versioned at each round tag (the md5 its .dvc file records there, read "
    "from DVC's cache or remote) equals the ledger up to that round, and the ledger at each tag "
    "is a prefix of the newest one (append-only)",
    "each ledger row's labeled_set_md5 is the md5 of the labeled set DVC versioned at its tag",
    "every version at a tag is in the local DVC remote (it was pushed)",
    "rounds.csv has one row per committed round, matching the tag's labeled-set md5",
    "the working copies of the DVC-tracked files match their .dvc files, and git status is clean "
    "but for what baldflow writes outside the history (reports, servers' files)",
    "exactly one FINISHED MLflow round run per committed round r >= 1, tagged with the round's "
    "git tag and commit, named by the ledger and rounds.csv, under the campaign's one parent run",
    "no MLflow run of the workspace's campaign is RUNNING, none is FINISHED for a round that "
    "was not committed (one another clone committed means this clone is behind its remote), "
    "and none waits for labels (SCHEDULED) of a committed round",
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
            tag = round_tag(campaign, round_index)
            problems.append(
                f"commit {sha[:10]} records round {round_index} of {campaign} but {tag} "
                + (
                    f"is missing (restore it: `git -C {shlex.quote(str(ws.root))} tag {tag} {sha}`)"
                    if round_index not in commits
                    else "points elsewhere"
                )
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
# What DVC versioned for a file at a commit, by (workspace, commit, path). A commit is
# immutable and its .dvc files name the content by md5, so reading it once per process is
# enough: the crash tests check the same workspace after every fault, and without this each
# check would read every earlier round again (two DVC reads per tag).
_VERSIONS: dict[tuple[str, str, str], bytes] = {}

# yaml's C loader where the build has it: a 25-round campaign has 50 .dvc files to parse.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UnreadableError(Exception):
    """A version that DVC's storage does not hold as its .dvc file records it."""


def _read_version(ws: Workspace, tag: str, commit: str, rel: str) -> bytes:
    """`rel` as DVC versioned it at `tag` (whose commit is `commit`)."""
    found = _read_versions(ws, [(tag, commit, rel)])[(tag, commit, rel)]
    if isinstance(found, Exception):
        raise found
    return found


def _read_versions(ws: Workspace, wanted: Sequence[tuple[str, str, str]]) -> dict[tuple, Any]:
    """(tag, commit, rel) -> the bytes DVC versioned, or the exception that says why not.

    What dvc.api.read does, without its cost (a DVC repository opened and its index built per
    call, about 0.2 s each): every .dvc file at its commit from one `git cat-file --batch`,
    then the content by the md5 it records, from DVC's cache or the local remote, checked
    against that md5. A version found in neither (a remote of another kind, an older cache
    layout) is read through dvc.api.read after all.
    """
    root = str(ws.root)
    todo = [(t, c, r) for t, c, r in wanted if (root, c, r) not in _VERSIONS]
    out: dict[tuple, Any] = {}
    if todo:
        stores = _dvc_stores(ws)
        dvcfiles = _git_blobs(ws, [f"{c}:{r}.dvc" for _, c, r in todo])
        for tag, commit, rel in todo:
            try:
                _VERSIONS[(root, commit, rel)] = _from_store(
                    stores, dvcfiles.get(f"{commit}:{rel}.dvc")
                )
            except _UnreadableError:
                try:
                    import dvc.api

                    _VERSIONS[(root, commit, rel)] = dvc.api.read(
                        rel, repo=root, rev=tag, mode="rb"
                    )
                except Exception as exc:  # noqa: BLE001 (DVC raises many kinds; all mean "missing")
                    out[(tag, commit, rel)] = exc
    for tag, commit, rel in wanted:
        if (tag, commit, rel) not in out:
            out[(tag, commit, rel)] = _VERSIONS[(root, commit, rel)]
    return out


def _from_store(stores: Sequence[Path], dvcfile: bytes | None) -> bytes:
    if dvcfile is None:
        raise _UnreadableError("no .dvc file at that commit")
    try:
        outs = (yaml.load(dvcfile, Loader=_YAML_LOADER) or {}).get("outs") or [{}]
        md5 = str(outs[0]["md5"])
    except (yaml.YAMLError, AttributeError, KeyError, TypeError, IndexError) as exc:
        raise _UnreadableError(f"unreadable .dvc file: {exc}") from exc
    if len(md5) != 32 or outs[0].get("hash", "md5") != "md5":
        raise _UnreadableError(f"md5 {md5!r} is not one this reader knows")
    for store in stores:
        # DVC 3 keeps objects under files/md5/; DVC 2 kept them at the store's top.
        for path in (store / "files" / "md5" / md5[:2] / md5[2:], store / md5[:2] / md5[2:]):
            try:
                blob = path.read_bytes()
            except OSError:
                continue
            if hashlib.md5(blob).hexdigest() == md5:
                return blob
    raise _UnreadableError(f"md5 {md5} is in no local store")


def _git_blobs(ws: Workspace, specs: Sequence[str]) -> dict[str, bytes | None]:
    """`<rev>:<path>` -> the file's bytes (None where there is none), from one git process."""
    if not specs:
        return {}
    result = subprocess.run(
        ["git", "cat-file", "--batch"],
        cwd=ws.root,
        input="".join(f"{spec}\n" for spec in specs).encode(),
        capture_output=True,
        env=_git_env(),
    )
    data, pos, found = result.stdout, 0, {}
    for spec in specs:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        header = data[pos:end].split()
        pos = end + 1
        if len(header) == 3 and header[2].isdigit():
            size = int(header[2])
            found[spec] = data[pos : pos + size] if header[1] == b"blob" else None
            pos += size + 1
        else:  # "<spec> missing", "<spec> ambiguous"
            found[spec] = None
    return found


def _dvc_settings(root: Path) -> dict[str, dict[str, str]]:
    """The workspace's DVC configuration (.dvc/config, then .dvc/config.local over it), read
    as the plain INI it is: opening a DVC repository to ask costs a tenth of a second."""
    sections: dict[str, dict[str, str]] = {}
    for name in ("config", "config.local"):
        try:
            text = (root / ".dvc" / name).read_text(encoding="utf-8")
        except OSError:
            continue
        section = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                # ['remote "local"'] -> remote "local" -> remote local
                section = " ".join(line[1:-1].strip().strip("'\"").replace('"', " ").split())
                sections.setdefault(section, {})
            elif section is not None and "=" in line:
                key, _, value = line.partition("=")
                sections[section][key.strip()] = value.strip()
    return sections


def _config_path(root: Path, value: str) -> Path:
    # DVC resolves a relative path in its config against .dvc/, where the file is.
    path = Path(value)
    return path if path.is_absolute() else (root / ".dvc" / path).resolve()


def _dvc_stores(ws: Workspace) -> list[Path]:
    """Where DVC keeps content on this machine: its cache, then the local remote."""
    settings = _dvc_settings(ws.root)
    cache = settings.get("cache", {}).get("dir")
    stores = [_config_path(ws.root, cache) if cache else ws.root / ".dvc" / "cache"]
    remote = _local_remote(ws)
    if remote is not None:
        stores.append(remote)
    return stores


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
    names = (LABELED_FILE, LEDGER_FILE)
    read = _read_versions(
        ws,
        [
            (round_tag(campaign, r), commit, f"{rel}/{name}")
            for r, commit in sorted(commits.items())
            for name in names
        ],
    )
    for round_index, commit in sorted(commits.items()):
        tag = round_tag(campaign, round_index)
        blobs = {}
        for name in names:
            found = read[(tag, commit, f"{rel}/{name}")]
            if isinstance(found, Exception):
                problems.append(f"{rel}/{name} cannot be read through DVC at {tag}: {found}")
            else:
                blobs[name] = found
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
    settings = _dvc_settings(ws.root)
    name = settings.get("core", {}).get("remote")
    url = settings.get(f"remote {name}", {}).get("url") if name else None
    if not url or "://" in url:
        return None
    return _config_path(ws.root, url)


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
        outs = (yaml.load(dvcfile.read_text(), Loader=_YAML_LOADER) or {}).get("outs") or [{}]
        recorded = outs[0].get("md5")
        restore = f"restore it: `dvc checkout --force {dvcfile.relative_to(ws.root)}` in {ws.root}"
        if not target.exists():
            problems.append(f"{target.relative_to(ws.root)} is missing (DVC tracks it; {restore})")
        elif ledger_mod.md5_of_file(target) != recorded:
            problems.append(
                f"{target.relative_to(ws.root)} differs from the version its .dvc file records "
                f"({restore})"
            )
    status = ws.git("status", "--porcelain", "--untracked-files=all")
    # Outputs baldflow writes (a report, a server's files) are not drift, also where no ignore
    # rule hides them (a workspace made before the rule existed).
    lines = [
        line
        for line in status.splitlines()
        if line.strip()
        and not (line.startswith("?? ") and _outside_history(line[3:].strip().strip('"')))
    ]
    if lines:
        changed = [line[3:] for line in lines if not line.startswith("?? ")]
        fixes = []
        if changed:
            fixes.append(
                f"undo the changes with `git -C {shlex.quote(str(ws.root))} checkout -- "
                f"{' '.join(changed[:_SHOWN])}`, or commit them"
            )
        if len(changed) < len(lines):
            fixes.append("remove or commit the untracked files: baldflow did not write them")
        problems.append(f"git status is not clean: {_listed(lines)} ({'; '.join(fixes)})")


def _outside_history(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in OUTSIDE_HISTORY)


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
                "committed already (`baldflow run` removes it)"
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
@dataclasses.dataclass(frozen=True)
class _Run:
    """What the checks read of an MLflow run."""

    run_id: str
    status: str
    tags: dict[str, str]

    @property
    def kind(self) -> str | None:
        return self.tags.get(TAG_KIND)

    @property
    def round(self) -> int | None:
        tag = self.tags.get(TAG_ROUND, "")
        return int(tag) if tag.isdigit() else None


class _UnknownStoreError(Exception):
    """A SQLite store this reader does not understand; MLflow's client reads it instead."""


def _campaign_runs(
    tracking_uri: str, experiment: str, workspace_id: str, campaign: str
) -> list[_Run] | str:
    """The workspace's active runs of a campaign, or the problem that kept them from being read.

    A local SQLite store is read directly, read-only, in two queries: importing MLflow and
    opening its store costs seconds, most of what `verify` took. A tracking server (or a
    schema this reader does not know) goes through MLflow's client.
    """
    db = sqlite_store_path(tracking_uri)
    if db is not None:
        if not db.exists():
            return f"the MLflow store {db} does not exist"
        try:
            return _sqlite_runs(db, tracking_uri, experiment, workspace_id, campaign)
        except (sqlite3.Error, _UnknownStoreError):
            pass
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return f"MLflow at {tracking_uri} has no experiment {experiment!r}"
    runs = _search_all(
        client,
        found.experiment_id,
        f"tags.`{TAG_WORKSPACE}` = '{workspace_id}' and tags.`{TAG_CAMPAIGN}` = '{campaign}'",
    )
    return [_Run(r.info.run_id, r.info.status, dict(r.data.tags)) for r in runs]


def _sqlite_runs(
    db: Path, tracking_uri: str, experiment: str, workspace_id: str, campaign: str
) -> list[_Run] | str:
    with read_only_store(db) as connection:
        found = connection.execute(
            "SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)
        ).fetchall()
        if not found:
            return f"MLflow at {tracking_uri} has no experiment {experiment!r}"
        if len(found) > 1:
            raise _UnknownStoreError("one name, several experiments (MLflow workspaces)")
        selected = """
            SELECT r.run_uuid FROM runs r
            JOIN tags w ON w.run_uuid = r.run_uuid AND w.key = ? AND w.value = ?
            JOIN tags c ON c.run_uuid = r.run_uuid AND c.key = ? AND c.value = ?
            WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active'
        """
        args = (TAG_WORKSPACE, workspace_id, TAG_CAMPAIGN, campaign, found[0][0])
        status = dict(
            connection.execute(
                f"SELECT run_uuid, status FROM runs WHERE run_uuid IN ({selected}) "
                "ORDER BY start_time, run_uuid",
                args,
            ).fetchall()
        )
        tags: dict[str, dict[str, str]] = {run_id: {} for run_id in status}
        for run_id, key, value in connection.execute(
            f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({selected})", args
        ):
            tags[run_id][key] = value
    return [_Run(run_id, run_status, tags[run_id]) for run_id, run_status in status.items()]


def _clone_and_remote(ws: Workspace) -> tuple[str, str]:
    """This clone's id and its git remote's URL ("" for none), from one git process."""
    out = ws.git(
        "config", "--get-regexp", rf"^(remote\.{REMOTE}\.url|{CLONE_ID_KEY})$", check=False
    )
    found = dict(line.partition(" ")[::2] for line in out.splitlines())
    return found.get(CLONE_ID_KEY.lower(), ""), found.get(f"remote.{REMOTE}.url", "")


def _rounds_text(rounds: Sequence[int]) -> str:
    return f"round{'' if len(rounds) == 1 else 's'} {_listed(list(rounds))}"


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
    try:
        workspace_id = ws.workspace_id
    except WorkspaceError as exc:
        problems.append(str(exc))
        return
    runs = _campaign_runs(tracking_uri, experiment, workspace_id, campaign)
    if isinstance(runs, str):
        problems.append(runs)
        return
    parents = [r for r in runs if r.kind == "campaign"]
    round_runs = [r for r in runs if r.kind == "round"]
    running = [
        f"{r.run_id} ({r.kind} run"
        + (f" of round {r.tags.get(TAG_ROUND)})" if r.tags.get(TAG_ROUND) else ")")
        for r in runs
        if r.status == "RUNNING"
    ]
    if running:
        problems.append(
            f"MLflow runs of {campaign} are still RUNNING: {_listed(running)} (when no run is in "
            "progress, `baldflow run` closes what a stopped run left open)"
        )
    parent_id = _check_parents(campaign, parents, rows, problems)

    by_round: dict[int, list[_Run]] = collections.defaultdict(list)
    for run in round_runs:
        if run.round is None:
            problems.append(f"MLflow round run {run.run_id} has no round number")
            continue
        by_round[run.round].append(run)
    for round_index, sha in sorted(commits.items()):
        if round_index == 0:
            continue
        tag = round_tag(campaign, round_index)
        found_runs = by_round.get(round_index, [])
        finished = [r for r in found_runs if r.status == "FINISHED"]
        if len(finished) != 1:
            hint = " (run `baldflow run`: it completes the run git names)" if not finished else ""
            problems.append(
                f"round {round_index} of {campaign} is committed but has {len(finished)} FINISHED "
                f"MLflow round runs, expected 1 (runs: {_describe_runs(found_runs)}){hint}"
            )
            continue
        run_id = finished[0].run_id
        for parked in (r for r in found_runs if r.status == "SCHEDULED"):
            # A clone parked its run while people labeled, and another clone committed the
            # round first: that batch will never complete the round.
            problems.append(
                f"MLflow run {parked.run_id} of round {round_index} waits for labels "
                f"(SCHEDULED), but round {round_index} of {campaign} was committed with run "
                f"{run_id} (run `baldflow run` to retire it)"
            )
        _check_round_run(
            campaign, round_index, tag, sha, finished[0], parent_id, rows, summary, md5_at, problems
        )

    last = max(commits)
    clone = remote = None
    behind: dict[int, list[str]] = collections.defaultdict(list)
    for round_index, found_runs in sorted(by_round.items()):
        if round_index in commits:
            continue
        for run in found_runs:
            status = run.status
            if status not in ("FINISHED", "SCHEDULED"):
                continue
            if clone is None:
                clone, remote = _clone_and_remote(ws)
            other = run.tags.get(TAG_CLONE, "") not in ("", clone)
            if status == "FINISHED" and remote and other and round_index > last:
                # Another clone committed it and pushed it; this one has not pulled it yet.
                behind[round_index].append(run.run_id)
            elif status == "FINISHED":
                problems.append(
                    f"MLflow run {run.run_id} of round {round_index} is FINISHED, but round "
                    f"{round_index} of {campaign} was never committed"
                )
            elif round_index != pending_round and not other:
                # Another clone's parked run waits for that clone's people: not a problem here.
                problems.append(
                    f"MLflow run {run.run_id} of round {round_index} waits for labels "
                    "(SCHEDULED), but no batch of that round is pending"
                )
    if behind:
        count = max(behind) - last
        ids = [run_id for found in behind.values() for run_id in found]
        problems.append(
            f"{campaign} is behind the remote by {count} round{'' if count == 1 else 's'} (run "
            f"`baldflow run` or `git pull`): another clone committed {_rounds_text(sorted(behind))}"
            f" after round {last}, whose FINISHED MLflow runs are {_listed(ids)}"
        )


def _check_parents(
    campaign: str, parents: list[_Run], rows: list[_Row] | None, problems: list[str]
) -> str | None:
    """The campaign's parent run (the one round 0's ledger rows name, when several exist)."""
    named = sorted({r.mlflow_run_id for r in rows if r.round == 0}) if rows is not None else []
    if len(parents) == 1:
        parent_id = parents[0].run_id
        if named and named != [parent_id]:
            problems.append(
                f"round-0 ledger rows name MLflow run(s) {_listed(named)}, the campaign run "
                f"is {parent_id}"
            )
        return parent_id
    head = (
        f"{campaign} has {len(parents)} MLflow campaign (parent) runs in this workspace, expected 1"
    )
    if not parents:
        problems.append(head)
        return None
    recorded = named[0] if len(named) == 1 and named[0] in {p.run_id for p in parents} else None
    if recorded is None:
        problems.append(
            f"{head}: {_describe_runs(parents)}, and round 0's ledger rows name "
            f"{_listed(named) or 'none'}"
        )
        return None
    others = [p for p in parents if p.run_id != recorded]
    problems.append(
        f"{head}: git records {recorded} (round 0's ledger rows); {_describe_runs(others)} "
        f"{'is' if len(others) == 1 else 'are'} left over (run `baldflow run` to retire "
        f"{'it' if len(others) == 1 else 'them'})"
    )
    return recorded


def _check_round_run(
    campaign: str,
    round_index: int,
    tag: str,
    sha: str,
    run: _Run,
    parent_id: str | None,
    rows: list[_Row] | None,
    summary: dict[int, dict[str, str]],
    md5_at: dict[int, str],
    problems: list[str],
) -> None:
    """The one FINISHED run of a committed round agrees with git, DVC, the ledger, rounds.csv."""
    run_id, tags = run.run_id, run.tags
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


def _describe_runs(runs: Sequence[_Run]) -> str:
    if not runs:
        return "none"
    return ", ".join(f"{r.run_id} {r.status}" for r in runs)


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
