"""Proof, with timings, that baldflow's DVC remote and MLflow artifact store work on a real
S3-compatible store: OpenStack Swift (s3api + tempauth) on 127.0.0.1, see
baldflow.stack.swift.

What it does, in a temporary directory, and prints the seconds of each step:
  1. builds Swift's virtual environment (once, into the cache; `--venv-timing` also builds two
     throwaway ones, pip's cache off and on, to measure a cold and a warm build);
  2. starts Swift and creates two buckets;
  3. DVC: a real baldflow workspace whose default remote is `s3://baldflow-dvc/...` with
     `endpointurl` committed and the credentials only in `.dvc/config.local`; round 0 is pushed
     by the workspace itself (Workspace.commit_round), round 1 by `dvc push`; the objects are
     listed in the bucket; a fresh `git clone` with the credentials only in its environment
     runs `dvc pull` and gets the labeled set with the md5 the round recorded; the secret is
     in no commit;
  4. restarts Swift and pulls into a second fresh clone (the data survived);
  5. MLflow: `mlflow server --artifacts-destination s3://baldflow-mlflow/mlflow` with the
     S3 endpoint and credentials in its environment only; a client process with no AWS
     credentials at all logs an artifact (one small, one 12 MB: a multipart upload) and
     downloads it through the server's proxy; the objects are then read from the bucket.
Every server it starts is stopped by PID on every way out (baldflow.stack.process).

    .venv/bin/python benchmarks/s3_proof.py [--venv-timing] [--keep DIR]

tests/test_s3.py runs the same steps (it imports this file's functions) with assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from baldflow.stack.process import ManagedProcess, free_port
from baldflow.stack.swift import SwiftS3, default_venv, ensure_venv, venv_ready
from baldflow.workspace.ledger import LedgerRow
from baldflow.workspace.repo import REMOTE_NAME, Workspace

DVC_BUCKET = "baldflow-dvc"
MLFLOW_BUCKET = "baldflow-mlflow"
CAMPAIGN = "s3proof"
BIG_ARTIFACT_BYTES = 12 * 1024 * 1024  # above boto3's 8 MB threshold: a multipart upload


class ProofError(AssertionError):
    """A step of the proof did not give what it must."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ProofError(message)


def _run(argv: list[str], *, cwd: Path | None = None, env: dict | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ProofError(
            f"`{' '.join(argv)}` exited {done.returncode} in {cwd}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def _dvc(*args: str, cwd: Path, env: dict | None = None) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env)


def _git(*args: str, cwd: Path) -> str:
    return _run(["git", *args], cwd=cwd)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def without_aws(env: dict[str, str] | None = None, scratch: Path | None = None) -> dict:
    """The environment minus every AWS and MLflow-S3 setting, with the shared credential files
    pointed at nothing: a process started with it cannot reach the store by itself."""
    env = dict(os.environ if env is None else env)
    for key in list(env):
        if key.startswith(("AWS_", "MLFLOW_S3_")):
            del env[key]
    nowhere = str((scratch or Path(tempfile.gettempdir())) / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = nowhere
    env["AWS_CONFIG_FILE"] = nowhere
    return env


def s3_client(store: SwiftS3):
    """A boto3 S3 client for the store: path-style addressing (the store has no per-bucket
    host names), signature version 4, the store's own credentials."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=store.endpoint_url,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def bucket_objects(store: SwiftS3, bucket: str, prefix: str = "") -> dict[str, int]:
    """Key -> size of what really sits in the bucket, read with boto3 against the endpoint."""
    found: dict[str, int] = {}
    pages = s3_client(store).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for item in page.get("Contents", []):
            found[item["Key"]] = item["Size"]
    return found


def bucket_object(store: SwiftS3, bucket: str, key: str) -> bytes:
    return s3_client(store).get_object(Bucket=bucket, Key=key)["Body"].read()


# -- DVC -------------------------------------------------------------------------------------


def _rows(round_index: int, ids: list[str]) -> list[LedgerRow]:
    return [
        LedgerRow(
            campaign=CAMPAIGN,
            round=round_index,
            sample_id=sid,
            label=i % 10,
            strategy="power-bald",
            rank=i,
            score=0.5 / (i + 1),
            first_pick_probability=0.1,
            selection_key=-1.0 - i,
            seed=7,
            acquired_at="2026-11-26T00:00:00.000Z",
            mlflow_run_id="none",
            prefect_flow_run_id="none",
            labeled_set_md5="",
            labeled_by="s3 proof",
        )
        for i, sid in enumerate(ids)
    ]


def prove_dvc(store: SwiftS3, work: Path) -> dict:
    """A workspace versions two rounds to the S3 remote; a fresh clone pulls them back."""
    store.create_bucket(DVC_BUCKET)
    prefix = f"workspaces/{work.name}"
    url = f"s3://{DVC_BUCKET}/{prefix}"
    root = work / "ws"
    Workspace.init(root, remote=url).close()
    # Where the store is belongs to the project (committed); who may write to it does not:
    # the credentials go to .dvc/config.local, which DVC keeps out of git.
    _dvc("remote", "modify", REMOTE_NAME, "endpointurl", store.endpoint_url, cwd=root)
    _dvc("remote", "modify", "--local", REMOTE_NAME, "access_key_id", store.access_key, cwd=root)
    _dvc(
        "remote", "modify", "--local", REMOTE_NAME, "secret_access_key", store.secret_key, cwd=root
    )
    _git("commit", "-q", "-m", "DVC remote on the S3 store", "--", ".dvc/config", cwd=root)

    timings: dict[str, float] = {}
    with Workspace(root) as ws:
        t0 = time.perf_counter()
        ids0 = [f"digits:{i}" for i in range(0, 400, 4)]
        first = ws.commit_round(CAMPAIGN, 0, _rows(0, ids0), summary={"round": 0}, push=True)
        timings["workspace round 0 (dvc add + push to S3)"] = time.perf_counter() - t0
        ids1 = [f"digits:{i}" for i in range(1, 400, 8)]
        second = ws.commit_round(CAMPAIGN, 1, _rows(1, ids1), summary={"round": 1}, push=False)
        labeled = ws.labeled_path(CAMPAIGN)
        md5_now = ws.labeled_md5(CAMPAIGN)
    _check(
        second.labeled_set_md5 == md5_now == _md5(labeled),
        "the labeled set's md5 on disk differs from the one the round recorded",
    )

    t0 = time.perf_counter()
    _dvc("push", cwd=root)
    timings["dvc push (round 1)"] = time.perf_counter() - t0
    stored = bucket_objects(store, DVC_BUCKET, prefix + "/")
    for md5 in (first.labeled_set_md5, second.labeled_set_md5):
        key = f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"
        _check(key in stored, f"labeled set {md5} is not in s3://{DVC_BUCKET}: {sorted(stored)}")

    # A teammate's machine: a fresh clone, credentials only in the environment.
    clone = work / "clone"
    _git("clone", "-q", str(root), str(clone), cwd=work)
    env = {**without_aws(scratch=work), **store.client_env()}
    _check(not (clone / ".dvc" / "config.local").exists(), "config.local travelled with git")
    t0 = time.perf_counter()
    _dvc("pull", cwd=clone, env=env)
    timings["dvc pull into a fresh clone"] = time.perf_counter() - t0
    pulled = clone / labeled.relative_to(root)
    _check(
        _md5(pulled) == second.labeled_set_md5,
        f"pulled {pulled} has md5 {_md5(pulled)}, round 1 recorded {second.labeled_set_md5}",
    )

    # The secret must be in no commit, no tracked file, and no clone.
    history = _git("log", "-p", "--all", cwd=root) + _git("grep", "-I", "-e", ".", "HEAD", cwd=root)
    _check(store.secret_key not in history, "the S3 secret is in the workspace's git history")
    _check(".dvc/config.local" not in _git("ls-files", cwd=root), "config.local is tracked")
    return {
        "timings": timings,
        "remote": url,
        "objects": stored,
        "labeled_md5": second.labeled_set_md5,
        "labeled_relpath": str(labeled.relative_to(root)),
        "workspace": root,
    }


def pull_fresh_clone(
    store: SwiftS3, workspace: Path, clone: Path, expected_md5: str, relpath: str
) -> float:
    """`dvc pull` into another fresh clone; the seconds it took (checks the md5)."""
    _git("clone", "-q", str(workspace), str(clone), cwd=clone.parent)
    env = {**without_aws(scratch=clone.parent), **store.client_env()}
    t0 = time.perf_counter()
    _dvc("pull", cwd=clone, env=env)
    seconds = time.perf_counter() - t0
    got = _md5(clone / relpath)
    _check(got == expected_md5, f"after the restart the pull gave md5 {got}, not {expected_md5}")
    return seconds


# -- MLflow ----------------------------------------------------------------------------------

_CLIENT = r"""
import hashlib, json, sys, tempfile
from pathlib import Path
import mlflow
from mlflow import MlflowClient

client = MlflowClient()
experiment = client.create_experiment("s3-proof")
run = client.create_run(experiment)
run_id = run.info.run_id
for name in sys.argv[1:]:
    client.log_artifact(run_id, name, artifact_path="proof")
client.set_terminated(run_id)
out = Path(tempfile.mkdtemp())
local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="proof", dst_path=out)
print(json.dumps({
    "experiment_id": experiment,
    "run_id": run_id,
    "artifact_uri": client.get_run(run_id).info.artifact_uri,
    "downloaded": {p.name: hashlib.md5(p.read_bytes()).hexdigest()
                   for p in sorted(Path(local).iterdir())},
}))
"""


def _wait_http(url: str, process: ManagedProcess, timeout: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if not process.running():
            raise ProofError(
                f"{process.name} exited with status {process.returncode()}:\n{process.log_tail(30)}"
            )
        if time.monotonic() > deadline:
            raise ProofError(
                f"{process.name} did not answer {url} in {timeout:.0f} s:\n{process.log_tail(30)}"
            )
        time.sleep(0.2)


def start_mlflow(store: SwiftS3, work: Path, timeout: float = 120.0) -> tuple[ManagedProcess, str]:
    """An MLflow tracking server whose artifacts go to the Swift bucket; its URL. Only this
    process gets the S3 endpoint and credentials."""
    store.create_bucket(MLFLOW_BUCKET)
    port = free_port()
    env = {
        **without_aws(scratch=work),
        **store.client_env(),
        "MLFLOW_S3_ENDPOINT_URL": store.endpoint_url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    argv = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{(work / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        f"s3://{MLFLOW_BUCKET}/mlflow",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    process = ManagedProcess(
        f"mlflow server on 127.0.0.1:{port}",
        argv,
        env=env,
        cwd=work,
        log_path=work / "mlflow-server.log",
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/health", process, timeout)
    except BaseException:
        process.stop()
        raise
    return process, url


def prove_mlflow_artifacts(store: SwiftS3, url: str, work: Path) -> dict:
    """A client without credentials logs and downloads artifacts through the server; the
    objects are then read from the bucket directly."""
    small = work / "labeled-summary.json"
    small.write_text(json.dumps({"campaign": CAMPAIGN, "labeled": 150}), encoding="utf-8")
    big = work / "weights.bin"
    big.write_bytes(os.urandom(BIG_ARTIFACT_BYTES))
    sent = {p.name: _md5(p) for p in (small, big)}

    env = {
        **without_aws(scratch=work),
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    t0 = time.perf_counter()
    out = _run([sys.executable, "-c", _CLIENT, str(small), str(big)], cwd=work, env=env)
    seconds = time.perf_counter() - t0
    result = json.loads(out.strip().splitlines()[-1])
    _check(
        result["artifact_uri"].startswith("mlflow-artifacts:"),
        f"the run's artifacts are not proxied: {result['artifact_uri']}",
    )
    _check(
        result["downloaded"] == sent,
        f"downloaded artifacts {result['downloaded']} differ from the logged ones {sent}",
    )
    prefix = f"mlflow/{result['experiment_id']}/{result['run_id']}/artifacts/proof/"
    stored = bucket_objects(store, MLFLOW_BUCKET, prefix)
    _check(
        set(stored) == {prefix + name for name in sent},
        f"s3://{MLFLOW_BUCKET}/{prefix} holds {sorted(stored)}, not the logged artifacts",
    )
    for name, md5 in sent.items():
        body = bucket_object(store, MLFLOW_BUCKET, prefix + name)
        _check(hashlib.md5(body).hexdigest() == md5, f"s3 object {prefix + name} differs")
    return {"seconds": seconds, "objects": stored, **result}


# -- the script ------------------------------------------------------------------------------


def _time_venv_build(parent: Path, cold: bool) -> float:
    venv = parent / ("venv-cold" if cold else "venv-warm")
    env_before = os.environ.get("PIP_NO_CACHE_DIR")
    if cold:
        os.environ["PIP_NO_CACHE_DIR"] = "1"
    try:
        t0 = time.perf_counter()
        ensure_venv(venv)
        return time.perf_counter() - t0
    finally:
        if cold:
            if env_before is None:
                os.environ.pop("PIP_NO_CACHE_DIR", None)
            else:
                os.environ["PIP_NO_CACHE_DIR"] = env_before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--venv-timing",
        action="store_true",
        help="also build two throwaway Swift venvs: pip cache off, then on",
    )
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temp dir)")
    args = parser.parse_args(argv)

    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="baldflow-s3-proof-") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.venv_timing:
            timings["swift venv build, pip cache off (s)"] = _time_venv_build(work, cold=True)
            timings["swift venv build, pip cache on (s)"] = _time_venv_build(work, cold=False)
        venv = default_venv()
        if venv_ready(venv):
            timings["swift venv in cache, ready (s)"] = 0.0
        else:
            t0 = time.perf_counter()
            ensure_venv(venv)
            timings["swift venv build into the cache (s)"] = time.perf_counter() - t0

        store = SwiftS3(work / "swift", venv=venv)
        mlflow_server = None
        try:
            store.start()
            timings["swift first start, until S3 lists buckets (s)"] = store.startup_seconds
            dvc = prove_dvc(store, work / "dvc")
            timings.update({f"{k} (s)": v for k, v in dvc["timings"].items()})

            # The same port: the endpoint URL is committed in the workspace's .dvc/config.
            port = store.port
            store.stop()
            store = SwiftS3(work / "swift", port=port, venv=venv)
            store.start()
            timings["swift restart (s)"] = store.startup_seconds
            timings["dvc pull into a fresh clone after the restart (s)"] = pull_fresh_clone(
                store,
                dvc["workspace"],
                work / "dvc" / "clone-after-restart",
                dvc["labeled_md5"],
                dvc["labeled_relpath"],
            )

            t0 = time.perf_counter()
            mlflow_server, url = start_mlflow(store, work)
            timings["mlflow server start, sqlite + S3 artifacts (s)"] = time.perf_counter() - t0
            ml = prove_mlflow_artifacts(store, url, work)
            timings["mlflow client: log 2 artifacts (12 MB) + download, no AWS creds (s)"] = ml[
                "seconds"
            ]
        finally:
            if mlflow_server is not None:
                mlflow_server.stop()
            store.stop()

        print(f"Swift S3 endpoint {store.endpoint_url} (access key {store.access_key})")
        print(f"DVC remote {dvc['remote']}: objects {json.dumps(dvc['objects'])}")
        print(f"labeled set md5 after pull into fresh clones: {dvc['labeled_md5']}")
        print(f"MLflow run {ml['run_id']}: artifact_uri {ml['artifact_uri']}")
        print(f"  in s3://{MLFLOW_BUCKET}: {json.dumps(ml['objects'])}")
        width = max(len(k) for k in timings)
        for key, value in timings.items():
            print(f"{key:<{width}}  {value:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
