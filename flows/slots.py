"""One round at a time per workspace across clones, through a Prefect global concurrency limit.

Clones of a shared workspace (team mode: a git remote) that report to the same Prefect server
take the limit `baldflow-workspace-<id>` (one slot) around each round. A second operator's
round then waits (a campaign run) or is skipped (a scheduled cycle) instead of computing a
round that would lose its claim at the push. The push stays the real guarantee: clones on
different Prefect servers, or none shared, still never both commit a round.

Every object here is shared by clones that may start at the same moment: whichever of them
creates the limit or the holder variable first, "already exists" means use it. The slot is
taken with the client's own calls (one request per try, 423 while held) rather than
`prefect.concurrency`, whose timeouts log an ERROR for what is an ordinary busy workspace;
who holds it is in the Prefect variable `baldflow-workspace-<id>-holder`, since the server
does not say who holds a lease.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from baldflow.rounds import CampaignRun
from baldflow.stack.prefect_server import PRIVATE_API_ENV, configured_api_url
from baldflow.workspace import WorkspaceLockedError

# A killed holder's slot comes back after its lease runs out; the holder renews it meanwhile,
# often enough that one slow answer from the server does not lose it.
LEASE_SECONDS = 60.0
RENEW_SECONDS = LEASE_SECONDS / 4
# Bounds on the pause between two tries while another clone holds the slot (the server
# suggests one in Retry-After, from how long rounds have held it so far).
POLL_MIN_SECONDS, POLL_MAX_SECONDS = 0.5, 5.0
HTTP_LOCKED = 423


def limit_name(workspace_id: str) -> str:
    return f"baldflow-workspace-{workspace_id}"


def holder_variable(workspace_id: str) -> str:
    return f"{limit_name(workspace_id)}-holder"


def shared_prefect_api() -> str | None:
    """The Prefect API a team shares: a configured one, not a temporary server of ours."""
    url = configured_api_url()
    if not url or url == os.environ.get(PRIVATE_API_ENV):
        return None
    return url


def slot_holder(c: CampaignRun) -> str:
    """How a campaign run is named to a clone that waits for it."""
    who = c.tracker.operator or "another operator"
    return (
        f"{who} (clone {c.tracker.clone_id or 'unknown'}, campaign {c.name}, "
        f"flow run {c.flow_run_id or 'unknown'})"
    )


def ensure_limit(client: Any, name: str) -> None:
    """Create the one-slot limit, or use the one another clone created (maybe this instant:
    reading first and creating after, as Prefect's upsert does, loses that race with 409)."""
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists

    try:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        return
    except ObjectAlreadyExists:
        pass
    if client.read_global_concurrency_limit_by_name(name).limit != 1:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1))


def _set_variable(client: Any, name: str, value: str) -> None:
    """Update the shared variable, or create it; a 409 from a clone that created it first
    between the two means update it after all."""
    import httpx
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    for _ in range(2):
        try:
            client.update_variable(VariableUpdate(name=name, value=value))
            return
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
        try:
            client.create_variable(VariableCreate(name=name, value=value))
            return
        except ObjectAlreadyExists:
            continue


def current_holder(client: Any, workspace_id: str) -> str:
    """Who holds the workspace's slot, as its holder announced it (best effort)."""
    try:
        found = client.read_variable_by_name(holder_variable(workspace_id))
    except Exception:  # noqa: BLE001 (only for the message; the slot itself is what counts)
        found = None
    value = found.value if found is not None else None
    return str(value) if value else "another clone (it has not said who yet)"


def _try_acquire(client: Any, name: str) -> tuple[Any, float]:
    """(lease id, 0) when the slot was free, else (None, seconds the server suggests)."""
    import httpx

    try:
        response = client.increment_concurrency_slots_with_lease(
            [name], 1, "concurrency", LEASE_SECONDS
        )
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != HTTP_LOCKED:
            raise
        try:
            suggested = float(exc.response.headers.get("Retry-After", POLL_MIN_SECONDS))
        except ValueError:
            suggested = POLL_MIN_SECONDS
        return None, min(max(suggested, POLL_MIN_SECONDS), POLL_MAX_SECONDS)
    return response.json()["lease_id"], 0.0


class _Renewal:
    """Renews the lease from a thread of its own (with a client of its own) until stopped."""

    def __init__(self, lease_id: Any, logger: Any):
        self.lease_id = lease_id
        self.logger = logger
        self._stop = threading.Event()
        # The caller's context: Prefect's settings (which API) live in a context variable, and
        # a thread would otherwise start without them.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="baldflow-slot-lease", daemon=True
        )

    def __enter__(self) -> _Renewal:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while not self._stop.wait(RENEW_SECONDS):
                try:
                    client.renew_concurrency_lease(self.lease_id, LEASE_SECONDS)
                except Exception as error:  # noqa: BLE001 (the push still decides the round)
                    if self.logger is not None:
                        self.logger.warning(
                            "the workspace's round slot could not be renewed (%s); another "
                            "clone may start a round, and the push decides which one counts",
                            error,
                        )
                    return


@contextlib.contextmanager
def workspace_slot(
    workspace_id: str, *, shared: bool, wait: bool, logger=None, holder: str = ""
) -> Iterator[str | None]:
    """Hold the workspace's slot while a round runs; yields the limit's name (None: no limit).

    `shared`: the workspace has a git remote. `wait`: wait for the slot (a campaign run),
    saying once at INFO who holds it; else raise WorkspaceLockedError at once, naming the
    holder, when another clone holds it (a cycle is skipped). `holder`: how this run is
    named to the clones that wait for it (slot_holder).
    """
    if not shared or shared_prefect_api() is None:
        yield None
        return
    from prefect.client.orchestration import get_client

    name = limit_name(workspace_id)
    with get_client(sync_client=True) as client:
        ensure_limit(client, name)
        lease_id, pause = _try_acquire(client, name)
        if lease_id is None:
            who = current_holder(client, workspace_id)
            if not wait:
                raise WorkspaceLockedError(
                    f"another clone of workspace {workspace_id} is running a round (Prefect "
                    f"concurrency limit {name}, held by {who})"
                )
            if logger is not None:
                logger.info(
                    "waiting for the round another clone is running (Prefect concurrency "
                    "limit %s, held by %s)",
                    name,
                    who,
                )
        while lease_id is None:
            time.sleep(pause)
            lease_id, pause = _try_acquire(client, name)
        try:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            announced = f"{holder or 'a clone'} since {since}"
            with contextlib.suppress(Exception):  # the name is for messages only
                _set_variable(client, holder_variable(workspace_id), announced)
            with _Renewal(lease_id, logger):
                yield name
        finally:
            with contextlib.suppress(Exception):
                _set_variable(client, holder_variable(workspace_id), "")
            try:
                client.release_concurrency_slots_with_lease(lease_id)
            except Exception as error:  # noqa: BLE001 (the lease runs out by itself)
                if logger is not None:
                    logger.info(
                        "the round slot is released when its lease runs out (%.0f s): %s",
                        LEASE_SECONDS,
                        error,
                    )
