"""The strategies beyond the paper (EPIG, annealed batches, stochastic BatchBALD, BADGE,
CoreSet) run as a round runs them, reproducibly; every round's batch-quality evidence (and the
shadow BatchBALD check) reaches MLflow."""

from __future__ import annotations

import copy
import math

import pytest

from baldflow import seeds
from baldflow.acquisition.strategies import STRATEGIES
from baldflow.compute import campaign_data, evidence, fitting, scoring, selecting
from baldflow.config import validate
from baldflow.workspace.tracking import local_tracking_uri

NEW = ("power-epig", "topk-epig", "annealed-power-bald", "annealed-softrank-bald",
       "stochastic-batchbald", "badge", "coreset")  # fmt: skip


@pytest.fixture(scope="module")
def round_inputs(tiny_defaults):
    config = validate(tiny_defaults)
    data = campaign_data.prepare_data(config)
    labeled = [(sid, int(data.splits.pool_y[data.row_of[sid]])) for sid in data.initial_ids]
    seed = seeds.round_seed(config.campaign.seed, 1)
    trained = fitting.train(config, data, labeled, seed)
    return config, data, trained, {sid for sid, _ in labeled}, seed


def _with(config, **acquisition):
    params = config.to_dict()
    params["acquisition"].update(acquisition)
    return validate(params)


def _round(config, data, trained, labeled_ids, seed):
    scored = scoring.score_pool(config, data, trained.model, labeled_ids, seed)
    return scored, selecting.select_batch(config, scored, seed)


@pytest.mark.parametrize("strategy", NEW)
def test_a_new_strategy_picks_a_reproducible_batch_of_unlabeled_samples(round_inputs, strategy):
    config, data, trained, labeled_ids, seed = round_inputs
    config = _with(config, strategy=strategy, batchbald_candidates=40, epig_targets=20)
    scored, selected = _round(config, data, trained, labeled_ids, seed)
    assert scored.remaining == data.pool_size - len(labeled_ids)
    assert len(selected.sample_ids) == len(set(selected.sample_ids)) == 5
    assert not set(selected.sample_ids) & labeled_ids
    _, again = _round(config, data, trained, labeled_ids, seed)
    assert again.sample_ids == selected.sample_ids
    _, other = _round(config, data, trained, labeled_ids, seed + 1)
    if strategy not in ("topk-epig", "coreset"):  # the deterministic ones may agree
        assert other.sample_ids != selected.sample_ids
    n = len(selected.sample_ids)
    assert len(selected.scores) == len(selected.probabilities) == len(selected.keys) == n
    if strategy in ("power-epig", "annealed-power-bald", "badge"):
        assert all(p is not None and 0 < p <= 1 for p in selected.probabilities)


def test_epig_scores_are_an_information_gain_and_follow_the_targets(round_inputs):
    config, data, trained, labeled_ids, seed = round_inputs
    few = _with(config, strategy="topk-epig", epig_targets=5)
    many = _with(config, strategy="topk-epig", epig_targets=50)
    _, a = _round(few, data, trained, labeled_ids, seed)
    _, b = _round(many, data, trained, labeled_ids, seed)
    assert all(s >= 0 for s in a.scores) and a.scores == sorted(a.scores, reverse=True)
    assert a.scores != b.scores  # other targets, another information gain


def test_annealing_at_a_constant_coldness_is_power_sampling_in_law(round_inputs):
    # Same schedule start and end: every pick samples from the same power law; the first
    # pick's probability equals power-bald's first-pick probability of that sample.
    config, data, trained, labeled_ids, seed = round_inputs
    annealed = _with(config, strategy="annealed-power-bald", coldness=1.0, coldness_end=1.0)
    _, chosen = _round(annealed, data, trained, labeled_ids, seed)
    power = _with(config, strategy="power-bald", batch_size=300)
    _, everything = _round(power, data, trained, labeled_ids, seed)
    first = dict(zip(everything.sample_ids, everything.probabilities, strict=True))
    assert chosen.probabilities[0] == pytest.approx(first[chosen.sample_ids[0]], rel=1e-9)


def test_every_built_in_strategy_is_accepted_where_the_pool_is_sharded(tiny_defaults):
    # EPIG and annealed batches are exact in shards (test_sharded_strategies.py), CoreSet by
    # certified passes and BADGE from each shard's candidates (test_round_sharding.py); a
    # plug-in that needs the whole pool in one process is still refused
    # (test_strategy_plugin.py).
    for strategy in STRATEGIES:
        params = copy.deepcopy(tiny_defaults)
        params["acquisition"]["strategy"] = strategy
        params["scale"] = {"runner": "dask"}
        validate(params)


def test_evidence_and_shadow_batchbald_reach_the_round_run(tmp_path, tiny_params, prefect_harness):
    from mlflow.tracking import MlflowClient

    from baldflow.flows.campaign import campaign_flow

    tiny_params["campaign"]["rounds"] = 1
    tiny_params["data"]["repeat"] = 2  # copies of one sample are near-duplicates
    tiny_params["acquisition"].update(strategy="topk-bald", shadow_batchbald=True)
    tiny_params["campaign"]["name"] = "evidence"
    campaign_flow(workspace=str(tmp_path / "ws"), params=tiny_params, campaign="evidence")
    client = MlflowClient(tracking_uri=local_tracking_uri(tmp_path / "ws" / "mlflow"))
    experiment = client.get_experiment_by_name("baldflow")
    runs = client.search_runs([experiment.experiment_id], "tags.`baldflow.round` = '1'")
    metrics = runs[0].data.metrics
    for name in ("batch_joint_mi", "batch_bald_sum", "batch_redundancy", "batch_class_entropy",
                 "batch_near_duplicate_pairs", "shadow_overlap", "shadow_joint_mi",
                 "shadow_mi_gap", "seconds_shadow"):  # fmt: skip
        assert name in metrics and math.isfinite(metrics[name]), name
    assert 0 <= metrics["shadow_overlap"] <= 1
    # The joint information never exceeds the sum of the parts (up to estimation error).
    assert metrics["batch_joint_mi"] <= metrics["batch_bald_sum"] + 1e-3

    # The round's full pool scores, versioned with DVC in its commit, answer for any sample.
    import subprocess

    from baldflow.workspace.scores import read_score_table, sample_scores

    ws = tmp_path / "ws"
    listed = subprocess.run(
        ["git", "-C", str(ws), "ls-tree", "-r", "--name-only", "evidence/round-0001"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "data/evidence/scores/round-0001.parquet.dvc" in listed
    table = read_score_table(ws / "data" / "evidence" / "scores" / "round-0001.parquet")
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == runs[0].data.metrics["pool_remaining"] + 5  # every unlabeled sample
    story = sample_scores(ws / "data" / "evidence", ids[0])
    assert [entry["round"] for entry in story] == [1] and story[0]["rank"] >= 1


def test_the_shadow_check_reuses_the_rounds_bald_scores_and_gets_the_same_answer(round_inputs):
    config, data, trained, labeled_ids, seed = round_inputs
    config = _with(config, strategy="power-bald", shadow_batchbald=True, batchbald_candidates=40)
    scored, selected = _round(config, data, trained, labeled_ids, seed)
    reused = evidence.batch_evidence(
        config, data, trained.model, labeled_ids, selected, seed, scored=scored
    )
    fresh = evidence.batch_evidence(config, data, trained.model, labeled_ids, selected, seed)
    for name in ("shadow_overlap", "shadow_joint_mi", "shadow_mi_gap", "batch_joint_mi"):
        assert reused[name] == fresh[name], name
