"""`schedule` (once `serve`), `deploy` and `server`: cycles on a schedule, in this process or
by a shared Prefect server's workers, and the persistent Prefect server they need."""

from __future__ import annotations

import argparse
import os

from baldflow import app
from baldflow.cli.common import EXIT_ERROR, HIDDEN_ALIASES, config_args, run_request, workspace_arg
from baldflow.cli.output import quoted

SET_EXAMPLE = "campaign.rounds=30"


# ---------------------------------------------------------------------------- parsers
def _when_args(parser: argparse.ArgumentParser) -> None:
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="cron schedule, e.g. '0 * * * *' (hourly)")
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS")


def add_schedule(sub) -> None:
    # `schedule` was `serve`, one letter from `server`: the old name stays for a release as a
    # hidden alias (a parser without `help` is not listed in `baldflow --help`).
    for name in ("schedule", *HIDDEN_ALIASES):
        described = (
            {"help": "run a cycle on a schedule, in this process (needs `baldflow server`)"}
            if name not in HIDDEN_ALIASES
            else {}
        )
        p = sub.add_parser(
            name,
            description="Run a cycle of the campaign on a schedule through a persistent "
            "Prefect server (start one with `baldflow server` and export PREFECT_API_URL). "
            "Keeps running; Ctrl-C stops it and pauses the schedule.",
            **described,
        )
        workspace_arg(p)
        _when_args(p)
        config_args(p, SET_EXAMPLE)
        p.add_argument(
            "--campaign",
            metavar="NAME",
            help="cycle NAME with its recorded parameters (default: the campaign that "
            "campaign.name names)",
        )


def add_deploy(sub) -> None:
    p = sub.add_parser(
        "deploy",
        help="register the cycle on a shared Prefect server's work pool, for workers to run",
        description="Create or update a deployment of the cycle (one round per run) on the "
        "Prefect server of PREFECT_API_URL, in work pool POOL (created as a process pool if "
        "missing), with a schedule. Unlike `schedule`, nothing keeps running here: `prefect "
        "worker start --pool POOL`, on any machine with baldflow installed and the workspace "
        "at the same path, runs the cycles. One cycle runs at a time: a run triggered while "
        "another runs is cancelled.",
    )
    workspace_arg(p)
    p.add_argument("--campaign", required=True, metavar="NAME", help="the campaign to cycle")
    p.add_argument("--pool", required=True, metavar="POOL", help="work pool of the workers")
    _when_args(p)
    config_args(p, SET_EXAMPLE)
    p.add_argument(
        "--work-queue", metavar="QUEUE", help="queue of the pool (default: the pool's default)"
    )
    p.add_argument("--name", metavar="NAME", help="deployment name (default: <campaign>-cycle)")


def add_server(sub) -> None:
    p = sub.add_parser(
        "server",
        help="start a persistent Prefect server on 127.0.0.1",
        description="Start `prefect server start` on 127.0.0.1 with its database in the "
        "workspace's .prefect/, so its UI also lists the runs of temporary servers, and "
        "telemetry off. `baldflow schedule` needs it. Keeps running until Ctrl-C.",
    )
    workspace_arg(p)
    p.add_argument("--port", type=int, default=4200, help="port to listen on")


# ---------------------------------------------------------------------------- handlers
def cmd_schedule(args: argparse.Namespace) -> int:
    app.schedule_cycle(
        run_request(args), cron=args.cron, interval=args.interval, command=args.command
    )
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    deployed = app.deploy_cycle(
        run_request(args),
        pool=args.pool,
        cron=args.cron,
        interval=args.interval,
        work_queue=args.work_queue,
        name=args.name,
    )
    deployment, api_url = deployed.deployment, deployed.api_url
    when = f"cron {args.cron!r}" if args.cron else f"every {args.interval:g} s"
    created = ", created now" if deployment.pool_created else ""
    pool = f"{deployment.pool} ({deployment.pool_type}{created})"
    print(f"deployment {deployment.full_name} on {api_url}")
    print(f"  one round of campaign {args.campaign} in {deployed.root} per run, {when}")
    print(f"  work pool: {pool}; one run at a time (a run due while one runs is cancelled)")
    print("run the cycles with a worker, where baldflow is installed and the workspace is at")
    print(f"the same path (PREFECT_API_URL={api_url} in its environment):")
    print(f"  {deployment.worker_command()}")
    print(f"a cycle now: prefect deployment run {quoted(deployment.full_name)}")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    import time

    from baldflow.stack.interrupts import active
    from baldflow.stack.prefect_server import PrefectServer
    from baldflow.workspace import offline_environment

    ws_root = app.workspace_root(args.workspace)
    ws_root.mkdir(parents=True, exist_ok=True)
    # The workspace's Prefect home: the UI then also shows runs of the temporary servers.
    offline_environment(ws_root)
    # Its output stays on this terminal, as `prefect server start`'s would. It runs in its own
    # session: Ctrl-C and SIGTERM reach baldflow, which stops it by PID (PrefectServer also
    # points its UI at this port: Prefect's default is 4200 whatever --port says).
    server = PrefectServer(
        os.environ["PREFECT_HOME"], port=args.port, startup_timeout=300, log_to_file=False
    )
    url = server.url
    handler = active()
    if handler is not None:
        handler.describe = lambda: f"Prefect server on {url} stopped"
    try:
        server.start()
        print(f"Prefect server for {ws_root} on {url} (UI: {url}, API: {url}/api)")
        print(f"in another shell: export PREFECT_API_URL={url}/api", flush=True)
        while server.running():
            time.sleep(0.5)
    finally:
        status = server.stop()
    print(f"baldflow: the Prefect server on {url} exited by itself (status {status})")
    return EXIT_ERROR


PARSERS = {"schedule": add_schedule, "deploy": add_deploy, "server": add_server}
COMMANDS = {
    "schedule": cmd_schedule,
    "serve": cmd_schedule,  # the old name of `schedule`, hidden (HIDDEN_ALIASES)
    "deploy": cmd_deploy,
    "server": cmd_server,
}
