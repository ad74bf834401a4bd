"""A real S3-compatible object store on loopback: OpenStack Swift with its s3api and tempauth
middleware, started and stopped by baldflow by PID.

Why Swift: the machines this project runs on have no MinIO, SeaweedFS or Garage packages, and
moto is an in-memory mock whose data is gone on restart. Swift from PyPI is a real store (data
in plain directories, survives restarts) that speaks S3 through its s3api middleware, so a DVC
`s3://` remote and MLflow's proxied S3 artifact store can be proven end to end without the
internet.

Why its own virtual environment: Swift pins eventlet, an old PasteDeploy and friends, and
monkey-patches the standard library at import; it must never share baldflow's environment.
`ensure_venv()` builds one (`python -m venv DIR && DIR/bin/pip install <pins>`) and marks it
complete only after pip succeeded, so an interrupted build is rebuilt rather than trusted.

The layout is the smallest all-in-one cluster that works: one account, one container and one
object server on loopback ports, one device each (a plain directory, `mount_check = false`),
rings of one replica built with swift-ring-builder, and a proxy whose pipeline puts s3api
before tempauth. No replicators, updaters or auditors run: with one replica there is nothing
to replicate, and the object server updates container listings inline. No memcached either:
tempauth checks S3 signatures against its configured keys without tokens.

Everything lives under one stack directory:
    etc/          swift.conf, the four server configs, the ring builders and rings
    devices/d1/   the data (accounts, containers, objects)
    logs/         one log per server
    stack.json    ports and the hash path suffix (fixed for the life of the data)
    credentials.json  the S3 access key and secret (0600; never put it in git)

Use:
    with SwiftS3(stack_dir, port=8080) as s3:
        s3.create_bucket("dvc")
        s3.endpoint_url, s3.access_key, s3.secret_key
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import hmac
import json
import os
import pwd
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from baldflow.stack import venvs
from baldflow.stack.loopback import port_is_free
from baldflow.stack.process import ManagedProcess, ProcessStartError, free_port

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCOUNT = "baldflow"
USER = "baldflow"

# What `pip install swift` resolved on Python 3.11 (2026-11), pinned so every machine builds the
# same store. lxml (s3api's XML) and PasteDeploy (the pipeline) are Swift's own dependencies.
SWIFT_REQUIREMENTS: tuple[str, ...] = (
    "swift==2.38.3",
    "eventlet==0.41.3",
    "greenlet==3.5.6",
    "lxml==6.1.3",
    "PasteDeploy==3.1.0",
    "pyeclib==1.8.0",
    "xattr==1.3.0",
    "cryptography==50.0.2",
    "cffi==2.1.1",
    "pycparser==3.12",
    "requests==2.34.2",
    "urllib3==2.8.0",
    "idna==3.20",
    "charset-normalizer==3.5.3",
    "certifi==2026.10.19.post1",
    "dnspython==2.9.2",
)
_MARKER = ".baldflow-swift-complete"

# Partition power of the rings: only decides how objects spread over directories. It must not
# change once data exists (objects would be looked for in other partitions).
_PART_POWER = 8
_BACKENDS = ("account", "container", "object")


class SwiftError(ProcessStartError):
    """The Swift store could not be built, started, or did not answer S3 requests."""


# -- the virtual environment ---------------------------------------------------------------


def default_venv() -> Path:
    """$BALDFLOW_SWIFT_VENV, else a cache directory shared by every workspace and test run
    (building it costs seconds to minutes; there is no reason to do it twice)."""
    chosen = os.environ.get("BALDFLOW_SWIFT_VENV")
    if chosen:
        return Path(chosen).expanduser()
    return venvs.cache_dir() / "swift-venv"


def venv_ready(venv: str | Path | None = None) -> bool:
    """Whether `venv` holds a finished Swift install of exactly SWIFT_REQUIREMENTS."""
    venv = Path(venv) if venv is not None else default_venv()
    return venvs.venv_ready(venv, SWIFT_REQUIREMENTS, _MARKER)


def ensure_venv(venv: str | Path | None = None, *, python: str | None = None) -> Path:
    """Build Swift's own virtual environment at `venv` unless a finished one is there
    (baldflow.stack.venvs); raises SwiftError with pip's last lines if it fails."""
    venv = Path(venv) if venv is not None else default_venv()
    return venvs.ensure_venv(
        venv, SWIFT_REQUIREMENTS, what="Swift", variable="BALDFLOW_SWIFT_VENV",
        error=SwiftError, marker=_MARKER, python=python,
    )  # fmt: skip


# -- S3 requests without boto3 -------------------------------------------------------------


def signed_request(
    endpoint: str, access_key: str, secret_key: str, method: str, resource: str = "/"
) -> tuple[int, bytes]:
    """One S3 request signed with signature version 2 (which s3api accepts), so the store
    can be checked and buckets created with the standard library alone: baldflow's own
    environment need not carry boto3 for this."""
    date = email.utils.formatdate(usegmt=True)
    to_sign = f"{method}\n\n\n{date}\n{resource}".encode()
    signature = base64.b64encode(
        hmac.new(secret_key.encode(), to_sign, hashlib.sha1).digest()
    ).decode()
    request = urllib.request.Request(
        endpoint + resource,
        method=method,
        headers={"Date": date, "Authorization": f"AWS {access_key}:{signature}"},
    )
    # No proxies: a proxy from the environment must not answer for a server on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, created that way (never world-readable, even for
    an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT


class SwiftS3:
    """An all-in-one Swift cluster under `root`, serving S3 at http://127.0.0.1:`port`.

    Without a port, the one it used last time (stored in stack.json) is taken, else a free one.
    The backend servers get free ports too; their ports are written into the rings, which are
    rebuilt when a port has to change (same partition power, one device: the data stays where
    it is). Credentials are generated on the first start and kept in credentials.json.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        port: int | None = None,
        venv: str | Path | None = None,
        startup_timeout: float = 60.0,
    ):
        self.root = Path(root).resolve()
        self.requested_port = port
        self.venv = Path(venv) if venv is not None else default_venv()
        self.startup_timeout = startup_timeout
        self.processes: dict[str, ManagedProcess] = {}
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self._credentials: dict[str, str] | None = None

    # -- paths and state

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def devices(self) -> Path:
        return self.root / "devices"

    @property
    def credentials_path(self) -> Path:
        return self.root / "credentials.json"

    @property
    def state_path(self) -> Path:
        return self.root / "stack.json"

    def log_path(self, server: str) -> Path:
        return self.root / "logs" / f"{server}-server.log"

    @property
    def port(self) -> int:
        if "proxy" not in self.ports:
            raise SwiftError("the Swift store has no port before start()")
        return self.ports["proxy"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def credentials(self) -> dict[str, str]:
        """The S3 access key (`account:user`, tempauth's form) and secret, generated once."""
        if self._credentials is None:
            if self.credentials_path.exists():
                self._credentials = json.loads(self.credentials_path.read_text("utf-8"))
            else:
                self._credentials = {
                    "access_key": f"{ACCOUNT}:{USER}",
                    "secret_key": secrets.token_urlsafe(30),
                }
                _write_private(self.credentials_path, json.dumps(self._credentials, indent=2))
        return self._credentials

    @property
    def access_key(self) -> str:
        return self.credentials()["access_key"]

    @property
    def secret_key(self) -> str:
        return self.credentials()["secret_key"]

    def client_env(self) -> dict[str, str]:
        """The variables boto3-based clients (dvc-s3, MLflow's server) read: give them only to
        the process that talks to the store, never write them into a committed config."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def _state(self) -> dict:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text("utf-8"))
        return {}

    # -- configuration

    def _choose_ports(self, state: dict) -> dict[str, int]:
        old = state.get("ports", {})
        ports: dict[str, int] = {}
        proxy = self.requested_port or old.get("proxy")
        if proxy is not None and not port_is_free(proxy):
            if self.requested_port is not None:
                raise SwiftError(
                    f"port {proxy} on {HOST} is taken: cannot serve S3 there (stop what "
                    f"listens there, or choose another port)"
                )
            proxy = None
        ports["proxy"] = proxy or free_port(HOST)
        for server in _BACKENDS:
            port = old.get(server)
            taken = set(ports.values())
            if port is None or port in taken or not port_is_free(port):
                port = free_port(HOST)
                while port in taken:
                    port = free_port(HOST)
            ports[server] = port
        return ports

    def _ring_builder(self, *args: str) -> None:
        argv = [str(self.venv / "bin" / "swift-ring-builder"), *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        # swift-ring-builder exits 1 for warnings (a ring with fewer devices than is wise),
        # which a one-device loopback store is by design; 2 is an error.
        if done.returncode not in (0, 1):
            raise SwiftError(
                f"swift-ring-builder {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )

    def _build_rings(self, ports: dict[str, int]) -> None:
        """One ring per backend with one device (d1) of one replica at its loopback port."""
        for server in _BACKENDS:
            builder = self.etc / f"{server}.builder"
            builder.unlink(missing_ok=True)
            (self.etc / f"{server}.ring.gz").unlink(missing_ok=True)
            self._ring_builder(str(builder), "create", str(_PART_POWER), "1", "1")
            device = f"--region 1 --zone 1 --ip {HOST} --port {ports[server]} --device d1"
            self._ring_builder(str(builder), "add", *device.split(), "--weight", "100")
            self._ring_builder(str(builder), "rebalance")
            if not (self.etc / f"{server}.ring.gz").exists():
                raise SwiftError(f"swift-ring-builder wrote no {server}.ring.gz in {self.etc}")

    def _common(self, port: int, name: str) -> str:
        # user: Swift drops privileges to this user (default `swift`, absent here), so name
        # whoever runs us, root included. workers = 0: serve in the process we started, no
        # forked workers, so the PID we own is the server.
        return (
            "[DEFAULT]\n"
            f"bind_ip = {HOST}\n"
            f"bind_port = {port}\n"
            "workers = 0\n"
            f"user = {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"swift_dir = {self.etc}\n"
            f"devices = {self.devices}\n"
            "mount_check = false\n"
            f"recon_cache_path = {self.root / 'cache'}\n"
            f"log_name = {name}\n"
            "log_level = INFO\n"
        )

    def _write_configs(self, ports: dict[str, int], suffix: str) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "swift.conf").write_text(
            "[swift-hash]\n"
            "# Fixed for the life of the data: objects are found by hashes salted with it.\n"
            f"swift_hash_path_suffix = {suffix}\n\n"
            "[storage-policy:0]\nname = Policy-0\ndefault = yes\n",
            encoding="utf-8",
        )
        for server in _BACKENDS:
            (self.etc / f"{server}-server.conf").write_text(
                self._common(ports[server], f"{server}-server")
                + f"\n[pipeline:main]\npipeline = {server}-server\n\n"
                f"[app:{server}-server]\nuse = egg:swift#{server}\n",
                encoding="utf-8",
            )
        # s3api must sit before tempauth (it checks); slo after it enables multipart uploads.
        # The proxy would insert listing_formats, copy and versioned_writes itself (it needs
        # them); naming them keeps this file the pipeline that really runs.
        pipeline = (
            "catch_errors gatekeeper healthcheck proxy-logging listing_formats s3api tempauth "
            "copy slo dlo versioned_writes proxy-logging proxy-server"
        )
        filters = "".join(
            f"\n[filter:{name}]\nuse = egg:swift#{egg}\n"
            for name, egg in (
                ("catch_errors", "catch_errors"),
                ("gatekeeper", "gatekeeper"),
                ("healthcheck", "healthcheck"),
                ("proxy-logging", "proxy_logging"),
                ("listing_formats", "listing_formats"),
                ("copy", "copy"),
                ("slo", "slo"),
                ("dlo", "dlo"),
                ("versioned_writes", "versioned_writes"),
            )
        )
        # The proxy config holds the secret (tempauth's user line): private like the
        # credentials file it is rendered from.
        _write_private(
            self.etc / "proxy-server.conf",
            self._common(ports["proxy"], "proxy-server")
            + f"\n[pipeline:main]\npipeline = {pipeline}\n\n"
            "[app:proxy-server]\nuse = egg:swift#proxy\n"
            "# The S3 user's account is created on its first request.\n"
            "account_autocreate = true\n"
            f"{filters}\n"
            f"[filter:s3api]\nuse = egg:swift#s3api\nlocation = {REGION}\n\n"
            "[filter:tempauth]\nuse = egg:swift#tempauth\n"
            f"user_{ACCOUNT}_{USER} = {self.secret_key} .admin\n",
        )

    def prepare(self) -> dict[str, int]:
        """Write configs and (when a backend port changed) rings; returns the chosen ports."""
        state = self._state()
        ports = self._choose_ports(state)
        suffix = state.get("hash_path_suffix") or secrets.token_hex(16)
        self.credentials()
        (self.devices / "d1").mkdir(parents=True, exist_ok=True)
        self._write_configs(ports, suffix)
        ring_ports = {server: ports[server] for server in _BACKENDS}
        rings_there = all((self.etc / f"{s}.ring.gz").exists() for s in _BACKENDS)
        if not rings_there or state.get("ring_ports") != ring_ports:
            self._build_rings(ports)
        self.state_path.write_text(
            json.dumps(
                {"ports": ports, "ring_ports": ring_ports, "hash_path_suffix": suffix},
                indent=2,
            ),
            encoding="utf-8",
        )
        return ports

    # -- running

    def start(self) -> SwiftS3:
        """Start the four servers and wait until a signed S3 request (list buckets) answers
        200; on any failure, or an interrupt, whatever started is stopped again."""
        if self.processes:
            raise SwiftError(f"the Swift store in {self.root} was started already")
        if not venv_ready(self.venv):
            raise SwiftError(
                f"no finished Swift environment at {self.venv}: build it first with "
                "baldflow.stack.swift.ensure_venv() (or set BALDFLOW_SWIFT_VENV)"
            )
        started = time.monotonic()
        self.ports = self.prepare()
        try:
            for server in (*_BACKENDS, "proxy"):
                process = ManagedProcess(
                    f"swift {server}-server on {HOST}:{self.ports[server]}",
                    [
                        str(self.venv / "bin" / f"swift-{server}-server"),
                        str(self.etc / f"{server}-server.conf"),
                        "--verbose",  # log to stderr, which goes to its log file
                    ],
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    cwd=self.root,
                    log_path=self.log_path(server),
                )
                self.processes[server] = process.start()
            self._wait_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        last = "no answer"
        while True:
            for server, process in self.processes.items():
                if not process.running():
                    raise SwiftError(
                        f"swift {server}-server on {HOST}:{self.ports[server]} exited with "
                        f"status {process.returncode()} while starting; the end of "
                        f"{self.log_path(server)}:\n{process.log_tail()}"
                    )
            if all(_listening(self.ports[s]) for s in (*_BACKENDS, "proxy")):
                try:
                    status, body = signed_request(
                        self.endpoint_url, self.access_key, self.secret_key, "GET", "/"
                    )
                except OSError as exc:
                    last = str(exc)
                else:
                    if status == 200:
                        return
                    last = f"HTTP {status}: {body[:300]!r}"
            if time.monotonic() > deadline:
                raise SwiftError(
                    f"the Swift S3 endpoint {self.endpoint_url} did not list buckets within "
                    f"{self.startup_timeout:.0f} s (last: {last}); logs in {self.root / 'logs'}"
                )
            time.sleep(0.1)

    def create_bucket(self, name: str) -> None:
        """Create bucket `name` unless this user has it already (DVC and MLflow create none)."""
        status, body = signed_request(
            self.endpoint_url, self.access_key, self.secret_key, "PUT", f"/{name}"
        )
        if status == 200 or b"BucketAlreadyOwnedByYou" in body:
            return
        raise SwiftError(
            f"creating bucket {name!r} at {self.endpoint_url} gave HTTP {status}: {body[:300]!r}"
        )

    def running(self) -> bool:
        return bool(self.processes) and all(p.running() for p in self.processes.values())

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every server by PID, the proxy first (no new requests reach the backends)."""
        for server in ("proxy", *reversed(_BACKENDS)):
            process = self.processes.pop(server, None)
            if process is not None:
                with contextlib.suppress(Exception):
                    process.stop(timeout)

    def __enter__(self) -> SwiftS3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m baldflow.stack.swift venv` builds the environment (CI prepares it this way);
    `... serve DIR [--port P]` runs a store in the foreground until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m baldflow.stack.swift",
        description="OpenStack Swift as an S3 store on loopback",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    venv_cmd = sub.add_parser("venv", help="build Swift's own virtual environment if missing")
    venv_cmd.add_argument("--path", type=Path, help="default: $BALDFLOW_SWIFT_VENV or the cache")
    serve = sub.add_parser("serve", help="run a store in DIR until interrupted")
    serve.add_argument("dir", type=Path)
    serve.add_argument("--port", type=int, help="S3 port (default: the last one, else free)")
    args = parser.parse_args(argv)

    if args.command == "venv":
        started = time.monotonic()
        print(ensure_venv(args.path), f"({time.monotonic() - started:.1f} s)")
        return 0
    store = SwiftS3(args.dir, port=args.port)
    ensure_venv(store.venv)
    with store:
        print(
            f"S3 endpoint {store.endpoint_url} (path-style, region {REGION}); access key "
            f"and secret in {store.credentials_path}. Ctrl-C stops it.",
            flush=True,
        )
        try:
            while store.running():
                time.sleep(1)
        except KeyboardInterrupt:
            return 0
    print("a Swift server exited; logs in", store.root / "logs", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
