"""Private virtual environments for servers whose pins must not meet baldflow's (Swift, Label
Studio): built once per machine in a cache directory, for an exact list of requirements.

A marker file written only after pip succeeded holds the requirements, so an interrupted build
is rebuilt rather than trusted, and a changed pin rebuilds too. A lock file beside the
environment keeps two processes (parallel tests, two workspaces) from building into the same
directory at once.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

MARKER = ".baldflow-venv-complete"


def cache_dir() -> Path:
    """Where the environments live unless their variable names another place."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "baldflow"


def venv_ready(venv: Path, requirements: Sequence[str], marker: str = MARKER) -> bool:
    """Whether `venv` holds a finished install of exactly `requirements`."""
    try:
        return (venv / marker).read_text(encoding="utf-8").split() == list(requirements)
    except OSError:
        return False


def ensure_venv(
    venv: Path,
    requirements: Sequence[str],
    *,
    what: str,
    variable: str,
    error: type[Exception] = RuntimeError,
    marker: str = MARKER,
    python: str | None = None,
) -> Path:
    """Build `what`'s virtual environment at `venv` unless a finished one is there.

    `variable` is the environment variable that chooses `venv` (named in the refusal below).
    Raises `error` with pip's last lines if the build fails.
    """
    if venv_ready(venv, requirements, marker):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if venv_ready(venv, requirements, marker):  # built by whoever held the lock before us
            return venv
        # `venv --clear` empties the directory: only ever one that is a virtual environment
        # (an interrupted build) or empty, never a folder the variable named by mistake.
        if venv.is_dir() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
            raise error(
                f"{venv} is a non-empty directory that is not a virtual environment: refusing "
                f"to build {what}'s environment there (set {variable} to a new path)"
            )
        (venv / marker).unlink(missing_ok=True)
        steps = [
            [python or sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements],
        ]
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
                raise error(
                    f"building {what}'s virtual environment at {venv} failed "
                    f"(`{' '.join(argv[:4])} ...` exited {done.returncode}):\n{tail}"
                )
        (venv / marker).write_text("\n".join(requirements) + "\n", encoding="utf-8")
    return venv
