"""A standing Dask cluster that baldflow owns by PID: one `dask scheduler` and one `dask worker`
process (N worker processes under it), all on 127.0.0.1.

Why standing: `prefect_dask.DaskTaskRunner()` without an address builds a LocalCluster per flow
run (~5 s here, and every worker imports torch again); pointed at a cluster that stays up, the
workers keep their imports warm and a sharded scoring flow pays only for its tasks. Why ours:
a cluster started with `dask` by hand is stopped by name or forgotten; this one runs as
baldflow.stack.process.ManagedProcess children (own session, stopped by PID on every way out of
the owner, or recorded with `detached=True` for a cluster that outlives the command).

Binding (checked with `ss -ltnp` on dask/distributed 2026.8): the scheduler listens where
`--host` says and its dashboard where `--dashboard-address` says (its default is every
interface, and `--no-dashboard` still listens on 0.0.0.0:8787, so the dashboard is always
given 127.0.0.1 explicitly). On `dask worker`, `--host 127.0.0.1` binds both the worker and
the nanny listeners to 127.0.0.1 (random ports); its per-worker dashboards need
`--dashboard-address 127.0.0.1:0`. `--listen-address`/`--contact-address` are not needed.

Prefect: a Dask worker that runs a Prefect task talks to the Prefect API in its environment.
With no PREFECT_API_URL there, Prefect's default profile would start a temporary server in
every worker (32 s instead of 6 s on this machine). Callers put PREFECT_API_URL into `env`;
without it, the workers get PREFECT_SERVER_EPHEMERAL_ENABLED=false, so a Prefect task fails
loudly instead of quietly starting servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from baldflow.stack.loopback import port_is_free
from baldflow.stack.process import (
    ManagedProcess,
    ProcessStartError,
    start_ticks,
    stop_recorded_group,
)

HOST = "127.0.0.1"
SCHEDULER_LOG = "dask-scheduler.log"
WORKERS_LOG = "dask-workers.log"
SCHEDULER_FILE = "dask-scheduler.json"
WORKER_SPACE = "dask-worker-space"


# Dask's nannies set MALLOC_TRIM_THRESHOLD_ in every worker (its default pre-spawn-environ):
# that turns off glibc's dynamic mmap threshold, and a worker then maps and unmaps the large
# arrays of each MC-dropout pass anew. Measured here: one worker embedded 3,560 samples/s with
# it, 4,430-4,800 without. baldflow's workers drop it (a value None unsets a variable there)
# and keep the rest of Dask's list (one thread each for OpenMP, MKL, OpenBLAS).
PRE_SPAWN_ENVIRON_ENV = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"


def worker_pre_spawn_environ() -> dict[str, object]:
    """Dask's pre-spawn environment for the nannies' workers, MALLOC_TRIM_THRESHOLD_ unset."""
    import dask.config

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ["MALLOC_TRIM_THRESHOLD_"] = None
    return environ


class DaskClusterError(ProcessStartError):
    """The Dask cluster could not start, or a part of it exited, or it was not ready in time."""


class DaskPortTakenError(DaskClusterError):
    """A port asked for (scheduler or dashboard) is taken: nothing was started."""


class DaskProcessExitedError(DaskClusterError):
    """The scheduler or the worker process exited while the cluster was starting."""


class DaskStartTimeoutError(DaskClusterError):
    """The scheduler, or all N workers, were not ready within the startup timeout."""


class DaskNotInstalledError(DaskClusterError):
    """`distributed` cannot be imported: the project's `dask` extra is not installed."""


def _process_group_members(pgid: int) -> list[int]:
    """The PIDs whose process group is `pgid` (from /proc; empty where there is none)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is the state, fields[2] the process group; a zombie holds no sockets.
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry.name))
    return sorted(members)


class DaskCluster:
    """`dask scheduler` + `dask worker --nworkers N --nthreads T`, with logs, the scheduler
    file and the workers' scratch space under `home`.

    Workers run as ONE `dask worker` process with `--nworkers N` rather than N processes:
    its nannies and worker processes are all multiprocessing children in its session, so one
    process-group signal by one PID stops every one of them (the CLI closes its nannies on
    SIGTERM, and what is left gets SIGKILL), and the workers' imports of distributed are paid
    once in the CLI process instead of N times, which matters on a 2-core machine.

    `scheduler_port`/`dashboard_port`: None picks free ports (port 0, read back from the
    scheduler file, so no race with other processes); a port given must be free or start()
    raises DaskPortTakenError before it starts anything. `memory_limit` is `dask worker
    --memory-limit` per worker process ("2GB", "auto", 0 for none); None keeps Dask's default.
    `env` is the whole environment of the scheduler and workers (None: this process's): put
    PREFECT_API_URL there when the workers run Prefect tasks (see the module docstring).
    `detached=True` lets the cluster outlive this process; `record()` then gives what
    `stop_recorded_cluster` needs to stop it from any process. `worker_prefix`,
    `worker_env` and `worker_home` run the workers apart from this host's user: under a
    command prefix (another Unix account, a namespace), with an environment and a home (their
    working and scratch directory) of their own, e.g. workers that must not read the
    workspace and get the round's inputs only through `scale.staging`.
    """

    def __init__(
        self,
        home: str | Path,
        *,
        workers: int = 2,
        threads_per_worker: int = 1,
        scheduler_port: int | None = None,
        dashboard_port: int | None = None,
        memory_limit: str | int | None = None,
        detached: bool = False,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        worker_prefix: Sequence[str] = (),
        worker_env: Mapping[str, str] | None = None,
        worker_home: str | Path | None = None,
    ):
        if workers < 1 or threads_per_worker < 1:
            raise ValueError("a Dask cluster needs at least 1 worker with at least 1 thread")
        self.home = Path(home)
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self.scheduler_port = scheduler_port
        self.dashboard_port = dashboard_port
        self.memory_limit = memory_limit
        self.detached = detached
        self.env = dict(env) if env is not None else None
        self.startup_timeout = startup_timeout
        self.worker_prefix = list(worker_prefix)
        self.worker_env = dict(worker_env) if worker_env is not None else None
        self.worker_home = Path(worker_home) if worker_home is not None else None
        self.scheduler: ManagedProcess | None = None
        self.worker_process: ManagedProcess | None = None
        self.startup_seconds: float | None = None
        self.stop_seconds: float | None = None

    # -- where it is --

    @property
    def address(self) -> str:
        """The scheduler's address for distributed.Client and DaskTaskRunner(address=...)."""
        if self.scheduler_port is None:
            raise DaskClusterError("the Dask cluster has no address before start()")
        return f"tcp://{HOST}:{self.scheduler_port}"

    @property
    def dashboard_url(self) -> str:
        if self.dashboard_port is None:
            raise DaskClusterError("the Dask cluster has no dashboard before start()")
        return f"http://{HOST}:{self.dashboard_port}/status"

    @property
    def scheduler_log(self) -> Path:
        return self.home / SCHEDULER_LOG

    @property
    def workers_log(self) -> Path:
        return self.home / WORKERS_LOG

    @property
    def scheduler_file(self) -> Path:
        return self.home / SCHEDULER_FILE

    # -- commands --

    def environment(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        if not env.get("PREFECT_API_URL"):
            # Else Prefect's default profile starts a temporary server in every worker.
            env.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")
        env.setdefault(PRE_SPAWN_ENVIRON_ENV, repr(worker_pre_spawn_environ()))
        return env

    def scheduler_command(self) -> list[str]:
        argv = [sys.executable, "-m", "dask", "scheduler", "--host", HOST]
        argv += ["--port", str(self.scheduler_port or 0)]
        argv += ["--dashboard-address", f"{HOST}:{self.dashboard_port or 0}"]
        argv += ["--scheduler-file", str(self.scheduler_file)]
        return argv

    def worker_command(self) -> list[str]:
        argv = [sys.executable, "-m", "dask", "worker", self.address, "--host", HOST]
        argv += ["--dashboard-address", f"{HOST}:0"]
        argv += ["--nworkers", str(self.workers), "--nthreads", str(self.threads_per_worker)]
        space = (self.worker_home or self.home) / WORKER_SPACE
        argv += ["--local-directory", str(space)]
        if self.memory_limit is not None:
            argv += ["--memory-limit", str(self.memory_limit)]
        return argv

    # -- start --

    def start(self) -> DaskCluster:
        """Start the scheduler, then the workers, and wait until the scheduler counts all N
        workers. On any failure (or an interrupt) whatever was started is stopped again."""
        if self.scheduler is not None:
            raise DaskClusterError(f"the Dask cluster at {self.address} was started already")
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise DaskNotInstalledError(
                f"the Dask cluster needs distributed (install baldflow's `dask` extra): {exc}"
            ) from exc
        for what, port in (("scheduler", self.scheduler_port), ("dashboard", self.dashboard_port)):
            if port is not None and not port_is_free(port, HOST):
                raise DaskPortTakenError(
                    f"port {port} on {HOST} is taken: the Dask {what} cannot listen there; "
                    "choose another port or leave it out for a free one"
                )
        started = time.monotonic()
        deadline = started + self.startup_timeout
        self.home.mkdir(parents=True, exist_ok=True)
        self.scheduler_file.unlink(missing_ok=True)  # a stale one would name a dead scheduler
        env = self.environment()
        try:
            self.scheduler = ManagedProcess(
                f"dask scheduler on {HOST}",
                self.scheduler_command(),
                env=env,
                cwd=self.home,
                log_path=self.scheduler_log,
                detached=self.detached,
            ).start()
            self._wait_scheduler(deadline)
            worker_env = env
            if self.worker_env is not None:
                worker_env = dict(self.worker_env)
                worker_env.setdefault(PRE_SPAWN_ENVIRON_ENV, env[PRE_SPAWN_ENVIRON_ENV])
            self.worker_process = ManagedProcess(
                f"dask worker x{self.workers} for {self.address}",
                [*self.worker_prefix, *self.worker_command()],
                env=worker_env,
                cwd=self.worker_home or self.home,
                log_path=self.workers_log,
                detached=self.detached,
            ).start()
            self._wait_workers(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self.stop_seconds = None
        return self

    def _check_alive(self, process: ManagedProcess | None, log: Path) -> None:
        if process is None or process.running():
            return
        tail = process.log_tail()
        error = DaskProcessExitedError
        if "Address already in use" in tail:
            error = DaskPortTakenError
        raise error(
            f"{process.name} exited with status {process.returncode()} while the cluster was "
            f"starting; the end of {log}:\n{tail}"
        )

    def _timeout(self, what: str, process: ManagedProcess, log: Path) -> DaskStartTimeoutError:
        return DaskStartTimeoutError(
            f"{what} within {self.startup_timeout:.0f} s; the end of {log}:\n{process.log_tail()}"
        )

    def _wait_scheduler(self, deadline: float) -> None:
        """Wait for the scheduler file, which the scheduler writes once it listens: it gives
        the ports it took (port 0 means any free one) without parsing its log."""
        assert self.scheduler is not None
        while True:
            self._check_alive(self.scheduler, self.scheduler_log)
            with contextlib.suppress(OSError, ValueError, KeyError):  # absent or half written
                info = json.loads(self.scheduler_file.read_text(encoding="utf-8"))
                address = info["address"]
                self.scheduler_port = int(address.rsplit(":", 1)[1])
                dashboard = info.get("services", {}).get("dashboard")
                if self.dashboard_port is not None and dashboard != self.dashboard_port:
                    # Dask moves a taken dashboard port elsewhere instead of failing.
                    raise DaskPortTakenError(
                        f"the Dask dashboard could not listen on {HOST}:{self.dashboard_port} "
                        f"(it took {dashboard} instead); choose another port"
                    )
                self.dashboard_port = dashboard
                return
            if time.monotonic() > deadline:
                raise self._timeout(
                    "the Dask scheduler did not write its scheduler file",
                    self.scheduler,
                    self.scheduler_log,
                )
            time.sleep(0.1)

    def _wait_workers(self, deadline: float) -> None:
        """Ask the scheduler (through a Client) how many workers it has, until all N are
        there, while checking both processes are still alive."""
        from distributed import Client

        assert self.scheduler is not None and self.worker_process is not None
        timeout = max(1.0, deadline - time.monotonic())
        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            while True:
                self._check_alive(self.scheduler, self.scheduler_log)
                self._check_alive(self.worker_process, self.workers_log)
                # nthreads() lists every worker (scheduler_info() may list only the first 5).
                if len(client.nthreads()) >= self.workers:
                    return
                if time.monotonic() > deadline:
                    raise self._timeout(
                        f"the Dask scheduler did not count {self.workers} workers "
                        f"(it has {len(client.nthreads())})",
                        self.worker_process,
                        self.workers_log,
                    )
                time.sleep(0.2)

    # -- state --

    def running(self) -> bool:
        """Whether both the scheduler and the worker process are alive."""
        return all(p is not None and p.running() for p in (self.scheduler, self.worker_process))

    def pids(self) -> list[int]:
        """Every live PID of the cluster: the two session leaders and the processes under
        them (nannies' worker processes, multiprocessing's resource tracker)."""
        pids: set[int] = set()
        for process in (self.scheduler, self.worker_process):
            if process is not None and process.pid is not None and process.running():
                pids.update(_process_group_members(process.pid))
                pids.add(process.pid)
        return sorted(pids)

    def record(self) -> dict:
        """What another process needs to stop a detached cluster: address, dashboard, each
        part's PID with its start time (PID reuse cannot fake both)."""
        parts = {}
        for role, process in (("workers", self.worker_process), ("scheduler", self.scheduler)):
            if process is not None and process.pid is not None:
                parts[role] = {"pid": process.pid, "start_ticks": start_ticks(process.pid)}
        return {"address": self.address, "dashboard_url": self.dashboard_url, **parts}

    # -- stop --

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers first (so the scheduler does not reschedule their tasks in vain),
        then the scheduler, each by its process group; parts already gone are fine."""
        began = time.monotonic()
        for process in (self.worker_process, self.scheduler):
            if process is not None:
                process.stop(timeout)
        self.stop_seconds = time.monotonic() - began

    def __enter__(self) -> DaskCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_recorded_cluster(record: Mapping, timeout: float = 10.0) -> bool:
    """Stop a cluster from its `record()` (workers, then scheduler), from any process. A PID
    that names another process now (reused) is left alone. Returns whether anything ran."""
    ran = False
    for role in ("workers", "scheduler"):
        part = record.get(role)
        if part:
            ran |= stop_recorded_group(
                int(part["pid"]), part.get("start_ticks"), "dask", timeout=timeout
            )
    return ran
