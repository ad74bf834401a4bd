"""Run a command that the kernel stops when its owner dies: `python -m baldflow.stack._launch
OWNER_PID -- COMMAND...` (Linux).

The parent-death signal covers the one way out the owner cannot handle itself, SIGKILL: the
server it started then gets SIGTERM instead of living on as an orphan. The setting survives
exec, so the command itself carries it. It fires when the owner's thread that started the
child ends, so owners start servers from their main thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m baldflow.stack._launch OWNER_PID -- COMMAND...", file=sys.stderr)
        return 2
    owner, command = int(argv[0]), argv[2:]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the owner's own exit hooks still stop the command
    # The owner may have died before the setting took effect: then nobody would stop us.
    if os.getppid() != owner:
        return 1
    os.execvp(command[0], command)
    return 127  # not reached: exec replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
