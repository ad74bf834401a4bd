"""The Label Studio server baldflow starts for a workspace: its own environment, 127.0.0.1 only,
a token that works, credentials kept private, stopped by PID (baldflow.stack.label_studio)."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import stat
from pathlib import Path

import pytest
import requests

from baldflow.cli import main
from baldflow.stack import label_studio as studio
from baldflow.stack.backup import copy_tree
from baldflow.stack.process import is_recorded_process


def test_the_token_works_and_strangers_are_refused(label_studio_server):
    server = label_studio_server
    me = requests.get(
        f"{server.url}/api/current-user/whoami",
        headers={"Authorization": f"Token {server.token}"}, timeout=30,
    )  # fmt: skip
    assert me.status_code == 200 and me.json()["email"] == server.username
    assert requests.get(f"{server.url}/api/projects", timeout=30).status_code in (401, 403)


def test_it_listens_on_loopback_only(label_studio_server):
    with open("/proc/net/tcp") as handle:
        rows = [line.split() for line in handle.read().splitlines()[1:]]
    port = f"{label_studio_server.port:04X}"
    listening = [r[1] for r in rows if r[3] == "0A" and r[1].endswith(":" + port)]
    assert listening == ["0100007F:" + port]  # 127.0.0.1, not 0.0.0.0


def test_credentials_are_private_and_not_in_the_log(label_studio_server):
    path = label_studio_server.home / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    log = label_studio_server.log_path.read_text(errors="replace")
    assert label_studio_server.token not in log
    assert label_studio_server.password not in log


def test_a_taken_port_is_a_clear_error(tmp_path, label_studio_server):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(studio.LabelStudioError, match=f"port {taken} .* is taken"):
            studio.LabelStudioServer(tmp_path / "ls", port=taken).start()


def test_no_server_for_a_folder_says_how_to_start_one(tmp_path):
    with pytest.raises(studio.LabelStudioError, match="baldflow label-studio up"):
        studio.connection(tmp_path / "label-studio")
    ok, line = studio.label_studio_status(tmp_path / "label-studio")
    assert not ok and "no Label Studio is running" in line


def test_labeling_is_handed_the_workspace_server_and_says_how_to_start_one(tmp_path):
    """labeling.label_studio never locates a server: it is handed the workspace's own, and
    turns "none runs" into its own error, the one preflight and the CLI know."""
    from functools import partial

    from baldflow.config import LabelStudioSettings
    from baldflow.labeling.label_studio import LabelStudioError, connect

    with pytest.raises(LabelStudioError, match="baldflow label-studio up") as raised:
        connect(LabelStudioSettings(), partial(studio.workspace_connection, tmp_path))
    assert not isinstance(raised.value, studio.LabelStudioError)


def test_a_run_without_its_workspace_server_fails_preflight_with_how_to_start_one(tmp_path):
    """The application layer hands preflight the workspace's own server (preflight, like
    labeling, never locates one)."""
    from baldflow.app import preflight
    from baldflow.config import validate
    from baldflow.preflight import PreflightError

    config = validate({"oracle": {"kind": "label-studio"}})
    with pytest.raises(PreflightError, match="no Label Studio is running .*label-studio up"):
        preflight(config, tmp_path)


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def seeded_home(tmp_path, server) -> Path:
    """A server folder that starts from a copy of the session server's database and
    credentials: its `up` costs a restart (seconds), not a first start's migrations (the
    session server's own start covers those)."""
    home = tmp_path / "label-studio"
    source = server.home / "data"
    # SQLite's backup API: a consistent copy while the session server may be writing.
    copy_tree(source, home / "data", live_sqlite=True)
    shutil.copy2(server.home / "credentials.json", home / "credentials.json")
    return home


def test_up_status_down_through_the_cli(tmp_path, label_studio_server):
    """One detached server: up starts it (and keeps it out of git), a second up finds it,
    status sees it, down stops it by PID (twice is fine), and a restart keeps the data."""
    home = seeded_home(tmp_path, label_studio_server)
    try:
        code, out = run_cli("label-studio", "up", "--dir", str(home))
        assert code == 0, out
        assert "labelers sign up with: http://127.0.0.1:" in out
        url, token, document_root = studio.connection(home)
        assert document_root == home / "files"
        # A campaign with oracle.label_studio.url null finds this server by its workspace.
        from functools import partial

        from baldflow.config import LabelStudioSettings
        from baldflow.labeling.label_studio import LabelStudioClient, connect

        found = connect(LabelStudioSettings(), partial(studio.workspace_connection, tmp_path))
        assert (found.url, found.token, found.document_root) == (url, token, document_root)
        assert LabelStudioClient(found).whoami()["email"] == studio.ADMIN
        headers = {"Authorization": f"Token {token}"}
        made = requests.post(
            f"{url}/api/projects", json={"title": "kept"}, headers=headers, timeout=30
        )
        assert made.status_code == 201
        state = studio._state(home)
        code, out = run_cli("label-studio", "up", "--dir", str(home))
        assert code == 0 and "already up" in out
        assert studio._state(home)["pid"] == state["pid"]
        assert run_cli("label-studio", "status", "--dir", str(home))[0] == 0
        code, out = run_cli("label-studio", "down", "--dir", str(home))
        assert code == 0 and "stopped" in out
        assert not is_recorded_process(state["pid"], state["start_ticks"], studio.COMMAND_MARK)
        assert "was not running" in run_cli("label-studio", "down", "--dir", str(home))[1]
        assert run_cli("label-studio", "status", "--dir", str(home))[0] == 1
        # A restart (same port when free) keeps the projects.
        assert run_cli("label-studio", "up", "--dir", str(home))[0] == 0
        url, token, _ = studio.connection(home)
        titles = requests.get(
            f"{url}/api/projects", headers={"Authorization": f"Token {token}"}, timeout=30
        ).json()["results"]
        assert "kept" in [p["title"] for p in titles]
    finally:
        studio.label_studio_down(home)


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    found.append(int(entry.name))
    return found


def test_an_up_that_does_not_answer_in_time_stops_what_it_started(tmp_path):
    """The PID is recorded before the wait (a killed `up` leaves a server `down` can stop);
    a timeout stops the server and says so, with the end of its log."""
    home = tmp_path / "slow"
    with pytest.raises(studio.LabelStudioError, match="did not answer .* within 1 s"):
        studio.label_studio_up(home, startup_timeout=1.0)
    assert "pid" not in studio._state(home)
    assert _processes_naming(str(home / "data")) == []
