"""training.mixed_precision: opt-in bfloat16 autocast on CUDA that never changes a CPU run.

The parameter is validated, stays out of a campaign's identity (old campaigns without it still
resume), reaches the shard jobs, and on the CPU leaves training, scores and the selected batch
bit for bit as they are without it, in one process and in shards. That autocast is entered on
CUDA only is checked on the context `inference.autocast_for` returns and inside a real forward.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from baldflow import seeds
from baldflow.compute import campaign_data, fitting, scoring, selecting, sharding
from baldflow.compute.device import mixed_precision_note
from baldflow.config import Config, ConfigError, load_config, validate, with_identity
from baldflow.data.disk_source import spill_pool
from baldflow.inference import (
    autocast_for,
    embed_pool,
    full_precision,
    predict_log_probs,
    score_pool,
)
from baldflow.training import TrainConfig, TrainConfigError

CPU_NOTE = "training.mixed_precision applies on CUDA only; this run uses the CPU, full precision"


def _config(params: dict, mixed_precision: bool) -> Config:
    params = copy.deepcopy(params)
    params["training"]["mixed_precision"] = mixed_precision
    return validate(params)


# ----------------------------------------------------------------------------- the parameter
def test_off_by_default_and_listed_in_params_yaml():
    assert Config().training.mixed_precision is False
    assert Config().to_dict()["training"]["mixed_precision"] is False
    root_params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    assert root_params["training"]["mixed_precision"] is False
    on = load_config(None, ["training.mixed_precision=true"], check_names=False)
    assert on.training.mixed_precision is True


@pytest.mark.parametrize("bad", ["maybe", "true", 1, 0, None, [True]])
def test_a_non_bool_is_refused_naming_key_and_value(bad):
    with pytest.raises(ConfigError, match=r"training\.mixed_precision must be true or false") as e:
        validate({"training": {"mixed_precision": bad}}, check_names=False)
    assert repr(bad) in str(e.value)
    assert e.value.fields == ("training.mixed_precision",)
    with pytest.raises(TrainConfigError, match="training.mixed_precision must be true or false"):
        TrainConfig(mixed_precision=bad)
    with pytest.raises(sharding.ShardingError, match="mixed_precision must be true or false"):
        sharding.ShardJob("model", "pool", mixed_precision=bad)


def test_not_part_of_a_campaigns_identity():
    off = validate({"training": {"mixed_precision": False}}, check_names=False)
    on = validate({"training": {"mixed_precision": True}}, check_names=False)
    assert "mixed_precision" not in on.identity()["training"]
    assert on.identity() == off.identity()


def test_an_older_campaign_without_the_key_still_loads(tmp_path):
    # What a campaign recorded before the parameter existed: no mixed_precision anywhere.
    old_identity = validate({"campaign": {"name": "old", "seed": 4}}, check_names=False).identity()
    old_params = Config().to_dict()
    old_params["training"].pop("mixed_precision")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(old_params, sort_keys=False))
    config = load_config(path, identity=old_identity, check_names=False)
    assert config.training.mixed_precision is False
    assert config.campaign.name == "old"
    # Switching it on for a resumed campaign is allowed, like changing the device.
    resumed = load_config(
        path, ["training.mixed_precision=true"], identity=old_identity, check_names=False
    )
    assert resumed.training.mixed_precision is True
    assert resumed.identity() == config.identity()
    assert "mixed_precision" not in with_identity({}, old_identity).get("training", {})


# ----------------------------------------------------------------------------- autocast
def test_autocast_is_entered_for_cuda_only():
    for device in ("cpu", torch.device("cpu"), "meta"):
        assert isinstance(autocast_for(device, True), contextlib.nullcontext), device
    for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
        assert isinstance(autocast_for(device, False), contextlib.nullcontext), device
        with warnings.catch_warnings():
            # Built on a machine without CUDA, torch warns it would disable the context.
            warnings.simplefilter("ignore", UserWarning)
            context = autocast_for(device, True)
        assert isinstance(context, torch.autocast), device
        assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)


def test_full_precision_upcasts_half_types_and_leaves_float32_alone():
    log_probs = torch.log_softmax(
        torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0)), -1
    )
    assert full_precision(log_probs) is log_probs
    upcast = full_precision(log_probs.to(torch.bfloat16))
    assert upcast.dtype == torch.float32
    assert full_precision(log_probs.double()).dtype == torch.float64


# ----------------------------------------------------------------------------- CPU: no change
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_defaults):
    """The tiny round trained with the flag off and on (both on the CPU), its pool on disk."""
    off, on = _config(tiny_defaults, False), _config(tiny_defaults, True)
    data = campaign_data.prepare_data(off)
    labeled = [(sid, int(data.splits.pool_y[data.row_of[sid]])) for sid in data.initial_ids]
    seed = seeds.round_seed(off.campaign.seed, 1)
    models = {flag: fitting.train(config, data, labeled, seed) for flag, config in
              ((False, off), (True, on))}  # fmt: skip
    root = tmp_path_factory.mktemp("mixed-precision")
    splits = data.splits
    spill_pool(
        splits.pool_x, splits.pool_y, list(splits.pool_ids), splits.class_names, root / "pool"
    )
    sharding.save_model_dir(models[False].model, root / "model")
    labeled_ids = {sid for sid, _ in labeled}
    sharding.write_exclude_file(labeled_ids, root / "labeled.txt")
    return {"off": off, "on": on, "data": data, "models": models, "seed": seed,
            "labeled_ids": labeled_ids, "root": root}  # fmt: skip


def test_cpu_says_once_that_the_flag_does_nothing(trained):
    assert mixed_precision_note(trained["off"]) is None
    assert mixed_precision_note(trained["on"]) == CPU_NOTE
    sharded = trained["on"].model_copy(deep=True)
    sharded.scale.runner, sharded.training.device = "dask", "auto"
    assert mixed_precision_note(sharded).endswith("(Dask workers with a CUDA device use it)")
    on_cuda = trained["on"].model_copy(
        update={"training": trained["on"].training.model_copy(update={"device": "cuda"})}
    )
    assert mixed_precision_note(on_cuda) is None


def test_cpu_training_is_bit_identical(trained):
    off, on = trained["models"][False].model, trained["models"][True].model
    assert trained["models"][False].epochs == trained["models"][True].epochs
    state_off, state_on = off.state_dict(), on.state_dict()
    assert state_off.keys() == state_on.keys()
    assert all(torch.equal(state_off[k], state_on[k]) for k in state_off)
    data, seed = trained["data"], trained["seed"]
    assert fitting.evaluate(trained["off"], data, off, seed) | {"seconds": 0} == fitting.evaluate(
        trained["on"], data, off, seed
    ) | {"seconds": 0}


def test_cpu_forward_passes_run_without_autocast(trained):
    model = trained["models"][False].model
    seen: list[tuple[bool, bool]] = []

    def record(module, inputs, output):
        seen.append((torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda")))

    handle = model.register_forward_hook(record)
    try:
        x = trained["data"].splits.pool_x[:40]
        log_probs = predict_log_probs(
            model, x, 4, torch.Generator().manual_seed(1), chunk_size=16, mixed_precision=True
        )
    finally:
        handle.remove()
    assert len(seen) == 3 and not any(flag for pair in seen for flag in pair)
    assert log_probs.dtype == torch.float32


@pytest.mark.parametrize("strategy", ["power-bald", "topk-bald", "batchbald", "badge"])
def test_cpu_in_process_scores_and_batch_are_bit_identical(trained, strategy):
    data, seed, labeled_ids = trained["data"], trained["seed"], trained["labeled_ids"]
    model = trained["models"][False].model
    results = {}
    for flag in (False, True):
        params = trained["on" if flag else "off"].to_dict()
        params["acquisition"].update(strategy=strategy, batchbald_candidates=30,
                                     batchbald_num_samples=200)  # fmt: skip
        config = validate(params)
        assert scoring.scoring_plan(config, seed).mixed_precision is flag
        scored = scoring.score_pool(config, data, model, labeled_ids, seed)
        results[flag] = (scored, selecting.select_batch(config, scored, seed))
    (scored_off, batch_off), (scored_on, batch_on) = results[False], results[True]
    for name in ("scores_N", "log_probs_M_K_C", "features_N_D", "probs_N_C"):
        a, b = getattr(scored_off, name), getattr(scored_on, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name
    assert batch_on.sample_ids == batch_off.sample_ids
    assert batch_on.scores == batch_off.scores and batch_on.keys == batch_off.keys


def test_cpu_inference_functions_are_bit_identical(trained):
    model = trained["models"][False].model
    x = trained["data"].splits.pool_x[:50]
    for function, args in (
        (score_pool, (model, x, "bald", 4)),
        (predict_log_probs, (model, x, 4)),
        (embed_pool, (model, x, 4)),
    ):
        off = function(*args, torch.Generator().manual_seed(9), 16)
        on = function(*args, torch.Generator().manual_seed(9), 16, mixed_precision=True)
        for a, b in zip(off if isinstance(off, tuple) else (off,),
                        on if isinstance(on, tuple) else (on,), strict=True):  # fmt: skip
            assert torch.equal(a, b), function.__name__


def test_cpu_shard_scores_and_batch_are_bit_identical(trained):
    root, seed, data = trained["root"], trained["seed"], trained["data"]
    jobs = {
        flag: sharding.shard_job(
            trained["on" if flag else "off"],
            seed,
            model_dir=root / "model",
            pool_dir=root / "pool",
            exclude_file=root / "labeled.txt",
            scores_dir=None,
        )  # fmt: skip
        for flag in (False, True)
    }
    assert (jobs[False].mixed_precision, jobs[True].mixed_precision) == (False, True)
    assert jobs[True] == dataclasses.replace(jobs[False], mixed_precision=True)
    count = data.pool_size
    ranges = [(0, 0), (0, 77), (77, 201), (201, count)]
    for start, stop in ranges:
        off_n, ids_off, _ = sharding.shard_scores(jobs[False], start, stop)
        on_n, ids_on, _ = sharding.shard_scores(jobs[True], start, stop)
        assert ids_on == ids_off
        assert torch.equal(on_n, off_n), (start, stop)
    batch_off, _ = sharding.score_pool_sharded(jobs[False], ranges, sharding.local_submit)
    batch_on, _ = sharding.score_pool_sharded(jobs[True], ranges, sharding.local_submit)
    assert batch_on == batch_off == sharding.score_pool_single(jobs[True])
    # And the in-process round picks the same batch as the shards.
    in_process = scoring.score_pool(
        trained["on"], data, trained["models"][False].model, trained["labeled_ids"], seed
    )
    assert selecting.select_batch(trained["on"], in_process, seed).sample_ids == batch_on


def test_cuda_passes_run_under_bfloat16_autocast_and_return_float32(trained, cuda_device):
    model = copy.deepcopy(trained["models"][False].model).to(cuda_device)
    seen: list[bool] = []
    handle = model.register_forward_hook(
        lambda module, inputs, output: seen.append(torch.is_autocast_enabled("cuda"))
    )
    x = trained["data"].splits.pool_x[:64]
    try:
        full = score_pool(model, x, "bald", 4, torch.Generator().manual_seed(9), 16)
        mixed_log_probs = predict_log_probs(
            model, x, 4, torch.Generator().manual_seed(9), 16, mixed_precision=True
        )
        mixed = score_pool(
            model, x, "bald", 4, torch.Generator().manual_seed(9), 16, mixed_precision=True
        )
    finally:
        handle.remove()
    assert seen == [False] * 4 + [True] * 8
    assert mixed_log_probs.dtype == torch.float32 and mixed.dtype == torch.float64
    assert bool(torch.isfinite(mixed).all()) and (mixed - full).abs().max() < 0.1
