"""Workers that share nothing with the flow: a standing Dask cluster whose workers run as a second
Unix account, with a working directory, HOME and temporary directory of their own and no read
access to the workspace, and the pool and the round's inputs only in the object store (the
session's Swift S3 store). Every strategy's shards on those workers give the batch the local
runner gives on a local copy of the pool; campaigns run through Prefect on them acquire what
the same campaigns acquire here, and leave nothing staged behind but the pool they uploaded."""

from __future__ import annotations

import copy
import csv
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("prefect_dask")

import netns  # noqa: E402
from helpers import run_flow, trained_round_one, write_disk_source  # noqa: E402

from baldflow.acquisition.strategies import STRATEGIES, get_strategy  # noqa: E402
from baldflow.compute import sharding, staging  # noqa: E402
from baldflow.config import validate  # noqa: E402
from baldflow.data import object_store  # noqa: E402
from baldflow.data.convert import convert_pool  # noqa: E402
from baldflow.data.object_store import ObjectURL  # noqa: E402
from baldflow.stack.dask_cluster import DaskCluster  # noqa: E402

POOLS, STAGED = "nothing-pools", "nothing-staging"
DECIDED = ("round", "sample_id", "label", "strategy", "rank", "score",
           "first_pick_probability", "selection_key")  # fmt: skip


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a second Unix account for the workers)"
    for tool in ("setpriv", "useradd", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.fixture(scope="module")
def store(swift_store):
    """The store's endpoint and credentials in this process's environment for the module."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in swift_store.client_env().items():
            patch.setenv(key, value)
        patch.setenv("AWS_ENDPOINT_URL", swift_store.endpoint_url)
        for bucket in (POOLS, STAGED):
            swift_store.create_bucket(bucket)
        yield swift_store


@pytest.fixture(scope="module")
def workers(store, prefect_harness):
    """(cluster address, the account) of 2 workers as the second account, in its home."""
    why = _why_not()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the shared-nothing tests: {why}")
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="baldflow-nothing-"))
    os.chmod(base, 0o755)  # the account reaches its home under it, nothing else
    try:
        with netns.UnixAccount(base) as account:
            tmp = account.home / "tmp"
            tmp.mkdir(mode=0o700)
            os.chown(tmp, account.uid, account.gid)
            env = account.environment({
                **store.client_env(), "AWS_ENDPOINT_URL": store.endpoint_url,
                "PREFECT_API_URL": prefect_harness, "PREFECT_HOME": str(account.home / "prefect"),
                "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
            })  # fmt: skip
            cluster = DaskCluster(
                base / "dask", workers=2, threads_per_worker=1,
                env={**os.environ, "PREFECT_API_URL": prefect_harness},
                worker_prefix=[*netns.expose_interpreter(base / "interpreter"),
                               *account.command([])],
                worker_env=env, worker_home=account.home,
            )  # fmt: skip
            with cluster:
                yield cluster.address, account
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _whoami(workspace: str) -> dict:
    import os
    import tempfile

    return {
        "uid": os.getuid(), "cwd": os.getcwd(), "home": os.environ.get("HOME"),
        "tmp": tempfile.gettempdir(), "reads_workspace": os.access(workspace, os.R_OK),
    }  # fmt: skip


def test_every_strategy_on_workers_that_share_nothing_is_the_local_batch(
    workers, tmp_path_factory, tiny_defaults
):
    from distributed import Client

    address, account = workers
    root = tmp_path_factory.mktemp("nothing-round")  # 0700: the workers cannot read it
    config, data, _, _, seed = trained_round_one(tiny_defaults, root, also_labeled=(7, 150))
    pool_url = f"s3://{POOLS}/round/pool"
    convert_pool(root / "pool", pool_url).close()
    where = f"s3://{STAGED}/proof"
    model_url = staging.stage_model_dir(root / "model", where)
    exclude_url = staging.stage_text((root / "labeled.txt").read_text(), where, "labeled")
    # Content-addressed: staging the same model again names the same key.
    assert staging.stage_model_dir(root / "model", where) == model_url
    import sys

    import cloudpickle

    # The workers cannot import this test module: send _whoami by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with Client(address, timeout=30) as client:
        seen = client.run(_whoami, str(root))
        assert len(seen) == 2
        for worker in seen.values():
            assert worker["uid"] == account.uid and not worker["reads_workspace"]
            assert worker["cwd"] == worker["home"] == str(account.home)
            assert worker["tmp"] == str(account.home / "tmp")
        shardable = [name for name in STRATEGIES if get_strategy(name).shardable]
        assert shardable == list(STRATEGIES)  # BADGE and CoreSet too
        for name in shardable:
            strategy_config = validate({**config.to_dict(), "acquisition": {
                **config.acquisition.model_dump(), "strategy": name,
                "batchbald_candidates": 40, "batchbald_num_samples": 500,
            }})  # fmt: skip
            here = sharding.shard_job(
                strategy_config, seed, model_dir=root / "model", pool_dir=root / "pool",
                exclude_file=root / "labeled.txt", scores_dir=root / name,
            )  # fmt: skip
            remote = sharding.shard_job(
                strategy_config, seed, model_dir=model_url, pool_dir=pool_url,
                exclude_file=exclude_url, scores_dir=staging.join(where, name, "scores"),
            )  # fmt: skip
            expected, _ = sharding.score_pool_sharded(here, 3)
            got, _ = sharding.score_pool_sharded(remote, 3, sharding.dask_submit(client))
            assert got == expected and len(got) >= 5, name
    # The workers kept their downloaded model in their own temporary directory.
    assert any((account.home / "tmp").glob("baldflow-staging-*/models/model-*"))
    staging.remove_tree(where)
    assert not object_store.list_keys(ObjectURL.parse(where))


def decided(workspace: Path) -> list[tuple]:
    with open(workspace / "data" / "tiny" / "ledger.csv", newline="") as f:
        return [tuple(row[k] for k in DECIDED) for row in csv.DictReader(f)]


def _scaled(params: dict, address: str, staged: str) -> dict:
    params = copy.deepcopy(params)
    params["scale"] = {"runner": "dask", "dask_address": address, "shards": 4, "staging": staged}
    return params


def test_campaigns_on_workers_that_share_nothing_acquire_what_one_host_acquires(
    workers, tmp_path, tiny_params, prefect_harness, monkeypatch
):
    address, _ = workers
    monkeypatch.setenv("PREFECT_API_URL", prefect_harness)
    # A pool that lives only in the bucket; softrank's two passes (its sorted scores staged).
    write_disk_source(tmp_path / "source", tiny_params)
    for part in ("pool", "val", "test"):
        convert_pool(tmp_path / "source" / part, f"s3://{POOLS}/campaign/{part}").close()
    local = copy.deepcopy(tiny_params)
    local["campaign"]["rounds"] = 2
    local["acquisition"]["strategy"] = "softrank-bald"
    local["data"] = {"source": "disk", "root": str(tmp_path / "source")}
    run_flow(tmp_path / "here", local)
    remote = copy.deepcopy(local)
    remote["data"]["root"] = f"s3://{POOLS}/campaign"
    staged = f"s3://{STAGED}/campaigns"
    result = run_flow(tmp_path / "there", _scaled(remote, address, staged))
    assert result["stopped"] == "rounds"
    assert decided(tmp_path / "there") == decided(tmp_path / "here")
    assert len(decided(tmp_path / "here")) == 10 + 2 * 5
    # Each round's model, labeled ids and score files were released once its scores were kept.
    assert not object_store.list_keys(ObjectURL.parse(staged))

    # A pool held in memory (the digits campaign) is staged once, by content, for the workers;
    # CoreSet's labeled features travel through the store and its passes run on the workers.
    # (EPIG's staged targets: the first test, at the shards' level.)
    memory = copy.deepcopy(tiny_params)
    memory["acquisition"]["strategy"] = "coreset"
    run_flow(tmp_path / "memory-here", memory, rounds=1)
    run_flow(tmp_path / "memory-there", _scaled(memory, address, staged), rounds=1)
    assert decided(tmp_path / "memory-there") == decided(tmp_path / "memory-here")
    left = object_store.list_keys(ObjectURL.parse(staged))
    assert left and all(key.startswith("pools/") for key in left), left
    staging.remove_tree(staged)
