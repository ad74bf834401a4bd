"""DVC remotes and MLflow artifacts on a real S3-compatible store: OpenStack Swift on loopback.

Swift runs from its own virtual environment, built into the cache if it is not there yet
(baldflow.stack.swift.default_venv(): $BALDFLOW_SWIFT_VENV or ~/.cache/baldflow/swift-venv;
80 MB, 6-20 s from this project's package registry; CI prepares it with
`python -m baldflow.stack.swift venv`). One store serves the session (conftest's
`swift_store`, 3-8 s to start); the whole file takes 35-70 s on 2 cores. The proof steps
are shared with benchmarks/s3_proof.py,
which times them.
"""

from __future__ import annotations

import importlib.util
import socket
import stat
from pathlib import Path

import pytest

from baldflow.stack.process import live_processes
from baldflow.stack.swift import SwiftError, SwiftS3, signed_request

_PROOF = Path(__file__).resolve().parent.parent / "benchmarks" / "s3_proof.py"
_spec = importlib.util.spec_from_file_location("baldflow_s3_proof", _PROOF)
proof = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(proof)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def store(swift_store):
    """The session's Swift store (tests/conftest.py), shared with test_object_store_pools.py."""
    return swift_store


def test_store_answers_s3_only_to_its_own_signed_requests(store):
    for path in (store.credentials_path, store.etc / "proxy-server.conf"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path} holds the secret but has mode {oct(mode)}"
    assert store.access_key == "baldflow:baldflow"
    status, body = signed_request(store.endpoint_url, store.access_key, store.secret_key, "GET")
    assert status == 200 and b"ListAllMyBucketsResult" in body
    status, body = signed_request(store.endpoint_url, store.access_key, "wrong-secret", "GET")
    assert status == 403 and b"SignatureDoesNotMatch" in body
    # Creating a bucket twice is no error (both proofs create theirs).
    store.create_bucket("twice")
    store.create_bucket("twice")


def test_taken_port_is_refused_with_a_clear_error(store, tmp_path):
    other = SwiftS3(tmp_path / "other", port=store.port, venv=store.venv)
    with pytest.raises(SwiftError, match=f"port {store.port} .* is taken"):
        other.start()
    assert not other.processes


def test_dvc_push_pull_fresh_clone_and_restart(store, tmp_path):
    result = proof.prove_dvc(store, tmp_path / "dvc")
    md5 = result["labeled_md5"]
    assert f"{result['remote'].split('/', 3)[3]}/files/md5/{md5[:2]}/{md5[2:]}" in result["objects"]

    # The data lives on disk, not in the servers: after a restart (on the same port without
    # asking: the endpoint URL is committed in the workspace) a fresh clone pulls the same bytes.
    port, pids = store.port, [p.pid for p in store.processes.values()]
    store.stop()
    assert not any(p.pid in pids for p in live_processes())
    store.start()
    assert store.port == port
    proof.pull_fresh_clone(
        store, result["workspace"], tmp_path / "dvc" / "clone-2", md5, result["labeled_relpath"]
    )


def test_mlflow_artifacts_go_to_s3_through_the_proxy(store, tmp_path):
    server, url = proof.start_mlflow(store, tmp_path)
    try:
        result = proof.prove_mlflow_artifacts(store, url, tmp_path)
    finally:
        server.stop()
    assert result["artifact_uri"].startswith("mlflow-artifacts:/")
    sizes = sorted(result["objects"].values())
    assert sizes[-1] == proof.BIG_ARTIFACT_BYTES  # the multipart upload arrived whole
    assert not _listening(int(url.rsplit(":", 1)[1]))


def test_backend_ports_that_are_taken_get_new_rings_and_keep_the_data(tmp_path, swift_venv):
    """Backend ports live in the rings: when one is taken at the next start, the rings are
    rebuilt for new ports, and the objects are still found (same partition power, same
    device), so a busy port never costs the data."""
    swift = SwiftS3(tmp_path / "swift", venv=swift_venv)
    swift.start()
    try:
        swift.create_bucket("keep")
        client = proof.s3_client(swift)
        client.put_object(Bucket="keep", Key="a/b.txt", Body=b"still here")
        old = dict(swift.ports)
        swift.stop()
        with socket.socket() as squatter:
            # SO_REUSEADDR: the stopped server's connections may still be in TIME_WAIT.
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", old["object"]))
            squatter.listen()
            swift.start()
        assert swift.ports["object"] != old["object"]
        assert swift.ports["proxy"] == old["proxy"]
        body = proof.s3_client(swift).get_object(Bucket="keep", Key="a/b.txt")["Body"].read()
        assert body == b"still here"
    finally:
        swift.stop()
