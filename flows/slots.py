"""One round at a time per workspace across clones, through a Prefect global concurrency limit.

Clones of a shared workspace (team mode: a git remote) that report to the same Prefect server
take the limit `baldflow-workspace-<id>` (one slot) around each round. A second operator's
round then waits (a campaign run) or is skipped (a scheduled cycle) instead of computing a
round that would lose its claim at the push. The push stays the real guarantee: clones on
different Prefect servers, or none shared, still never both commit a round.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from baldflow.stack.prefect_server import PRIVATE_API_ENV, configured_api_url
from baldflow.workspace import WorkspaceLockedError

# A killed holder's slot comes back after its lease runs out; the holder renews it meanwhile.
LEASE_SECONDS = 60.0


def limit_name(workspace_id: str) -> str:
    return f"baldflow-workspace-{workspace_id}"


def shared_prefect_api() -> str | None:
    """The Prefect API a team shares: a configured one, not a temporary server of ours."""
    url = configured_api_url()
    if not url or url == os.environ.get(PRIVATE_API_ENV):
        return None
    return url


@contextlib.contextmanager
def workspace_slot(
    workspace_id: str, *, shared: bool, wait: bool, logger=None
) -> Iterator[str | None]:
    """Hold the workspace's slot while a round runs; yields the limit's name (None: no limit).

    `shared`: the workspace has a git remote. `wait`: wait for the slot (a campaign run);
    else raise WorkspaceLockedError at once when another clone holds it (a cycle is skipped).
    """
    if not shared or shared_prefect_api() is None:
        yield None
        return
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    name = limit_name(workspace_id)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    held = contextlib.ExitStack()
    try:
        held.enter_context(
            concurrency(name, occupy=1, timeout_seconds=1, lease_duration=LEASE_SECONDS)
        )
    except TimeoutError:
        if not wait:
            raise WorkspaceLockedError(
                f"another clone of workspace {workspace_id} is running a round (Prefect "
                f"concurrency limit {name})"
            ) from None
        if logger is not None:
            logger.info("waiting for the round another clone is running (limit %s)", name)
        held.enter_context(concurrency(name, occupy=1, lease_duration=LEASE_SECONDS))
    with held:
        yield name
