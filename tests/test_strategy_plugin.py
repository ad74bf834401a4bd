"""A strategy defined outside baldflow is one class plus one registration line: registered, it
validates in params, runs a real campaign (Prefect flow, MLflow, DVC) and names itself in the
ledger like a built-in; it is refused where it cannot run, and unregistering leaves the
registry as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import run_flow

from baldflow.acquisition import (
    EMBEDDINGS,
    STRATEGY_NAMES,
    Selection,
    Strategy,
    StrategyError,
    get_strategy,
    register_strategy,
    unregister_strategy,
)
from baldflow.config import ConfigError, validate

NAME = "typical-clusters"


class TypicalClusters(Strategy):
    """TypiClust in miniature: k-means on the unlabeled samples' penultimate features with one
    cluster per pick, and from each cluster (largest first) its most typical sample, the one
    nearest the cluster's centre."""

    name = NAME
    needs = frozenset({EMBEDDINGS})

    def __init__(self, iterations: int = 5):
        self.iterations = iterations

    def select(self, inputs, batch_size, params, noise) -> Selection:
        features_N_D = inputs.features_N_D.double()
        start = torch.randperm(features_N_D.shape[0], generator=noise.generator)[:batch_size]
        centres_B_D = features_N_D[start]
        for _ in range(self.iterations):
            members_N = torch.cdist(features_N_D, centres_B_D).argmin(dim=1)
            for cluster in range(batch_size):
                if bool((members_N == cluster).any()):
                    centres_B_D[cluster] = features_N_D[members_N == cluster].mean(dim=0)
        distances_N_B = torch.cdist(features_N_D, centres_B_D)
        members_N = distances_N_B.argmin(dim=1)
        sizes_B = torch.bincount(members_N, minlength=batch_size)
        picked: list[int] = []
        for cluster in sizes_B.argsort(descending=True, stable=True).tolist():
            # The sample nearest this centre that no earlier cluster took.
            for row in distances_N_B[:, cluster].argsort(stable=True).tolist():
                if row not in picked:
                    picked.append(row)
                    break
        sizes = [float(sizes_B[members_N[row]]) for row in picked]
        return Selection([inputs.sample_ids[row] for row in picked], scores=sizes)


@pytest.fixture
def typical_clusters():
    """The strategy registered for one test; the registry as it was afterwards."""
    before = list(STRATEGY_NAMES)
    strategy = register_strategy(TypicalClusters())
    try:
        yield strategy
    finally:
        unregister_strategy(NAME)
        assert before == STRATEGY_NAMES
        with pytest.raises(ValueError, match="unknown acquisition strategy"):
            get_strategy(NAME)


def test_a_registered_strategy_runs_a_campaign_and_names_itself_in_the_ledger(
    typical_clusters, tiny_params, tmp_path, prefect_harness
):
    from baldflow.workspace.consistency import check_campaign
    from baldflow.workspace.ledger import read_ledger
    from baldflow.workspace.repo import Workspace

    tiny_params["campaign"].update(name="plugin", rounds=2)
    tiny_params["acquisition"]["strategy"] = NAME
    assert validate(tiny_params).acquisition.strategy == NAME
    workspace = tmp_path / "ws"
    result = run_flow(workspace, tiny_params, campaign="plugin")
    assert result["stopped"] == "rounds"
    assert check_campaign(workspace, "plugin") == []

    rows = read_ledger(Workspace(workspace).ledger_path("plugin"))
    initial = {row.sample_id for row in rows if row.round == 0}
    batch_size = tiny_params["acquisition"]["batch_size"]
    acquired = [row for row in rows if row.round > 0]
    assert {row.round for row in acquired} == {1, 2}
    assert {row.strategy for row in acquired} == {NAME}
    for round_index in (1, 2):
        batch = [row for row in acquired if row.round == round_index]
        assert [row.rank for row in batch] == list(range(batch_size))
        # The cluster sizes it recorded as scores: largest cluster first.
        assert [row.score for row in batch] == sorted((row.score for row in batch), reverse=True)
    ids = [row.sample_id for row in acquired]
    assert len(ids) == len(set(ids)) == 2 * batch_size
    assert not set(ids) & initial


@pytest.mark.parametrize(
    "where, setting",
    [({"scale": {"runner": "dask"}}, "scale.runner dask"),
     ({"data": {"source": "disk", "options": {"path": "pool"}}}, "data.source disk")],
)  # fmt: skip
def test_a_strategy_that_needs_the_whole_pool_is_refused_in_shards(
    typical_clusters, tiny_params, where, setting
):
    params = copy.deepcopy(tiny_params)
    params["acquisition"]["strategy"] = NAME
    for section, values in where.items():
        params[section] = {**params.get(section, {}), **values}
    assert not typical_clusters.shardable
    with pytest.raises(ConfigError) as info:
        validate(params)
    assert str(info.value).startswith(
        f"acquisition.strategy {NAME} needs every unlabeled sample's score or embedding in one "
        f"process, which {setting} does not give"
    )
    assert info.value.fields == ("acquisition.strategy",)


def test_a_taken_name_is_refused_unless_replaced(typical_clusters):
    with pytest.raises(StrategyError, match=f"'{NAME}' is already registered"):
        register_strategy(TypicalClusters(iterations=1))

    class PowerBald(TypicalClusters):
        name = "power-bald"

    with pytest.raises(StrategyError, match="'power-bald' is already registered"):
        register_strategy(PowerBald())
    replacement = TypicalClusters(iterations=1)
    assert register_strategy(replacement, replace=True) is replacement
    assert get_strategy(NAME) is replacement


def test_what_is_not_a_strategy_is_refused_with_what_is_wrong():
    class NoNeeds(TypicalClusters):
        needs = frozenset({"gradients"})

    class Underscored(TypicalClusters):
        name = "typical_clusters"

    with pytest.raises(StrategyError, match="needs must be a non-empty frozenset of"):
        register_strategy(NoNeeds())
    with pytest.raises(StrategyError, match="lowercase letters, digits and hyphens"):
        register_strategy(Underscored())
    with pytest.raises(StrategyError, match="instance of baldflow.acquisition.Strategy"):
        register_strategy("power-bald")
    assert NAME not in STRATEGY_NAMES


def test_the_docs_example_registers_and_chooses_through_acquire():
    """docs/acquisition.md's example, run as written: it registers, and `acquire` chooses
    distinct pool indices with it, the same indices under the same generator."""
    import re
    from pathlib import Path

    from baldflow.acquisition import acquire

    page = Path(__file__).resolve().parents[1] / "docs" / "acquisition.md"
    (example,) = re.findall(r"```py\n(.*?)```", page.read_text(), flags=re.S)
    before = list(STRATEGY_NAMES)
    try:
        exec(compile(example, str(page), "exec"), {"__name__": "docs_example"})
        assert get_strategy(NAME).needs == frozenset({EMBEDDINGS})
        features_N_D = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
        picks = [
            acquire(NAME, 4, features_N_D=features_N_D, generator=torch.Generator().manual_seed(1))
            for _ in range(2)
        ]
        assert len(set(picks[0].indices.tolist())) == 4
        assert torch.equal(picks[0].indices, picks[1].indices)
    finally:
        if NAME in STRATEGY_NAMES:
            unregister_strategy(NAME)
    assert list(STRATEGY_NAMES) == before
