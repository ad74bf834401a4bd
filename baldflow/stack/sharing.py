"""The team stack's remotes shared with a Unix group: members who are other accounts of the
stack's machine push to its bare git repository and its DVC remote directory themselves.

Group ownership, setgid directories (what anyone creates inside stays the group's) and group
write: git keeps its own files that way with `core.sharedRepository=group`; DVC writes each
object into a two-hex-digit directory, created here in advance, so a member never has to write
into a directory another member created with a umask of 022 (DVC over ssh, through sftp, does).
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
from pathlib import Path

from baldflow.stack.process import ProcessStartError

# Where DVC 3 keeps a remote's objects: files/md5/XX/REST.
DVC_OBJECT_DIR = ("files", "md5")


class SharingError(ProcessStartError):
    """The remotes could not be given to the group (the message says why and the fix)."""


def group_id(name: str) -> int:
    """The id of the Unix group `name`; SharingError naming the fix when there is none."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise SharingError(
            f"there is no Unix group {name!r}: create it (groupadd {name}) and add the members "
            f"(usermod -aG {name} USER)"
        ) from None


def _give(path: Path, gid: int, group: str) -> None:
    """`path` to the group: group owner, the owner's read/write for the group, setgid and
    group rwx for directories."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return
    try:
        if info.st_gid != gid:
            os.chown(path, -1, gid)
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            wanted = mode | stat.S_ISGID | 0o070
        else:
            wanted = mode | ((mode & 0o600) >> 3)
        if wanted != mode:
            os.chmod(path, wanted)
    except PermissionError as exc:
        raise SharingError(
            f"cannot give {path} to the group {group!r} ({exc.strerror}): run `stack up` as "
            f"the owner of the stack's files, who must be a member of {group} "
            f"(usermod -aG {group} $USER, then log in again)"
        ) from None


def share_tree(root: Path, gid: int, group: str) -> None:
    """`root` and everything below it to the group (cheap to repeat: only what differs)."""
    _give(root, gid, group)
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            _give(Path(folder) / name, gid, group)


def share_remotes(stack_dir: Path, git_repo: Path, dvc_remote: Path, group: str) -> None:
    """Give the bare git repository and the DVC remote directory of a stack to `group`.

    The stack directory itself becomes 0711 (members pass through it, list nothing: its
    secrets stay the owner's); the folder around the git repository and the DVC remote get no
    access for others at all (2770)."""
    gid = group_id(group)
    os.chmod(stack_dir, 0o711)
    result = subprocess.run(
        ["git", "-C", str(git_repo), "config", "core.sharedRepository", "group"],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise SharingError(f"git config core.sharedRepository in {git_repo} failed: "
                           f"{result.stderr.strip()}")
    objects = dvc_remote.joinpath(*DVC_OBJECT_DIR)
    for prefix in range(256):
        (objects / f"{prefix:02x}").mkdir(parents=True, exist_ok=True)
    for top in (git_repo.parent, dvc_remote):
        share_tree(top, gid, group)
        os.chmod(top, (top.stat().st_mode & ~0o007) | stat.S_ISGID | 0o070)
