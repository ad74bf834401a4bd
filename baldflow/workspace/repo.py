"""The workspace: a git repo with DVC where each completed round is one commit and one tag.

Every git and DVC operation of a workspace goes through this module, one at a time: DVC's
repository lock gives up after a few seconds, so parallel writers would fail at random.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from baldflow.common import atomic_write_text, format_number
from baldflow.faults import fault_point
from baldflow.workspace import ledger as ledger_mod
from baldflow.workspace.ledger import LedgerError, LedgerRow
from baldflow.workspace.lock import LOCK_NAME

DATA_DIR = "data"
LABELED_FILE = "labeled.csv"
LEDGER_FILE = "ledger.csv"
ROUNDS_FILE = "rounds.csv"
CAMPAIGN_FILE = "campaign.yaml"
PARAMS_FILE = "params.yaml"
# Marks a directory as a baldflow workspace. A git + DVC repository alone is not one: the
# baldflow project itself is such a repository, and campaigns must never land in it by default.
MARKER_FILE = ".baldflow-workspace"
MARKER_TEXT = "baldflow workspace: campaigns live under data/, see README.md\n"
# The marker's line with the workspace's stable id: every MLflow run the workspace creates is
# tagged with it, and clean-up touches no run without it (several workspaces may share a
# tracking server and even campaign names).
MARKER_ID_KEY = "workspace-id"
REMOTE_DIR = "dvc-remote"
# A pool on disk is described, not copied: its manifest is what DVC versions each round.
POOL_MANIFEST_FILE = "pool-manifest.json"
REMOTE_NAME = "local"

# Hand-off files of a batch waiting for labels (baldflow.labeling); never versioned.
TO_LABEL_DIR = "to-label"

TRAILER_CAMPAIGN = "Baldflow-Campaign"
TRAILER_ROUND = "Baldflow-Round"

ROUNDS_FIELDS = [
    "round",
    "train_size",
    "labeled",
    "acquired",
    "test_accuracy",
    "test_nll",
    "seconds_compute",
    "seconds_acquisition",
    "mlflow_run_id",
    "labeled_set_md5",
]

# Where `baldflow report` writes by default: an output, never a change to the audited history.
REPORT_PATTERN = "report-*.html"

GITIGNORE = f"""\
# Written by baldflow: local state that is not part of the audited history.
/mlflow/
/.prefect/
/{REMOTE_DIR}/
/{LOCK_NAME}
/label-studio/
/{REPORT_PATTERN}
__pycache__/
"""

# Everything baldflow writes into a workspace outside its history (fnmatch patterns relative
# to the root). `verify` never takes these for drift, also in a workspace whose .gitignore was
# written before a rule for them existed.
OUTSIDE_HISTORY = (
    "mlflow/*",
    ".prefect/*",
    f"{REMOTE_DIR}/*",
    LOCK_NAME,
    "label-studio/*",
    REPORT_PATTERN,
    f"{DATA_DIR}/*/{TO_LABEL_DIR}/*",
)


def exclude_from_git(root: str | Path, pattern: str) -> bool:
    """Keep `pattern` (gitignore syntax, from the workspace root) out of git's view through
    .git/info/exclude, which is local: nothing to commit, so git status stays clean also in
    workspaces whose .gitignore predates the rule. True if the line was added."""
    git_dir = Path(root) / ".git"
    if not git_dir.is_dir():
        return False
    exclude = git_dir / "info" / "exclude"
    existing = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
    if pattern in existing.split():
        return False
    exclude.parent.mkdir(parents=True, exist_ok=True)
    sep = "\n" if existing and not existing.endswith("\n") else ""
    exclude.write_text(existing + sep + pattern + "\n", encoding="utf-8")
    return True


class WorkspaceError(RuntimeError):
    """The workspace is missing, damaged or disagrees with the campaign being run."""


def round_tag(campaign: str, round_index: int) -> str:
    return f"{campaign}/round-{round_index:04d}"


# Settings that keep Prefect, MLflow, DVC and git local and quiet: no telemetry, no version
# checks (network calls too), no prompts, and time for the temporary Prefect server to start.
OFFLINE_ENVIRONMENT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DVC_NO_UPDATER": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


def offline_environment(root: str | Path | None = None) -> dict[str, str]:
    """Apply OFFLINE_ENVIRONMENT (and PREFECT_HOME in the workspace `root`) to os.environ.

    Call before importing prefect: its settings are read once at import. Values the user set
    already win, so a configured PREFECT_API_URL or PREFECT_HOME is kept.
    """
    values = dict(OFFLINE_ENVIRONMENT)
    if root is not None:
        values["PREFECT_HOME"] = str(Path(root).resolve() / ".prefect")
    applied = {}
    for key, value in values.items():
        applied[key] = os.environ.setdefault(key, value)
    return applied


@dataclasses.dataclass(frozen=True)
class RoundCommit:
    """What versioning one round produced."""

    campaign: str
    round: int
    commit: str
    tag: str
    labeled_set_md5: str
    seconds_dvc: float
    seconds_git: float


@dataclasses.dataclass(frozen=True)
class Recovery:
    """What opening a campaign had to repair after an interrupted run."""

    last_round: int | None
    discarded: bool
    retagged: bool


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    return env


class Workspace:
    """A campaign workspace directory; holds no open resources until DVC is first used."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self._dvc = None

    # ---------------------------------------------------------------- layout
    @staticmethod
    def is_workspace(root: str | Path) -> bool:
        root = Path(root)
        return (
            (root / ".git").exists() and (root / ".dvc").is_dir() and (root / MARKER_FILE).is_file()
        )

    @property
    def workspace_id(self) -> str:
        """The stable id written in the marker when the workspace was created (or upgraded)."""
        found = _marker_id(self.root / MARKER_FILE)
        if found is None:
            raise WorkspaceError(
                f"{self.root / MARKER_FILE} has no {MARKER_ID_KEY}: open the workspace with "
                "`baldflow run` once to give it one"
            )
        return found

    def _ensure_marker(self) -> bool:
        """Write the marker, or add an id to one written before ids existed; True if changed."""
        marker = self.root / MARKER_FILE
        if marker.exists() and _marker_id(marker) is not None:
            return False
        text = marker.read_text() if marker.exists() else MARKER_TEXT
        if text and not text.endswith("\n"):
            text += "\n"
        atomic_write_text(marker, f"{text}{MARKER_ID_KEY}: {uuid.uuid4().hex}\n")
        return True

    def upgrade_marker(self) -> bool:
        """Give a workspace made before workspace ids an id, committed; True if it needed one."""
        if not self._ensure_marker():
            return False
        self.git("add", "--", MARKER_FILE)
        self.git("commit", "-q", "-m", "baldflow: give the workspace an id", "--", MARKER_FILE)
        return True

    @classmethod
    def is_ready(cls, root: str | Path) -> bool:
        """A workspace whose creation finished: its marker and set-up files are committed.

        A process killed inside `init` leaves a workspace that `is_workspace` may already
        accept; opening one that is not ready runs `init` again, which completes it.
        """
        if not cls.is_workspace(root):
            return False
        ws = cls(root)
        if not ws.git("rev-parse", "-q", "--verify", "HEAD", check=False).strip():
            return False
        setup = [MARKER_FILE, ".gitignore", ".dvc/config"]
        if ws.git("ls-files", "--", MARKER_FILE).strip() != MARKER_FILE:
            return False
        return not ws.git("status", "--porcelain", "--", *setup).strip()

    def campaign_dir(self, campaign: str) -> Path:
        return self.root / DATA_DIR / campaign

    def labeled_path(self, campaign: str) -> Path:
        return self.campaign_dir(campaign) / LABELED_FILE

    def ledger_path(self, campaign: str) -> Path:
        return self.campaign_dir(campaign) / LEDGER_FILE

    def rounds_path(self, campaign: str) -> Path:
        return self.campaign_dir(campaign) / ROUNDS_FILE

    @property
    def params_path(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    def campaigns(self) -> list[str]:
        base = self.root / DATA_DIR
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / (LABELED_FILE + ".dvc")).exists())

    # ---------------------------------------------------------------- git
    def git(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            ["git", *args],
            cwd=self.root,
            env=_git_env(),
            capture_output=True,
            text=True,
        )
        if check and result.returncode != 0:
            raise WorkspaceError(
                f"git {' '.join(args)} failed in {self.root}: {result.stderr.strip()}"
            )
        return result.stdout

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def completed_rounds(self, campaign: str) -> list[int]:
        """Round numbers with a tag, in order: the rounds that finished."""
        out = self.git("tag", "--list", f"{campaign}/round-*")
        rounds = []
        for line in out.split():
            suffix = line.rsplit("round-", 1)[-1]
            if suffix.isdigit():
                rounds.append(int(suffix))
        return sorted(rounds)

    def last_round(self, campaign: str) -> int | None:
        rounds = self.completed_rounds(campaign)
        return rounds[-1] if rounds else None

    # ---------------------------------------------------------------- DVC
    @property
    def dvc(self):
        if self._dvc is None:
            from dvc.repo import Repo

            self._dvc = Repo(str(self.root))
        return self._dvc

    def close(self) -> None:
        if self._dvc is not None:
            self._dvc.close()
            self._dvc = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- init
    @classmethod
    def init(
        cls,
        root: str | Path,
        *,
        params_text: str | None = None,
        remote: str | None = None,
    ) -> Workspace:
        """Create (or complete) a workspace: git, DVC with a default remote, params, ignores."""
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        offline_environment()
        ws = cls(root)
        # Not "is there a .git folder": a process killed inside `git init` leaves one that
        # git (and DVC) do not take for a repository. Initialising again completes it.
        if ws.git("rev-parse", "--git-dir", check=False).strip() != ".git":
            ws.git("init", "-q", "-b", "main")
        # Commits need an identity; a machine without a global one still gets a workspace.
        if not ws.git("config", "user.name", check=False).strip():
            ws.git("config", "user.name", "baldflow")
        if not ws.git("config", "user.email", check=False).strip():
            ws.git("config", "user.email", "baldflow@localhost")
        from dvc.repo import Repo

        if not (root / ".dvc").is_dir():
            with _quiet_dvc():
                Repo.init(str(root))
        repo = ws.dvc
        with repo.config.edit() as conf:
            conf["core"]["analytics"] = False
            if remote is not None or not conf["core"].get("remote"):
                # DVC reads a relative path from the cwd and stores it relative to .dvc/,
                # which keeps the workspace movable as a whole.
                url = remote if remote is not None else os.path.relpath(root / REMOTE_DIR)
                conf["remote"][REMOTE_NAME] = {"url": url}
                conf["core"]["remote"] = REMOTE_NAME
        if remote is None:
            (root / REMOTE_DIR).mkdir(exist_ok=True)
        gitignore = root / ".gitignore"
        existing = gitignore.read_text() if gitignore.exists() else ""
        if "/mlflow/" not in existing:
            sep = "\n" if existing and not existing.endswith("\n") else ""
            gitignore.write_text(existing + sep + GITIGNORE)
        if params_text is not None and not ws.params_path.exists():
            ws.params_path.write_text(params_text, encoding="utf-8")
        (root / DATA_DIR).mkdir(exist_ok=True)
        ws._ensure_marker()
        paths = [MARKER_FILE, ".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvcignore"]
        if ws.params_path.exists():
            paths.append(PARAMS_FILE)
        paths = [p for p in paths if (root / p).exists()]
        ws.git("add", "--", *paths)
        if ws.git("diff", "--cached", "--name-only").strip():
            ws.git("commit", "-q", "-m", "baldflow: initialise workspace")
        return ws

    # ---------------------------------------------------------------- recovery
    def _last_campaign_commit(self, campaign: str) -> tuple[str, int] | None:
        rel = f"{DATA_DIR}/{campaign}"
        out = self.git("log", "-1", "--format=%H%x00%B", "--", rel, check=False)
        if not out.strip():
            return None
        sha, _, body = out.partition("\x00")
        for line in body.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == TRAILER_ROUND and value.strip().isdigit():
                return sha.strip(), int(value.strip())
        return None

    def _campaign_clean(self, campaign: str) -> bool:
        rel = f"{DATA_DIR}/{campaign}"
        # The hand-off folder is working files, not history (see labeling.handoff).
        handoff = f":(exclude){rel}/{TO_LABEL_DIR}"
        status = self.git("status", "--porcelain", "--untracked-files=all", "--", rel, handoff)
        if status.strip():
            return False
        cdir = self.campaign_dir(campaign)
        # rglob: per-round score tables live in a subfolder (scores/), each with its .dvc.
        for dvcfile in cdir.rglob("*.dvc"):
            out = _dvc_out(dvcfile)
            target = dvcfile.parent / out["path"]
            if not target.exists() or ledger_mod.md5_of_file(target) != out["md5"]:
                return False
        return True

    def recover(self, campaign: str) -> Recovery:
        """Bring a campaign back to its last completed round after an interrupted run.

        The git commit of a round is what completes it. A commit whose tag is missing (killed
        between commit and tag) gets its tag; anything written after the last commit (a new
        labeled set, ledger rows, staged files) is discarded, so the round runs again from
        its start and nothing gets labeled twice.
        """
        index_lock = self.root / ".git" / "index.lock"
        # The caller holds the workspace lock, so no live git process of ours owns this file:
        # it is what a killed commit left behind.
        if index_lock.exists():
            index_lock.unlink()
        retagged = False
        last = self._last_campaign_commit(campaign)
        if last is not None:
            sha, round_index = last
            tag = round_tag(campaign, round_index)
            if round_index not in self.completed_rounds(campaign):
                self.git("tag", tag, sha)
                retagged = True
        discarded = False
        rel = f"{DATA_DIR}/{campaign}"
        if not self._campaign_clean(campaign):
            discarded = True
            self.git("reset", "-q", "HEAD", "--", rel, check=False)
            cdir = self.campaign_dir(campaign)
            if last is None:
                # A batch handed to people (to-label/) outlives an interrupted round 0.
                for path in cdir.iterdir() if cdir.is_dir() else []:
                    if path.name == TO_LABEL_DIR:
                        continue
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                if cdir.is_dir() and not any(cdir.iterdir()):
                    cdir.rmdir()
            else:
                self.git("checkout", "HEAD", "--", rel)
                # A batch handed to people (to-label/, git-ignored) is not part of a round.
                self.git("clean", "-fdxq", "-e", f"{TO_LABEL_DIR}/", "--", rel)
                targets = [str(p) for p in cdir.rglob("*.dvc")]
                with _quiet_dvc():
                    self.dvc.checkout(targets=targets, force=True)
            if not self._campaign_clean(campaign):
                raise WorkspaceError(f"could not restore {rel} to its last completed round")
        rounds = self.completed_rounds(campaign)
        return Recovery(rounds[-1] if rounds else None, discarded, retagged)

    def labeled_md5(self, campaign: str) -> str:
        """The md5 of the campaign's labeled set as it is now (the hash DVC records for it)."""
        return ledger_mod.md5_of_text(ledger_mod.labeled_text(self.labeled(campaign)))

    def check_consistency(self, campaign: str) -> None:
        """The labeled set on disk must be exactly what the ledger says; refuse otherwise."""
        from_ledger = ledger_mod.labeled_rows_from_ledger(self.ledger(campaign))
        if from_ledger != self.labeled(campaign):
            raise WorkspaceError(
                f"campaign {campaign!r}: labeled.csv and ledger.csv disagree; "
                "the workspace was edited by hand"
            )

    # ---------------------------------------------------------------- campaign identity
    def check_campaign_params(self, campaign: str, identity: Mapping[str, Any]) -> None:
        """Refuse to resume a campaign with parameters that change what it acquires."""
        path = self.campaign_dir(campaign) / CAMPAIGN_FILE
        if not path.exists():
            return
        recorded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        diffs = []
        for section, values in identity.items():
            before = recorded.get(section, {})
            if not isinstance(values, Mapping):
                continue
            if section == "acquisition" and "strategy" in before:
                from baldflow.config import strategy_spelling

                # An old record's `power-least_confidence` is today's `power-least-confidence`.
                before = {**before, "strategy": strategy_spelling(before["strategy"])}
            for key, value in values.items():
                if key not in before or before[key] == value:
                    continue
                was = before[key]
                if isinstance(value, Mapping) and isinstance(was, Mapping):
                    # A plug-in's record: name the field that changed (its code hash, its
                    # package's version, the weights file's sha256), not the whole record.
                    diffs += [
                        f"{section}.{key}.{field}: was {was.get(field)!r}, now {now!r}"
                        for field, now in value.items()
                        if was.get(field) != now
                    ]
                else:
                    diffs.append(f"{section}.{key}: was {was!r}, now {value!r}")
        if diffs:
            from baldflow.config import ConfigError

            plugins = any(diff.startswith("plugins.") for diff in diffs)
            fix = (
                "restore them (the plug-in's package and code, the weights file) or pick a "
                "new campaign.name"
                if plugins
                else "restore them or pick a new campaign.name"
            )
            raise ConfigError(
                f"campaign {campaign!r} was started with other parameters ("
                + "; ".join(diffs)
                + f"); {fix}"
            )

    # ---------------------------------------------------------------- reading
    def ledger(self, campaign: str) -> list[LedgerRow]:
        return ledger_mod.read_ledger(self.ledger_path(campaign))

    def labeled(self, campaign: str) -> list[tuple[str, int, int]]:
        return ledger_mod.read_labeled(self.labeled_path(campaign))

    def rounds_summary(self, campaign: str) -> list[dict[str, str]]:
        import csv

        path = self.rounds_path(campaign)
        if not path.exists():
            return []
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    # ---------------------------------------------------------------- writing a round
    def commit_round(
        self,
        campaign: str,
        round_index: int,
        rows: Sequence[LedgerRow],
        *,
        summary: Mapping[str, Any],
        identity: Mapping[str, Any] | None = None,
        trailers: Mapping[str, str] | None = None,
        push: bool = True,
        pool_manifest: Mapping[str, Any] | None = None,
        score_table: str | Path | None = None,
    ) -> RoundCommit:
        """Write a round's labels, version them with DVC and git, and tag the round.

        The ledger rows come without the labeled-set hash (it depends on the rows); it is
        computed here from the new labeled.csv, which is exactly the md5 DVC records.
        `pool_manifest` (a pool on disk: its count, shape and content hashes) is versioned
        beside them, so every round's commit says which pool it scored. `score_table` (a
        staged file of every scored sample's score and key) is copied to
        `scores/round-NNNN.parquet` and versioned the same way.
        """
        last = self.last_round(campaign)
        if last is not None and round_index == last:
            # A retry of a round whose commit went through (the task died after it): the
            # round is done; answer with its commit instead of labeling it a second time.
            done = self.committed_round(campaign, round_index)
            ours = [(r.sample_id, r.label) for r in rows]
            if done is not None and ours == [
                (r.sample_id, r.label) for r in self.ledger(campaign) if r.round == round_index
            ]:
                return done
        expected = 0 if last is None else last + 1
        if round_index != expected:
            raise LedgerError(
                f"campaign {campaign!r}: round {round_index} cannot follow round {last} "
                f"(expected round {expected})"
            )
        cdir = self.campaign_dir(campaign)
        cdir.mkdir(parents=True, exist_ok=True)
        labeled = self.labeled(campaign)
        known = {sid for sid, _, _ in labeled}
        for row in rows:
            if row.sample_id in known:
                raise LedgerError(
                    f"sample_id {row.sample_id} is already labeled; round {round_index} "
                    "would label it twice"
                )
            known.add(row.sample_id)
        new_labeled = labeled + [(r.sample_id, r.label, round_index) for r in rows]
        text = ledger_mod.labeled_text(new_labeled)
        md5 = ledger_mod.md5_of_text(text)
        rows = [dataclasses.replace(r, labeled_set_md5=md5) for r in rows]

        atomic_write_text(self.labeled_path(campaign), text)
        ledger_mod.append_ledger(self.ledger_path(campaign), rows)
        self._append_summary(campaign, {**summary, "labeled_set_md5": md5})
        if identity is not None:
            _update_record(cdir / CAMPAIGN_FILE, identity)

        if pool_manifest is not None:
            manifest_text = json.dumps(dict(pool_manifest), indent=2, sort_keys=True) + "\n"
            atomic_write_text(cdir / POOL_MANIFEST_FILE, manifest_text)

        kept_scores = None
        if score_table is not None:
            from baldflow.workspace.scores import score_table_path

            kept_scores = score_table_path(cdir, round_index)
            kept_scores.parent.mkdir(parents=True, exist_ok=True)
            partial = kept_scores.with_name(f".{kept_scores.name}.tmp")
            shutil.copyfile(score_table, partial)
            os.replace(partial, kept_scores)

        fault_point("version:labels-written", round_index)
        t0 = time.perf_counter()
        targets = [self.labeled_path(campaign), self.ledger_path(campaign)]
        if pool_manifest is not None:
            targets.append(cdir / POOL_MANIFEST_FILE)
        if kept_scores is not None:
            targets.append(kept_scores)
        self.dvc_add(targets)
        fault_point("version:dvc-added", round_index)
        outs = [_dvc_out(_dvc_file(target)) for target in targets]
        recorded = outs[0]["md5"]
        if recorded != md5:
            raise WorkspaceError(
                f"DVC recorded md5 {recorded} for {LABELED_FILE}, baldflow computed {md5}"
            )
        if push:
            self.dvc_push(targets, outs)
            fault_point("version:dvc-pushed", round_index)
        seconds_dvc = time.perf_counter() - t0

        t0 = time.perf_counter()
        tag = round_tag(campaign, round_index)
        self.git("add", "--", f"{DATA_DIR}/{campaign}")
        fault_point("version:git-added", round_index)
        message = [f"baldflow: {campaign} round {round_index}", ""]
        all_trailers = {
            TRAILER_CAMPAIGN: campaign,
            TRAILER_ROUND: str(round_index),
            "Labeled-Set-MD5": md5,
            **(trailers or {}),
        }
        message += [f"{k}: {v}" for k, v in all_trailers.items()]
        self.git("commit", "-q", "-m", "\n".join(message))
        sha = self.head()
        fault_point("version:committed", round_index)
        self.git("tag", tag, sha)
        fault_point("version:tagged", round_index)
        seconds_git = time.perf_counter() - t0
        return RoundCommit(campaign, round_index, sha, tag, md5, seconds_dvc, seconds_git)

    def dvc_add(self, targets: Sequence[Path]) -> list[Path]:
        """`dvc add` the targets whose content differs from what their .dvc file records.

        One `add` call for all of them (each call builds DVC's index of every .dvc file in
        the workspace, one more score table a round). A file whose .dvc file already records
        its md5 (a pool manifest is the same every round) is left alone: re-adding it would
        rewrite its .dvc file to record what is recorded. Returns the targets added.
        """
        changed = [target for target in targets if not _dvc_file_current(target)]
        if changed:
            # relink=False (`dvc add --no-relink`): the file stays as written instead of being
            # copied back from the cache it was just copied into, a fifth of the add's time.
            with _quiet_dvc():
                self.dvc.add([str(target) for target in changed], relink=False)
        return changed

    def dvc_push(self, targets: Sequence[Path], outs: Sequence[Mapping[str, Any]]) -> None:
        """Put the objects the targets' .dvc files record in the default DVC remote.

        Pushes the objects by hash, from the cache, and only those the remote lacks.
        `repo.push(targets=...)` would first collect stages for every target, and DVC looks
        for those in the dvc.yaml and dvc.lock of the process's working directory, not the
        workspace's: run from inside a DVC project (the baldflow repository has a 4,000-line
        dvc.lock), that parsed the project's pipeline files once per target, every round.
        Cloud-versioned remotes store files by path, not by hash: those still go through
        `repo.push`, with the .dvc files as targets so that no dvc.yaml is consulted.
        """
        from dvc.config import RemoteConfigError
        from dvc_data.hashfile.hash_info import HashInfo

        cloud = self.dvc.cloud
        by_name: dict[str, list[HashInfo]] = {}
        for out in outs:
            by_name.setdefault(out["hash"], []).append(HashInfo(out["hash"], out["md5"]))
        try:
            odbs = {name: cloud.get_remote_odb(None, "push", hash_name=name) for name in by_name}
        except RemoteConfigError:
            with _quiet_dvc():
                self.dvc.push(targets=[str(_dvc_file(target)) for target in targets])
            return
        for name, objs in by_name.items():
            odb = odbs[name]
            with _quiet_dvc():
                result = cloud.push(objs, odb=odb)
            # An object in neither the cache nor the remote is only logged by DVC, and a
            # failed copy only counted: both would leave a tag whose data cannot be fetched.
            absent = sorted(
                obj.value
                for obj in objs
                if obj in result.failed
                or (obj not in result.transferred and not odb.exists(obj.value))
            )
            if absent:
                raise WorkspaceError(
                    f"DVC push to {odb.fs.unstrip_protocol(odb.path)} did not store "
                    f"{', '.join(absent)}"
                )

    def committed_round(self, campaign: str, round_index: int) -> RoundCommit | None:
        """The commit of a completed round, read back from its tag (None if not completed)."""
        tag = round_tag(campaign, round_index)
        sha = self.git("rev-parse", "-q", "--verify", tag + "^{commit}", check=False).strip()
        if not sha:
            return None
        dvcfile = f"{DATA_DIR}/{campaign}/{LABELED_FILE}.dvc"
        out = yaml.safe_load(self.git("show", f"{sha}:{dvcfile}"))["outs"][0]
        return RoundCommit(campaign, round_index, sha, tag, out["md5"], 0.0, 0.0)

    def _append_summary(self, campaign: str, summary: Mapping[str, Any]) -> None:
        import csv

        path = self.rounds_path(campaign)
        exists = path.exists() and path.stat().st_size > 0
        with path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=ROUNDS_FIELDS, lineterminator="\n")
            if not exists:
                writer.writeheader()
            writer.writerow({k: format_number(summary.get(k)) for k in ROUNDS_FIELDS})

    # ---------------------------------------------------------------- history
    def labeled_at(self, campaign: str, round_index: int) -> list[tuple[str, int, int]]:
        """The labeled set as DVC versioned it at a round's tag (read through dvc.api)."""
        import dvc.api

        rel = f"{DATA_DIR}/{campaign}/{LABELED_FILE}"
        text = dvc.api.read(
            rel, repo=str(self.root), rev=round_tag(campaign, round_index), encoding="utf-8"
        )
        return ledger_mod.parse_labeled(text)


def _update_record(path: Path, record: Mapping[str, Any]) -> None:
    """Write the campaign's record (Config.record()) into campaign.yaml, committed with the round.

    The first round writes it; later rounds change only what a run may change and did (the
    length after `--set campaign.rounds=N`, the tracking destination), since the identity was
    checked against the record before the round ran. Keys the record has and `record` lacks
    (parameters since retired) stay: the record says how the campaign started.
    """
    recorded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
    merged: dict[str, Any] = dict(recorded) if isinstance(recorded, Mapping) else {}
    for section, values in record.items():
        before = merged.get(section)
        if isinstance(values, Mapping) and isinstance(before, Mapping):
            merged[section] = {**before, **values}
        else:
            merged[section] = values
    if merged != recorded:
        atomic_write_text(path, yaml.safe_dump(merged, sort_keys=False))


def _marker_id(marker: Path) -> str | None:
    if not marker.is_file():
        return None
    for line in marker.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == MARKER_ID_KEY and value.strip():
            return value.strip()
    return None


def _dvc_file(target: Path) -> Path:
    return target.with_name(target.name + ".dvc")


# Recovery reads every .dvc file of a campaign before each round (one more score table a
# round); libyaml's loader parses them about ten times faster than the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _dvc_out(dvcfile: Path) -> dict[str, Any]:
    data = yaml.load(dvcfile.read_text(), Loader=_YAML_LOADER)  # noqa: S506 (a safe loader)
    out = data["outs"][0]
    # .dvc files written before DVC 3 have no `hash` field; DVC keeps their objects apart.
    return {"path": out["path"], "md5": out["md5"], "hash": out.get("hash", "md5-dos2unix")}


def _dvc_file_current(target: Path) -> bool:
    """Whether the target's .dvc file (in DVC 3's format) records the target's md5 now."""
    dvcfile = _dvc_file(target)
    if not dvcfile.is_file() or not target.is_file():
        return False
    try:
        out = _dvc_out(dvcfile)
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        return False
    return (
        out["hash"] == "md5"
        and out["path"] == target.name
        and out["md5"] == ledger_mod.md5_of_file(target)
    )


@contextlib.contextmanager
def _quiet_dvc() -> Iterator[None]:
    """Silence DVC's console hints ("To track the changes with git, run: ...")."""
    from dvc.ui import ui

    logger = logging.getLogger("dvc")
    level = logger.level
    logger.setLevel(logging.WARNING)
    sink = io.StringIO()
    enabled = getattr(ui, "_enabled", None)
    try:
        with contextlib.redirect_stdout(sink):
            if enabled is not None:
                ui._enabled = False
            yield
    finally:
        if enabled is not None:
            ui._enabled = enabled
        logger.setLevel(level)
