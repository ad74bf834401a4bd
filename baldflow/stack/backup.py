"""Back up a team stack (while it runs) and restore it into a new directory:
`baldflow stack backup --dir STACK DEST`, `baldflow stack restore --dir NEWSTACK SRC`.

A backup is a directory: PostgreSQL dumps (custom format) of the databases mlflow,
mlflow_auth and prefect, a git bundle of the bare repository, copies of the DVC remote, the
MLflow artifact store (when it is a directory), Label Studio's data (when the stack has it)
and the secrets, and last `manifest.json` with each file's size and sha256. A backup without
a manifest was interrupted; a file that differs from it was changed: restore refuses both.

The parts are taken in the order the team writes them, so that what one part references is in
the parts taken after it: a round pushes its DVC data, then its git commit, then finishes its
MLflow run, whose artifacts were uploaded before. So: git, then DVC, then the databases, then
the artifacts. A round committed while the backup runs may still land half in it; take the
backup between rounds for a campaign that `baldflow verify` finds whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from baldflow.common import atomic_write_text, file_sha256, utc_now
from baldflow.stack.loopback import port_is_free
from baldflow.stack.members import MEMBERS_DIR
from baldflow.stack.postgres import HOST, SUPERUSER, PostgresCluster
from baldflow.stack.process import free_port
from baldflow.stack.team import (
    DATABASES,
    STATE_NAME,
    StackError,
    TeamStack,
    _cluster,
    _paths,
    _prepare_dir,
    _read_state,
    _write_state,
    stack_down,
    stack_up,
)

MANIFEST_NAME = "manifest.json"
FORMAT = "baldflow-stack-backup"
FORMAT_VERSION = 1
LABEL_STUDIO_DIR = "label-studio"
GIT_BUNDLE = "git/baldflow.bundle"
# What a process recorded in stack.json is known by: meaningless in another stack.
PROCESS_KEYS = ("pid", "pgid", "start_ticks", "token")
SQLITE_HEADER = b"SQLite format 3\x00"

Report = Callable[[str], None]


class BackupError(StackError):
    """A backup could not be made, or cannot be restored (the message says why)."""


class IncompleteBackupError(BackupError):
    """The backup has no readable manifest: it was interrupted, or is not a backup."""


class TamperedBackupError(BackupError):
    """A file of the backup is missing, extra, or differs from its manifest."""


class TargetNotEmptyError(BackupError):
    """The directory to back up or restore into is not new or empty."""


@dataclass
class BackupResult:
    dest: Path
    seconds: float
    bytes: int
    files: int
    parts: dict[str, dict]


# -- small tools ---------------------------------------------------------------------------


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=600
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackupError(f"{what} failed: {exc}") from exc
    if result.returncode != 0:
        detail = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        raise BackupError(f"{what} failed: {detail}")
    return result.stdout


def _empty_target(path: Path, what: str) -> None:
    """Refuse an existing path that is not an empty directory, then create it (0700: a
    backup holds secrets and whole databases)."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TargetNotEmptyError(f"{what} {path} exists and is not empty: give a new directory")
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a database a server may be writing: SQLite's backup API."""
    source = sqlite3.connect(f"{src.as_uri()}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(dst)
    try:
        with target:
            source.backup(target)
    finally:
        target.close()
        source.close()
    shutil.copymode(src, dst)


def copy_tree(src: Path, dst: Path, *, live_sqlite: bool = False) -> None:
    """Copy a directory (modes kept). `live_sqlite`: a server may be writing SQLite databases
    in it (Label Studio): those go through SQLite's backup API, their -wal/-shm/-journal files
    left out (the copy holds what they add). Never for content-addressed stores (the DVC
    remote, artifacts), whose bytes must stay exactly as they are."""
    databases = (
        {p for p in src.rglob("*") if p.is_file() and _is_sqlite(p)} if live_sqlite else set()
    )
    sidecars = {p.with_name(p.name + s) for p in databases for s in ("-wal", "-shm", "-journal")}

    def skip(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if Path(directory, n) in databases | sidecars}

    shutil.copytree(src, dst, ignore=skip, copy_function=shutil.copy2)
    for database in databases:
        _sqlite_copy(database, dst / database.relative_to(src))
    _keep_owners(src, dst)


def _keep_owners(src: Path, dst: Path) -> None:
    """As root, each copy belongs to whoever owned the original: members' env files belong to
    their Unix accounts, remotes shared with a Unix group keep that group."""
    if os.geteuid() != 0:
        return
    for copy in [dst, *dst.rglob("*")]:
        original = src / copy.relative_to(dst)
        with contextlib.suppress(OSError):
            st = original.lstat()
            os.chown(copy, st.st_uid, st.st_gid, follow_symlinks=False)


def _tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


# -- backup --------------------------------------------------------------------------------


def _bundle_git(bare: Path, dest: Path) -> str | None:
    """A git bundle of every ref (a consistent read, pushes may go on); returns the
    repository's HEAD ref. No bundle for a repository without refs (git refuses an empty one)."""
    head = _run(["git", "-C", str(bare), "symbolic-ref", "HEAD"], "git symbolic-ref").strip()
    refs = _run(["git", "-C", str(bare), "for-each-ref", "--format=%(refname)"], "git for-each-ref")
    if refs.strip():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _run(["git", "-C", str(bare), "bundle", "create", "--quiet", str(dest), "--all"],
             f"git bundle of {bare}")
    return head


def _pg_tool(cluster: PostgresCluster, name: str) -> str:
    """pg_dump or pg_restore of the cluster's own PostgreSQL: beside its initdb, or beside
    what initdb links to (a bin directory on PATH may hold links to initdb and pg_ctl only)."""
    for bindir in (cluster.bindir, (cluster.bindir / "initdb").resolve().parent):
        if (bindir / name).is_file():
            return str(bindir / name)
    raise BackupError(f"no {name} beside {cluster.bindir / 'initdb'}: install PostgreSQL's "
                      "client programs (Debian: postgresql-client)")


def _pg_env(cluster: PostgresCluster) -> dict[str, str]:
    # The password goes through the environment: a command line is visible to every user.
    return {**os.environ, "PGPASSWORD": cluster.password, "PGCONNECT_TIMEOUT": "10"}


def _pg_args(cluster: PostgresCluster) -> list[str]:
    return ["-h", HOST, "-p", str(cluster.port), "-U", SUPERUSER]


def _dump_databases(cluster: PostgresCluster, dest: Path) -> str:
    """pg_dump -Fc of each database (one consistent snapshot each, while servers write)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in DATABASES:
        _run(
            [_pg_tool(cluster, "pg_dump"), *_pg_args(cluster), "-Fc", "-d", name,
             "-f", str(dest / f"{name}.dump")],
            f"pg_dump of database {name}", env=_pg_env(cluster),
        )
    return _run([_pg_tool(cluster, "pg_dump"), "--version"], "pg_dump --version").strip()


@contextlib.contextmanager
def _postgres_running(cluster: PostgresCluster, say: Report):
    """The stack's PostgreSQL, started for the dump when the stack is down (and stopped after)."""
    if cluster.running():
        yield cluster
        return
    say(f"PostgreSQL is down: starting it on 127.0.0.1:{cluster.port} for the dump")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _local_artifacts(state: dict, root: Path) -> Path | None:
    """The MLflow artifact store's directory; None when it is elsewhere (s3://...)."""
    destination = (state.get("mlflow") or {}).get("artifacts_destination") or str(
        _paths(root)["artifacts"]
    )
    if "://" in destination:
        return None
    return Path(destination)


def _manifest_files(dest: Path) -> list[dict]:
    return [
        {"path": str(p.relative_to(dest)), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in _tree_files(dest)
        if p.relative_to(dest).as_posix() != MANIFEST_NAME
    ]


def _parts_summary(files: list[dict]) -> dict[str, dict]:
    parts: dict[str, dict] = {}
    for entry in files:
        part = entry["path"].split("/", 1)[0]
        summary = parts.setdefault(part, {"files": 0, "bytes": 0})
        summary["files"] += 1
        summary["bytes"] += entry["bytes"]
    return parts


def _portable_state(state: dict) -> dict:
    """The stack's settings without what names its processes (PIDs, start times, tokens)."""
    kept = {}
    for key, value in state.items():
        if isinstance(value, dict):
            kept[key] = {k: v for k, v in value.items() if k not in PROCESS_KEYS}
        elif key not in ("state", "updated", "timings"):
            kept[key] = value
    return kept


def backup_stack(dir: str | Path, dest: str | Path, report: Report | None = None) -> BackupResult:
    """Back up the stack in `dir` into the new directory `dest` (see the module's docstring);
    the stack may be up (the dumps and the bundle are consistent reads) or down. A backup that
    fails half-way has no manifest, which restore refuses."""
    say = report or (lambda _line: None)
    started = time.monotonic()
    root = Path(dir).absolute()
    state = _read_state(root)
    if (state.get("postgres") or {}).get("port") is None:
        raise BackupError(f"the stack in {root} never started: nothing to back up")
    target = Path(dest).absolute()
    if target == root or root in target.parents:
        raise BackupError(f"the backup {target} cannot go inside the stack {root}")
    for part in ("git", "dvc"):
        if not _paths(root)[part].is_dir():
            raise BackupError(f"the stack's {part} remote {_paths(root)[part]} is missing: run "
                              f"`baldflow stack up --dir {root}` to create it")
    _empty_target(target, "the backup directory")
    facts = _copy_parts(root, state, target, say)
    files = _manifest_files(target)
    seconds = time.monotonic() - started
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": utc_now(),
        "seconds": round(seconds, 2),
        "stack_dir": str(root),
        "state": _portable_state(state),
        **facts,
        "databases": list(DATABASES),
        "parts": _parts_summary(files),
        "files": files,
    }
    # Last, and atomically: a backup with a manifest is a whole one.
    atomic_write_text(target / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    os.chmod(target / MANIFEST_NAME, 0o600)
    total = sum(f["bytes"] for f in files)
    say(f"backup of {root} in {target}: {len(files)} files, {total / 1e6:.1f} MB, "
        f"{seconds:.1f} s")
    return BackupResult(target, seconds, total, len(files), manifest["parts"])


def _copy_parts(root: Path, state: dict, target: Path, say: Report) -> dict:
    """Every part into `target`, in the order a round writes them (see the module's
    docstring); returns what restore needs to know besides the files."""
    paths = _paths(root)
    step = time.monotonic()
    head = _bundle_git(paths["git"], target / GIT_BUNDLE)
    say(f"git: bundled {paths['git']} in {time.monotonic() - step:.1f} s")
    step = time.monotonic()
    copy_tree(paths["dvc"], target / "dvc-remote")
    say(f"dvc: copied {paths['dvc']} in {time.monotonic() - step:.1f} s")
    step = time.monotonic()
    with _postgres_running(_cluster(root, state["postgres"]["port"]), say) as cluster:
        pg_dump = _dump_databases(cluster, target / "postgres")
    say(f"postgres: dumped {', '.join(DATABASES)} in {time.monotonic() - step:.1f} s")
    artifacts = _local_artifacts(state, root)
    if artifacts is None:
        say("mlflow-artifacts: the store is not a directory (s3://...): back it up with its "
            "own tools")
    elif artifacts.is_dir():
        copy_tree(artifacts, target / "mlflow-artifacts")
        say(f"mlflow-artifacts: copied {artifacts}")
    if (root / LABEL_STUDIO_DIR).is_dir():
        copy_tree(root / LABEL_STUDIO_DIR, target / LABEL_STUDIO_DIR, live_sqlite=True)
        say(f"label-studio: copied {root / LABEL_STUDIO_DIR} (its databases through SQLite's "
            "backup API)")
    if paths["secrets"].is_dir():
        copy_tree(paths["secrets"], target / "secrets")
        os.chmod(target / "secrets", 0o700)
    if (root / MEMBERS_DIR).is_dir():
        # Members' env files: the only copy of their passwords (MLflow keeps hashes).
        copy_tree(root / MEMBERS_DIR, target / MEMBERS_DIR)
    return {"git_head": head, "pg_dump": pg_dump,
            "artifacts_copied": artifacts is not None and artifacts.is_dir()}


# -- restore -------------------------------------------------------------------------------


def read_manifest(src: Path) -> dict:
    """The backup's manifest, checked against every file of the backup (sha256 and size)."""
    path = src / MANIFEST_NAME
    if not src.is_dir():
        raise IncompleteBackupError(f"no backup in {src}: not a directory")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IncompleteBackupError(
            f"{src} has no {MANIFEST_NAME}: the backup is incomplete (interrupted) or not a "
            "baldflow stack backup"
        ) from None
    except (OSError, ValueError) as exc:
        raise IncompleteBackupError(f"{path} is not readable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IncompleteBackupError(f"{path} is not the manifest of a baldflow stack backup")
    if manifest.get("version") != FORMAT_VERSION:
        raise BackupError(f"{path} is of backup format {manifest.get('version')}; this "
                          f"baldflow reads format {FORMAT_VERSION}")
    _check_files(src, manifest["files"])
    return manifest


def _check_files(src: Path, files: list[dict]) -> None:
    listed = {entry["path"] for entry in files}
    extra = sorted(
        str(p.relative_to(src)) for p in _tree_files(src)
        if str(p.relative_to(src)) not in listed | {MANIFEST_NAME}
    )
    if extra:
        raise TamperedBackupError(f"{src / extra[0]} is not in the backup's manifest "
                                  f"({len(extra)} such file(s)): the backup was changed")
    for entry in files:
        path = src / entry["path"]
        if not path.is_file():
            raise TamperedBackupError(f"{path} is missing: the backup is not whole")
        if path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            raise TamperedBackupError(
                f"{path} differs from the backup's manifest (sha256 or size): the backup was "
                "changed or damaged"
            )


def _restore_git(src: Path, bare: Path, head: str) -> None:
    bare.parent.mkdir(parents=True, exist_ok=True)
    _run(["git", "init", "--bare", "--quiet", str(bare)], f"git init --bare {bare}")
    _run(["git", "-C", str(bare), "symbolic-ref", "HEAD", head], "git symbolic-ref")
    bundle = src / GIT_BUNDLE
    if bundle.is_file():
        _run(["git", "-C", str(bare), "fetch", "--quiet", str(bundle), "refs/*:refs/*"],
             f"git fetch from {bundle}")


def _restore_databases(cluster: PostgresCluster, src: Path) -> None:
    cluster.create_databases(*DATABASES)
    for name in DATABASES:
        _run(
            [_pg_tool(cluster, "pg_restore"), *_pg_args(cluster), "-d", name,
             "--exit-on-error", "--single-transaction", str(src / "postgres" / f"{name}.dump")],
            f"pg_restore of database {name}", env=_pg_env(cluster),
        )


def _port(recorded: int | None, say: Report, what: str) -> int:
    """The port the backed-up stack had, when it is free here (the URLs committed in
    workspaces keep working), else a free one."""
    if recorded is not None and port_is_free(int(recorded)):
        return int(recorded)
    port = free_port()
    if recorded is not None:
        say(f"{what}: port {recorded} is taken here, using {port} (its URL changes)")
    return port


def _moved(value, old: str, new: str):
    """`value` with the old stack directory replaced by the new one in every path it holds."""
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    return value


def _initial_state(manifest: dict, root: Path, say: Report) -> dict:
    """The restored stack's stack.json before `stack up`: the backed-up settings, its paths
    moved to the new directory, each server on its old port where free. URLs are left to
    `stack up`, which writes them for the ports it uses."""
    state = _moved(manifest["state"], manifest["stack_dir"], str(root))
    for part, value in state.items():
        if isinstance(value, dict) and "port" in value:
            value["port"] = _port(value.get("port"), say, part)
            value.pop("url", None)
            value.pop("api_url", None)
    if not manifest.get("artifacts_copied"):
        # An s3:// store stays where it is; a directory that was missing starts anew.
        ml = state.get("mlflow") or {}
        if "://" not in str(ml.get("artifacts_destination", "")):
            ml.pop("artifacts_destination", None)
    else:
        (state.get("mlflow") or {}).pop("artifacts_destination", None)  # the new default
    state["restored_from"] = {"backup_created": manifest["created"],
                              "stack_dir": manifest["stack_dir"]}
    return state


def _restore_files(src: Path, root: Path, manifest: dict) -> None:
    paths = _paths(root)
    if (src / "secrets").is_dir():
        copy_tree(src / "secrets", paths["secrets"])
        os.chmod(paths["secrets"], 0o700)
    _restore_git(src, paths["git"], manifest.get("git_head") or "refs/heads/main")
    if (src / "dvc-remote").is_dir():
        copy_tree(src / "dvc-remote", paths["dvc"])
    else:
        paths["dvc"].mkdir()
    if (src / "mlflow-artifacts").is_dir():
        # Runs record proxied locations (mlflow-artifacts:/...), relative to the store: the
        # copy under the new stack's store answers them.
        copy_tree(src / "mlflow-artifacts", paths["artifacts"])
    if (src / LABEL_STUDIO_DIR).is_dir():
        copy_tree(src / LABEL_STUDIO_DIR, root / LABEL_STUDIO_DIR)
    if (src / MEMBERS_DIR).is_dir():
        copy_tree(src / MEMBERS_DIR, root / MEMBERS_DIR)


def restore_stack(
    src: str | Path, dir: str | Path, report: Report | None = None
) -> TeamStack:
    """Restore the backup in `src` into the new (or empty) stack directory `dir`, and bring
    the stack up there: remotes, artifacts and secrets copied back, a new PostgreSQL cluster
    with the three databases restored, then `stack up` (each server on its old port where
    that is free). A failure stops whatever it started and empties `dir` again, so that the
    restore can simply be retried."""
    say = report or (lambda _line: None)
    started = time.monotonic()
    source = Path(src).absolute()
    manifest = read_manifest(source)
    say(f"backup of {manifest['stack_dir']} from {manifest['created']}: "
        f"{len(manifest['files'])} files checked")
    root = Path(dir).absolute()
    if (root / STATE_NAME).exists():
        raise TargetNotEmptyError(f"{root} holds a stack already: restore into a new directory")
    _empty_target(root, "the stack directory")
    try:
        stack = _restore_into(source, root, manifest, say)
    except BaseException:
        _undo(root)
        raise
    say(f"restored into {root} in {time.monotonic() - started:.1f} s")
    return stack


def _restore_into(source: Path, root: Path, manifest: dict, say: Report) -> TeamStack:
    _prepare_dir(root)  # the stack directory's own mode
    _restore_files(source, root, manifest)
    state = _initial_state(manifest, root, say)
    cluster = _cluster(root, state["postgres"]["port"])
    step = time.monotonic()
    cluster.start()
    state["postgres"].update(pid=cluster.pid(), data_dir=str(cluster.data_dir))
    _write_state(root, state)  # from here on, `stack down` finds what runs
    _restore_databases(cluster, source)
    say(f"postgres: restored {', '.join(DATABASES)} in {time.monotonic() - step:.1f} s")
    stack = stack_up(root, report=say)
    _say_what_moved(manifest["stack_dir"], stack, say)
    return stack


def _say_what_moved(old_dir: str, stack: TeamStack, say: Report) -> None:
    """Workspaces commit the DVC remote's path (and clones keep the git remote's URL): name
    the commands that point an existing clone at the restored remotes."""
    if (stack.dir / MEMBERS_DIR).is_dir():
        say(f"members' env files are back in {stack.dir / MEMBERS_DIR}; where the stack's "
            f"addresses changed, refresh each with `baldflow stack user add NAME --dir "
            f"{stack.dir}`")
    if old_dir == str(stack.dir):
        return
    say(f"the remotes moved from {old_dir}: in each clone, `git remote set-url origin "
        f"{stack.git_remote}` and `dvc remote modify --local NAME url {stack.dvc_remote}` "
        "(NAME: `dvc remote default`)")


def _undo(root: Path) -> None:
    """Stop what a failed restore started, and remove what it wrote (it found `root` empty)."""
    if (root / STATE_NAME).exists():
        with contextlib.suppress(Exception):
            stack_down(root)
    with contextlib.suppress(Exception):
        cluster = PostgresCluster(_paths(root)["postgres"], 0)
        if cluster.initialised():
            cluster.stop()  # by its data directory: the port does not matter to pg_ctl stop
    for child in list(root.iterdir()) if root.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()
