"""A private PostgreSQL cluster for the team servers: initdb'd into a directory of the stack,
listening on 127.0.0.1 only, started and stopped with pg_ctl.

PostgreSQL refuses to run as root, and on these machines baldflow often does: then every
PostgreSQL command runs as the `postgres` user (`runuser -u postgres --`), which must own the
cluster's files and be able to walk into them. As any other user the commands run directly.
The superuser's password is generated once into a 0600 file beside the cluster; it travels
only inside connection URLs given to the servers.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from baldflow.stack.loopback import port_is_free
from baldflow.stack.process import ProcessStartError

HOST = "127.0.0.1"
SUPERUSER = "postgres"
SERVICE_USER = "postgres"  # the account PostgreSQL runs under when we are root
INSTALL_HINT = (
    "install PostgreSQL (Debian/Ubuntu: `apt-get install -y postgresql`), or put its bin "
    "directory (with initdb and pg_ctl) on PATH"
)


class PostgresError(ProcessStartError):
    """The private PostgreSQL cluster could not be created, started, reached or stopped."""


class PostgresNotInstalledError(PostgresError):
    """No PostgreSQL server binaries (initdb, pg_ctl) on this machine."""


def find_bindir() -> Path:
    """The directory with initdb and pg_ctl: Debian keeps them off PATH, in
    /usr/lib/postgresql/VERSION/bin (`pg_config --bindir` names it when the dev package is in)."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            candidates.append(Path(out))
    # Newest version first: "15" sorts after "9.6" only as numbers.
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: [int(p) for p in Path(d).parent.name.split(".") if p.isdigit()],
        reverse=True,
    )
    candidates += [Path(d) for d in versions]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresNotInstalledError(
        f"no PostgreSQL server binaries (initdb, pg_ctl) found: {INSTALL_HINT}"
    )


def _service_account() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: `postgres` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise PostgresNotInstalledError(
            f"running as root, PostgreSQL needs the '{SERVICE_USER}' user, which does not "
            f"exist: {INSTALL_HINT} (the package creates it), or run as a normal user"
        ) from exc


def _can_traverse(path: Path, account: pwd.struct_passwd) -> bool:
    st = path.stat()
    groups = {g.gr_gid for g in _groups_of(account)} | {account.pw_gid}
    if st.st_uid == account.pw_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _groups_of(account: pwd.struct_passwd):
    import grp

    return [g for g in grp.getgrall() if account.pw_name in g.gr_mem]


def check_reachable(directory: Path, account: pwd.struct_passwd) -> None:
    """Raise naming the first directory above `directory` that `account` cannot walk through:
    PostgreSQL, running as that account, would otherwise fail with a bare "permission denied"
    in its log (pytest's /tmp/pytest-of-root is 0700, for one)."""
    for parent in reversed(directory.resolve().parents):
        if not _can_traverse(parent, account):
            raise PostgresError(
                f"the PostgreSQL cluster in {directory} runs as '{account.pw_name}', which "
                f"cannot enter {parent} (mode {stat.S_IMODE(parent.stat().st_mode):04o}): put "
                f"the stack somewhere else, or `chmod o+x {parent}`"
            )


class PostgresCluster:
    """The cluster in `root` (data/, run/ for the socket, password, postgres.log), owned by
    the account that runs it; `start()` creates it on first use and the databases asked for."""

    def __init__(self, root: str | Path, port: int, *, startup_timeout: float = 60.0):
        self.root = Path(root).absolute()
        self.port = port
        self.startup_timeout = startup_timeout
        self.bindir = find_bindir()
        self.account = _service_account()
        self.startup_seconds: float | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """The Unix socket's directory: ours, not /var/run/postgresql, which may not exist."""
        return self.root / "run"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    # -- running PostgreSQL's own commands -------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        argv = [str(self.bindir / tool), *args]
        if self.account is not None:
            argv = ["runuser", "-u", self.account.pw_name, "--", *argv]
        try:
            # cwd: the service account may not be allowed into ours (initdb warns, pg_ctl fails).
            result = subprocess.run(
                argv, cwd=self.root, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresError(f"could not run {tool}: {exc}") from exc
        return result

    def _chown(self, path: Path) -> None:
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def password(self) -> str:
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError as exc:
            raise PostgresError(f"no PostgreSQL password file {self.password_file}: the "
                                f"cluster was not created by baldflow") from exc

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """initdb with a generated superuser password (scram over TCP, peer on the socket)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._chown(self.root)
        if self.account is not None:
            check_reachable(self.root, self.account)
        if not self.password_file.exists():
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_urlsafe(24) + "\n")
            self._chown(self.password_file)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.socket_dir)
        if self.initialised():
            return
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-made cluster from an interrupted initdb
        result = self._run(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8", "--locale=C",
            "--auth-host=scram-sha-256", "--auth-local=peer",
            f"--pwfile={self.password_file}",
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed in {self.data_dir}:\n{result.stderr.strip()}")

    def running(self) -> bool:
        """Whether a postmaster runs for the data directory (pg_ctl reads its PID file)."""
        if not self.initialised():
            return False
        return self._run("pg_ctl", "-D", str(self.data_dir), "status").returncode == 0

    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> PostgresCluster:
        """Create the cluster if needed and start it on 127.0.0.1:port; waits until it accepts
        connections. A cluster running already is left as it is."""
        started = time.monotonic()
        self.init()
        if not self.running():
            if not port_is_free(self.port):
                raise PostgresError(f"port {self.port} on {HOST} is taken: PostgreSQL cannot "
                                    f"listen there; choose another with --postgres-port")
            options = f"-c listen_addresses={HOST} -p {self.port} -k {self.socket_dir}"
            result = self._run(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                "-t", str(int(self.startup_timeout)), "-o", options, "start",
                timeout=self.startup_timeout + 30,
            )
            if result.returncode != 0:
                raise PostgresError(
                    f"PostgreSQL did not start on {HOST}:{self.port}: "
                    f"{result.stdout.strip()} {result.stderr.strip()}; see {self.log_path}"
                )
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> bool:
        """`pg_ctl -m fast stop` (by data directory and PID file): sessions are disconnected,
        nothing committed is lost. Returns whether it was running."""
        if not self.running():
            return False
        result = self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        if result.returncode != 0:
            raise PostgresError(f"pg_ctl could not stop the cluster in {self.data_dir}: "
                                f"{result.stderr.strip()}")
        return True

    # -- connecting -----------------------------------------------------------------------

    def url(self, database: str, driver: str = "") -> str:
        """A connection URL with the password inside: give it to servers, never print it.
        `driver`: "psycopg2", "asyncpg" or "" (plain libpq)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        secret = quote(self.password, safe="")
        return f"{scheme}://{SUPERUSER}:{secret}@{HOST}:{self.port}/{database}"

    def connect(self, database: str = "postgres", timeout: int = 5):
        try:
            import psycopg2
        except ImportError as exc:
            raise PostgresError("psycopg2 is missing: install baldflow's `team` extra "
                                "(pip install -e '.[team]')") from exc
        return psycopg2.connect(
            host=HOST, port=self.port, user=SUPERUSER, password=self.password,
            dbname=database, connect_timeout=timeout,
        )

    def accepts_connections(self) -> tuple[bool, str]:
        """(ok, why) from a real login and `SELECT 1`: pg_isready would not check the password."""
        try:
            with self.connect(timeout=3) as conn, conn.cursor() as cur:
                cur.execute("SELECT version()")
                version = cur.fetchone()[0].split(",")[0]
            conn.close()
        except Exception as exc:  # noqa: BLE001 (any failure is the answer)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return False, f"{HOST}:{self.port}: {first}"
        return True, f"{version} on {HOST}:{self.port}"

    def create_databases(self, *names: str) -> list[str]:
        """Create the databases that do not exist yet; returns the ones created."""
        created = []
        conn = self.connect()
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                for name in names:
                    if not name.replace("_", "").isalnum():
                        raise PostgresError(f"not a plain database name: {name!r}")
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{name}"')
                        created.append(name)
        finally:
            conn.close()
        return created
