"""A small HTTP client for the parts of Label Studio's API that a labeling round needs.

Why plain HTTP: Label Studio runs from its own virtual environment (its pins conflict with
Prefect's), and everything a round needs is a handful of REST calls; `label-studio-sdk` would
add about 240 MB for nothing more. Written against Label Studio 1.23.2.

Where the server is (`connect`): `oracle.label_studio.url` names one a team runs, with its
API token in the environment (BALDFLOW_LABEL_STUDIO_TOKEN, never in params.yaml); left empty,
BALDFLOW_LABEL_STUDIO_URL names it (a team stack's member env file sets both, the token being
the member's own, so every clone's campaign finds the team's server without a params edit);
with neither, it is the workspace's own server that `baldflow label-studio up` started in
<workspace>/label-studio, whose token lives in that folder's credentials file. Labeling never
starts or locates a server: the layers that run them (the application layer, the CLI, the
tasks; baldflow.stack.label_studio.workspace_connection) hand `connect` the workspace's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baldflow.labeling.oracles import OracleError

TOKEN_ENV = "BALDFLOW_LABEL_STUDIO_TOKEN"
URL_ENV = "BALDFLOW_LABEL_STUDIO_URL"
# Pages of the list endpoints; a batch is a few hundred tasks at most.
PAGE_SIZE = 500


class LabelStudioError(OracleError):
    """Label Studio could not be reached, refused the token, or answered unexpectedly."""


@dataclass(frozen=True)
class Connection:
    """Where Label Studio answers and how this side hands it images.

    `document_root`: the folder that the server serves local files from
    (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT), as this machine sees it; None when it cannot
    see one (then tasks carry text only).
    """

    url: str
    token: str
    document_root: Path | None

    def __repr__(self) -> str:  # never print the token
        return f"Connection(url={self.url!r}, document_root={self.document_root!r})"


# (url, API token, document root) of the workspace's own server, from whoever runs it: called
# only when `oracle.label_studio.url` names no server, and raises LookupError when none runs
# (baldflow.stack.label_studio.workspace_connection is one).
WorkspaceServer = Callable[[], tuple[str, str, Path]]


def connect(settings: Any, workspace_server: WorkspaceServer) -> Connection:
    """The connection that `oracle.label_studio` describes (see the module docstring)."""
    url, named_by = settings.url, "oracle.label_studio.url"
    if not url and os.environ.get(URL_ENV, "").strip():
        url, named_by = os.environ[URL_ENV].strip(), URL_ENV
        if not url.startswith(("http://", "https://")):
            raise LabelStudioError(
                f"{URL_ENV} must be an http:// or https:// URL, got {url[:80]!r}"
            )
    if url:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise LabelStudioError(
                f"{named_by} is {url}, but {TOKEN_ENV} is not set: put the API token of your "
                "Label Studio account in that variable (your member env file from `baldflow "
                "stack user add` has it; or Account & Settings > Access Token), never in "
                "params.yaml"
            )
        root = Path(settings.document_root).expanduser() if settings.document_root else None
        return Connection(url.rstrip("/"), token, root)
    try:
        url, token, document_root = workspace_server()
    except LookupError as exc:
        raise LabelStudioError(str(exc)) from None
    if settings.document_root:
        document_root = Path(settings.document_root).expanduser()
    return Connection(url.rstrip("/"), token, Path(document_root))


def project_address(url: str, project_id: int) -> str:
    """Where people open a project's tasks in a browser."""
    return f"{url.rstrip('/')}/projects/{int(project_id)}/data"


def client_for(settings: Any, workspace_server: WorkspaceServer) -> LabelStudioClient:
    """A client for the server that `oracle.label_studio` names (see connect)."""
    return LabelStudioClient(connect(settings, workspace_server))


class LabelStudioClient:
    """The calls a round makes, each failing with a LabelStudioError that says what to do."""

    def __init__(self, connection: Connection, timeout: float = 60.0):
        import requests

        self.connection = connection
        self.url = connection.url
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Token {connection.token}"

    # ------------------------------------------------------------------ transport
    def _call(
        self, method: str, path: str, *, json: Any = None, params: dict | None = None,
        missing_ok: bool = False,
    ) -> Any:  # fmt: skip
        import requests

        try:
            response = self._session.request(
                method, self.url + path, json=json, params=params, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise LabelStudioError(
                f"Label Studio at {self.url} does not answer ({type(exc).__name__}); is it "
                "running? (`baldflow label-studio status`)"
            ) from None
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the API token (HTTP "
                f"{response.status_code} on {method} {path}): check {TOKEN_ENV} or the "
                "server's credentials file"
            )
        if response.status_code >= 400:
            detail = " ".join(response.text.split())[:300]
            raise LabelStudioError(
                f"Label Studio at {self.url} answered HTTP {response.status_code} to "
                f"{method} {path}: {detail}"
            )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(
                f"Label Studio at {self.url} answered {method} {path} with something that is "
                "not JSON: is that URL a Label Studio server?"
            ) from None

    # ------------------------------------------------------------------ calls
    def whoami(self) -> dict[str, Any]:
        return self._call("GET", "/api/current-user/whoami")

    def projects(self) -> list[dict[str, Any]]:
        found, page = [], 1
        while True:
            body = self._call("GET", "/api/projects", params={"page": page, "page_size": 100})
            if isinstance(body, list):  # older servers: no pagination
                return body
            found.extend(body.get("results", []))
            if not body.get("next"):
                return found
            page += 1

    def project(self, project_id: int) -> dict[str, Any] | None:
        """The project, or None when it does not exist (deleted in Label Studio)."""
        return self._call("GET", f"/api/projects/{int(project_id)}", missing_ok=True)

    def create_project(self, title: str, description: str, label_config: str) -> dict[str, Any]:
        body = {
            "title": title,
            "description": description,
            "label_config": label_config,
            # Labelers see this round's model guess pre-filled and correct it.
            "show_collab_predictions": True,
        }
        return self._call("POST", "/api/projects", json=body)

    def delete_project(self, project_id: int) -> None:
        self._call("DELETE", f"/api/projects/{int(project_id)}", missing_ok=True)

    def views(self, project_id: int) -> list[dict[str, Any]]:
        """The project's Data Manager tabs (saved filters), oldest first."""
        body = self._call("GET", "/api/dm/views/", params={"project": int(project_id)})
        found = [v for v in body or [] if int(v.get("project") or 0) == int(project_id)]
        return sorted(found, key=lambda v: int(v["id"]))

    def create_view(self, project_id: int, title: str, filters: dict[str, Any]) -> dict[str, Any]:
        body = {"project": int(project_id), "data": {"title": title, "filters": filters}}
        return self._call("POST", "/api/dm/views/", json=body)

    def update_view(
        self, view_id: int, project_id: int, title: str, filters: dict[str, Any]
    ) -> None:
        body = {"project": int(project_id), "data": {"title": title, "filters": filters}}
        self._call("PATCH", f"/api/dm/views/{int(view_id)}/", json=body)

    def delete_view(self, view_id: int) -> None:
        self._call("DELETE", f"/api/dm/views/{int(view_id)}/", missing_ok=True)

    def set_model_version(self, project_id: int, model_version: str) -> None:
        """Which predictions pre-fill the labeling form (the newest round's model)."""
        self._call(
            "PATCH", f"/api/projects/{int(project_id)}", json={"model_version": model_version}
        )

    def local_storages(self, project_id: int) -> list[dict[str, Any]]:
        return self._call("GET", "/api/storages/localfiles", params={"project": int(project_id)})

    def add_local_storage(self, project_id: int, path: Path, title: str) -> dict[str, Any]:
        """Let the project serve files under `path` (Label Studio serves a local file only
        to projects with a local storage that covers it)."""
        body = {
            "project": int(project_id),
            "path": str(path),
            "title": title,
            "use_blob_urls": False,
            "regex_filter": "",
        }
        return self._call("POST", "/api/storages/localfiles", json=body)

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("POST", f"/api/projects/{int(project_id)}/import", json=tasks)

    def delete_task(self, task_id: int) -> None:
        self._call("DELETE", f"/api/tasks/{int(task_id)}", missing_ok=True)

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its data and annotations (the JSON export of all
        tasks, annotated or not)."""
        body = self._call(
            "GET",
            f"/api/projects/{int(project_id)}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )
        if not isinstance(body, list):
            raise LabelStudioError(f"Label Studio at {self.url}: the export is not a task list")
        return body

    def user_emails(self) -> dict[int, str]:
        """Numeric user id -> email (exports name annotators by id only)."""
        users = self._call("GET", "/api/users/")
        if isinstance(users, dict):
            users = users.get("results", [])
        return {int(u["id"]): str(u.get("email") or u.get("username") or u["id"]) for u in users}

    def project_address(self, project_id: int) -> str:
        return project_address(self.url, project_id)

    def invite_url(self) -> str:
        """The sign-up link that gives a person an account in this organisation."""
        body = self._call("GET", "/api/invite")
        link = str(body.get("invite_url", ""))
        return link if "://" in link else self.url + link
