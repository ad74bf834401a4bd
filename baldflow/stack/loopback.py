"""Probing the servers baldflow runs on 127.0.0.1 (or, for a team stack, on the address members
reach): is a port free, does a URL answer, wait until a starting server answers, may a server
bind an address. One copy for every server wrapper (PostgreSQL, MLflow, Prefect, Swift, Dask,
the team stack).
"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from baldflow.stack.process import ManagedProcess

HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or `localhost`) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_problem(host: str) -> str | None:
    """Why a server cannot bind `host`, or None when it can. Only an address literal of this
    machine: 0.0.0.0 or :: would listen on every network (and give members no URL to use), a
    name could resolve elsewhere tomorrow."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host!r} is not an IP address: give the address members reach this machine at"
    if address.version != 4:
        return f"{host} is an IPv6 address: the team stack binds IPv4 addresses only"
    if address.is_unspecified:
        return (f"{host} listens on every network: give the one address members reach this "
                "machine at")
    with socket.socket() as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            return f"{host} is not an address of this machine ({exc.strerror})"
    return None


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could bind `port` now. SO_REUSEADDR as servers bind: connections of a
    stopped server in TIME_WAIT must not make its own port look taken on a restart."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_ok(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(True, "HTTP 200") when `url` answers 200, else (False, what happened instead)."""
    # No proxies: a proxy from the environment must not answer for a server on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, str(getattr(exc, "reason", exc))


def wait_until_answers(
    process: ManagedProcess,
    url: str,
    *,
    what: str,
    deadline: float,
    timeout_s: float,
    error: type[Exception],
    log_path: Path | None = None,
    interval: float = 0.1,
    exit_error: Callable[[str], type[Exception]] | None = None,
) -> None:
    """Poll `url` until it answers 200. Raise `error` when the deadline (time.monotonic())
    passes, or when `process` exits first: then with the end of its log, and as
    `exit_error(log tail)` where given (a caller that retries on a port taken meanwhile)."""
    while not http_ok(url, timeout=2)[0]:
        if not process.running():
            tail = process.log_tail()
            kind = exit_error(tail) if exit_error is not None else error
            where = f"; the end of {log_path}:\n{tail}" if log_path is not None else ""
            raise kind(
                f"{what} exited with status {process.returncode()} before it answered{where}"
            )
        if time.monotonic() > deadline:
            raise error(
                f"{what} did not answer {url} within {timeout_s:.0f} s"
                + (f"; see {log_path}" if log_path is not None else "")
            )
        time.sleep(interval)
