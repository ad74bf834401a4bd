"""A workspace shared through a git remote and a DVC remote: join, sync, and claim a round.

Several clones of one workspace (operators on different machines) may run the same campaign.
The lock file only covers one machine; across machines the claim on round N is the atomic push
of the branch and the round's tag: the remote accepts a fast-forward of `main` plus a tag that
does not exist yet, so of two clones that committed round N on the same parent, exactly one
push goes through. The other clone discards its round and fast-forwards to the winner's.

The DVC data of a round is pushed before its git commit is: once a round is visible on the git
remote, its labeled set can be pulled.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import shlex
import socket
import subprocess
import uuid
from pathlib import Path

from baldflow.workspace.repo import (
    DATA_DIR,
    TRAILER_CAMPAIGN,
    TRAILER_ROUND,
    Workspace,
    WorkspaceError,
    _quiet_dvc,
    round_tag,
)

REMOTE = "origin"
BRANCH = "main"
# Local to one clone (in .git/config, never pushed): tells this clone's MLflow round runs from
# another clone's runs of the same workspace and round.
CLONE_ID_KEY = "baldflow.cloneid"


class RemoteError(WorkspaceError):
    """The git or DVC remote could not be reached or refused something other than a race."""


class RoundTakenError(WorkspaceError):
    """Another clone pushed this round first: this clone's round is not part of the history."""

    def __init__(self, campaign: str, round_index: int, detail: str):
        self.campaign = campaign
        self.round = round_index
        super().__init__(
            f"round {round_index} of {campaign} was committed first by another clone of the "
            f"workspace; this clone's round {round_index} is discarded ({detail})"
        )


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """What bringing a clone up to date with its remote did."""

    before: str
    after: str
    pulled: bool  # fast-forwarded to commits of another clone
    pushed: bool  # pushed committed rounds an earlier run of this clone had not pushed
    discarded: list[str]  # round tags of this clone that lost to another clone's rounds

    @property
    def notes(self) -> list[str]:
        notes = []
        if self.pulled:
            notes.append(f"fast-forwarded to the remote: {self.before[:10]} -> {self.after[:10]}")
        if self.pushed:
            notes.append("pushed rounds an interrupted run had committed but not pushed")
        if self.discarded:
            notes.append(
                "discarded round(s) another clone committed first: " + ", ".join(self.discarded)
            )
        return notes


def remote_url(ws: Workspace) -> str | None:
    """The git remote the workspace pushes to, or None for a workspace of one machine."""
    url = ws.git("remote", "get-url", REMOTE, check=False).strip()
    return url or None


def _shared_repo(url: str | None) -> str | None:
    """The path of a local remote repository another account owns (a team stack's bare
    repository shared with a Unix group), else None. git refuses such a repository
    ("dubious ownership") unless safe.directory names it, and only in the git process that
    opens it: the upload-pack or receive-pack a fetch or push starts, and `clone` itself."""
    if not url:
        return None
    path = Path(url.removeprefix("file://"))
    if not path.is_absolute():
        return None  # ssh://, https://, host:path: the server's own configuration decides
    try:
        owner = path.stat().st_uid
    except OSError:
        return None
    return str(path.resolve()) if owner != os.geteuid() else None


def _pack_option(url: str | None, program: str) -> list[str]:
    """`--upload-pack=...` or `--receive-pack=...` (`program`) that names a `_shared_repo`
    remote safe, for the git command that talks to it; nothing for other remotes."""
    shared = _shared_repo(url)
    if shared is None:
        return []
    return [f"--{program}=git -c safe.directory={shlex.quote(shared)} {program}"]


def _one_line(text: str) -> str:
    """git's multi-line complaints as one line ("fatal: ... fatal: ...")."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def unreachable(ws: Workspace, timeout: float = 20.0) -> str | None:
    """Why the git remote cannot be read right now, or None when it answers."""
    try:
        pack = _pack_option(remote_url(ws), "upload-pack")
        result = subprocess.run(
            ["git", "ls-remote", *pack, "--heads", REMOTE],
            cwd=ws.root, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"no answer within {timeout:.0f} s"
    return None if result.returncode == 0 else _one_line(result.stderr)


def dvc_remote_url(ws: Workspace) -> str | None:
    """The URL of the workspace's default DVC remote, as its committed .dvc/config names it."""
    config = ws.dvc.config
    name = config["core"].get("remote")
    if not name:
        return None
    return config["remote"].get(name, {}).get("url")


def clone_id(ws: Workspace) -> str:
    """This clone's id, created on first use (kept in .git/config, so never shared)."""
    found = ws.git("config", "--local", "--get", CLONE_ID_KEY, check=False).strip()
    if found:
        return found
    new = uuid.uuid4().hex[:16]
    ws.git("config", "--local", CLONE_ID_KEY, new)
    return new


def git_identity(ws: Workspace) -> str:
    """`Name <email>` as git commits this clone's rounds."""
    name = ws.git("config", "user.name", check=False).strip()
    email = ws.git("config", "user.email", check=False).strip()
    return f"{name} <{email}>" if email else name


def operator(ws: Workspace | None = None, tracking_uri: str | None = None) -> str:
    """Who runs this clone: $BALDFLOW_OPERATOR, else the MLflow user a tracking server
    authenticates, else the clone's git identity, else the login and host name."""
    chosen = os.environ.get("BALDFLOW_OPERATOR", "").strip()
    if chosen:
        return chosen
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "").strip()
    if user and tracking_uri and tracking_uri.startswith(("http://", "https://")):
        return user
    if ws is not None:
        identity = git_identity(ws)
        if identity and not identity.startswith("baldflow <"):
            return identity
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "unknown"
    return f"{login}@{socket.gethostname()}"


def set_operator_identity(ws: Workspace) -> None:
    """Commit as the operator where the machine has a git identity, else as baldflow."""
    for key, fallback in (("user.name", "baldflow"), ("user.email", "baldflow@localhost")):
        if ws.git("config", "--local", "--get", key, check=False).strip():
            continue
        value = ws.git("config", "--global", "--get", key, check=False).strip()
        ws.git("config", "--local", key, value or fallback)


# ------------------------------------------------------------------ joining
def connect(ws: Workspace, git_remote: str) -> None:
    """Make `git_remote` the workspace's remote and publish the workspace there.

    The remote must be empty or hold this very workspace (a retry of a connect that stopped
    half-way): pushing one workspace over another would mix two histories.
    """
    current = remote_url(ws)
    if current is None:
        ws.git("remote", "add", REMOTE, git_remote)
    elif current != git_remote:
        raise RemoteError(
            f"the workspace {ws.root} already pushes to {current}, not {git_remote}; change it "
            f"with `git -C {ws.root} remote set-url {REMOTE} URL`"
        )
    _fetch(ws)
    theirs = _remote_head(ws)
    if theirs is not None and not _is_ancestor(ws, theirs, ws.head()):
        if current is None:
            ws.git("remote", "remove", REMOTE)  # leave the workspace as it was
        raise RemoteError(
            f"{git_remote} already holds another history on {BRANCH}: join it with "
            f"`baldflow init DIR --clone {git_remote}` instead"
        )
    ws.git("branch", "--set-upstream-to", f"{REMOTE}/{BRANCH}", check=False)
    push_data(ws)
    _push(ws, [f"refs/heads/{BRANCH}:refs/heads/{BRANCH}", *_tag_refspecs(ws)])
    ws.git("branch", "--set-upstream-to", f"{REMOTE}/{BRANCH}", check=False)


def clone(url: str, directory: str | Path) -> Workspace:
    """Join a shared workspace: clone its git remote, then pull its data from the DVC remote
    the workspace's own configuration names."""
    from baldflow.workspace.repo import MARKER_FILE, offline_environment

    target = Path(directory).resolve()
    if target.exists() and any(target.iterdir()):
        if Workspace.is_workspace(target) and (
            Workspace(target).git("remote", "get-url", REMOTE, check=False).strip() == url
        ):
            ws = Workspace(target)  # a retry of a clone that stopped during the pull
        else:
            raise RemoteError(f"{target} exists and is not empty: choose a new directory")
    else:
        offline_environment()
        target.parent.mkdir(parents=True, exist_ok=True)
        shared = _shared_repo(url)
        safe = ["-c", f"safe.directory={shared}"] if shared else []
        result = subprocess.run(
            ["git", *safe, "clone", "-q", *_pack_option(url, "upload-pack"), "-b", BRANCH,
             url, str(target)],
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        if result.returncode != 0:
            raise RemoteError(f"git clone {url} failed: {_one_line(result.stderr)}")
        ws = Workspace(target)
    if not (target / MARKER_FILE).is_file():
        raise RemoteError(
            f"{url} is a git repository but not a baldflow workspace (it has no {MARKER_FILE})"
        )
    set_operator_identity(ws)
    clone_id(ws)
    pull_data(ws)
    return ws


# ------------------------------------------------------------------ data
def _dvc_targets(ws: Workspace) -> list[str]:
    return [str(p) for p in sorted((ws.root / DATA_DIR).glob("*/**/*.dvc"))]


def pull_data(ws: Workspace) -> None:
    """Fetch and check out the DVC data of the current commit (every campaign)."""
    targets = _dvc_targets(ws)
    if not targets:
        return
    try:
        with _quiet_dvc():
            ws.dvc.pull(targets=targets, force=True)
    except Exception as exc:  # noqa: BLE001 (DVC raises many types; name the remote)
        raise RemoteError(f"dvc pull in {ws.root} failed: {exc}") from exc


def push_data(ws: Workspace) -> None:
    targets = _dvc_targets(ws)
    if not targets:
        return
    try:
        with _quiet_dvc():
            ws.dvc.push(targets=targets)
    except Exception as exc:  # noqa: BLE001
        raise RemoteError(f"dvc push from {ws.root} failed: {exc}") from exc


# ------------------------------------------------------------------ git plumbing
def _fetch(ws: Workspace) -> None:
    # Tags are forced: a local tag of a round that lost must give way to the winner's tag.
    # Patterns, not names: an empty remote (a workspace about to be published) has no branch.
    result = subprocess.run(
        ["git", "fetch", "-q", *_pack_option(remote_url(ws), "upload-pack"), REMOTE,
         f"+refs/heads/*:refs/remotes/{REMOTE}/*", "+refs/tags/*:refs/tags/*"],
        cwd=ws.root, capture_output=True, text=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )  # fmt: skip
    if result.returncode != 0:
        raise RemoteError(f"git fetch from {remote_url(ws)} failed: {_one_line(result.stderr)}")


def _remote_head(ws: Workspace) -> str | None:
    sha = ws.git("rev-parse", "-q", "--verify", f"refs/remotes/{REMOTE}/{BRANCH}", check=False)
    return sha.strip() or None


def _is_ancestor(ws: Workspace, older: str, newer: str) -> bool:
    return (
        subprocess.run(
            ["git", "merge-base", "--is-ancestor", older, newer], cwd=ws.root, capture_output=True
        ).returncode
        == 0
    )


def _tag_refspecs(ws: Workspace) -> list[str]:
    tags = ws.git("tag", "--list", "*/round-*", "--merged", "HEAD").split()
    return [f"refs/tags/{t}:refs/tags/{t}" for t in tags]


def _push(ws: Workspace, refspecs: list[str]) -> tuple[bool, str]:
    """Push atomically; (False, why) when the remote refused because another clone moved it
    first, RemoteError when it could not be reached at all."""
    result = subprocess.run(
        ["git", "push", "--atomic", "--porcelain", *_pack_option(remote_url(ws), "receive-pack"),
         REMOTE, *refspecs],
        cwd=ws.root, capture_output=True, text=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )  # fmt: skip
    if result.returncode == 0:
        return True, ""
    text = f"{result.stdout}\n{result.stderr}"
    races = ("[rejected]", "non-fast-forward", "already exists", "fetch first", "stale info")
    if any(marker in text for marker in races):
        return False, " ".join(line.strip() for line in result.stdout.splitlines() if "!" in line)
    raise RemoteError(f"git push to {remote_url(ws)} failed: {_one_line(result.stderr)}")


# ------------------------------------------------------------------ the round's claim
def claim_round(ws: Workspace, campaign: str, round_index: int, tag: str) -> None:
    """Publish a committed round: branch + tag in one atomic push.

    Safe to run twice: a push the remote already has is a no-op. Raises RoundTakenError when
    another clone's round N reached the remote first. The data went to the DVC remote with the
    commit (Workspace.commit_round pushes it); a clone that died before this push pushes its
    data again in `sync`, before the commit goes up.
    """
    refspecs = [f"refs/heads/{BRANCH}:refs/heads/{BRANCH}", f"refs/tags/{tag}:refs/tags/{tag}"]
    ok, why = _push(ws, refspecs)
    if not ok:
        raise RoundTakenError(campaign, round_index, why or "the remote refused the push")


def sync(ws: Workspace) -> SyncResult:
    """Bring this clone level with the remote before a round starts.

    Behind: fast-forward and pull the data. Ahead (an earlier run committed but died before
    its push): push those rounds now, which is their claim. Diverged (those rounds lost to
    another clone meanwhile): drop them and take the remote's history. Only committed rounds
    are ever pushed or dropped; the caller has recovered uncommitted work before this.
    """
    before = ws.head()
    _fetch(ws)
    theirs = _remote_head(ws)
    pushed = False
    discarded: list[str] = []
    if theirs is None or theirs == before:
        pass
    elif _is_ancestor(ws, theirs, before):
        push_data(ws)  # before the commits that name it become visible
        ok, _ = _push(ws, [f"refs/heads/{BRANCH}:refs/heads/{BRANCH}", *_tag_refspecs(ws)])
        if ok:
            pushed = True
        else:
            return sync(ws)  # another clone pushed meanwhile: look again
    else:
        discarded = _local_only_rounds(ws, theirs, before)
        # --keep, not --hard: a file someone edited here and did not commit (params.yaml)
        # stays as it is, unless the remote changed it too, which stops with its name.
        kept = subprocess.run(
            ["git", "reset", "-q", "--keep", theirs], cwd=ws.root, capture_output=True, text=True
        )
        if kept.returncode != 0:
            raise RemoteError(
                f"cannot take the remote's rounds into {ws.root}: {_one_line(kept.stderr)}; "
                "fix: commit or undo your changes to those files (git status), then run again"
            )
        pull_data(ws)
    after = ws.head()
    return SyncResult(before, after, after != before and not pushed, pushed, discarded)


def _local_only_rounds(ws: Workspace, theirs: str, ours: str) -> list[str]:
    """The rounds committed here that the remote's branch does not contain, by tag name.

    Read from the commits' trailers, not from tags: the forced tag fetch has already moved a
    lost round's tag to the winner's commit.
    """
    trailers = f"key={TRAILER_CAMPAIGN},key={TRAILER_ROUND},valueonly,separator=%x1f"
    out = ws.git("log", f"--format=%(trailers:{trailers})", f"{theirs}..{ours}")
    rounds = []
    for line in out.splitlines():
        parts = line.split("\x1f")
        if len(parts) == 2 and parts[1].strip().isdigit():
            rounds.append(round_tag(parts[0].strip(), int(parts[1])))
    # Tags that still point at a dropped commit (no winner took that round yet) go too.
    for tag in ws.git("tag", "--list", "*/round-*", "--no-merged", theirs).split():
        ws.git("tag", "-d", tag)
    return sorted(set(rounds))


def discard_lost_round(ws: Workspace, campaign: str, tag: str) -> SyncResult:
    """After RoundTakenError: drop this clone's round (commit and tag) and take the winner's."""
    ws.git("tag", "-d", tag, check=False)
    return sync(ws)
