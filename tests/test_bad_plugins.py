"""Bad plug-ins get one line naming the plug-in, its package and what is wrong: at preflight
where that can be told without data (exit 5), else the run fails with nothing of the round
committed."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import run_flow
from torch import nn

from baldflow import plugins
from baldflow.acquisition.scored import ScoredStrategy
from baldflow.acquisition.strategy import Selection
from baldflow.config import validate
from baldflow.plugins import MODEL_PLUGINS, SOURCE_PLUGINS, PluginError
from baldflow.preflight import PreflightError, check_plugins


def with_plugins(params: dict, **sections) -> dict:
    params = copy.deepcopy(params)
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        params.setdefault(section, {})[key] = value
    return params


@pytest.fixture
def broken_package(tmp_path, monkeypatch):
    """An installed package (a dist-info on sys.path) whose entry points name a module that
    fails to import."""
    site = tmp_path / "site"
    dist = site / "broken_plugins-1.2.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text(
        "[baldflow.models]\nbroken-net = broken_plugins:net\n"
        "[baldflow.sources]\nbroken-data = broken_plugins:Data\n"
    )
    (dist / "top_level.txt").write_text("broken_plugins\n")
    (site / "broken_plugins.py").write_text("import a_module_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(site))
    plugins.forget_entry_point_cache()
    yield site
    for registry in (MODEL_PLUGINS, SOURCE_PLUGINS):
        registry._resolved.clear()
    plugins.forget_entry_point_cache()


def test_an_import_string_that_does_not_import_fails_preflight(tiny_params):
    config = validate(with_plugins(tiny_params, model__name="no_such_module:make"))
    with pytest.raises(PreflightError) as caught:
        check_plugins(config)
    text = str(caught.value)
    assert "model plug-in 'no_such_module:make'" in text and "does not import" in text
    assert "\n" not in text


def test_an_entry_point_whose_package_fails_to_import_names_the_package(
    broken_package, tiny_params
):
    config = validate(with_plugins(tiny_params, model__name="broken-net"))
    with pytest.raises(PreflightError) as caught:
        check_plugins(config)
    text = str(caught.value)
    assert "'broken-net' (package broken-plugins)" in text
    assert "a_module_that_is_not_there" in text and "\n" not in text
    rows = {row["name"]: row for row in MODEL_PLUGINS.listing()}
    assert rows["broken-net"]["package"] == "broken-plugins" and rows["broken-net"]["problem"]


def test_the_cli_exits_5_on_a_plugin_that_does_not_import(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "baldflow.cli", "run", "--workspace", str(tmp_path / "ws"),
         "--set", "training.trainer=no_such_module:train"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    assert "trainer plug-in 'no_such_module:train'" in result.stderr
    assert not (tmp_path / "ws" / "data").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("pickled-object", "refus"),
        ("not-a-state-dict", "not a state_dict"),
    ],
)
def test_a_weights_file_that_is_not_a_state_dict_fails_preflight(
    tmp_path, tiny_params, content, expected
):
    path = tmp_path / "weights.pt"
    if content == "pickled-object":
        torch.save({"layer": nn.Linear(2, 2)}, path)  # a module: unpickling would run code
    else:
        torch.save([torch.zeros(2)], path)
    config = validate(with_plugins(tiny_params, model__weights=str(path)))
    with pytest.raises(PreflightError) as caught:
        check_plugins(config)
    assert "model.weights" in str(caught.value) and str(path) in str(caught.value)
    assert expected in str(caught.value).lower() or "state_dict" in str(caught.value)


# ---------------------------------------------------------------------------- in a campaign
def wrong_width(input_shape, num_classes, options):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.Linear(16, 3))


class NotFinite(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5))
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        return self.out(self.net(x)) * float("nan")


def not_finite(input_shape, num_classes, options):
    return NotFinite()


def returns_nothing(model, train, val, options, generator, device):
    return None


def returns_text_metrics(model, train, val, options, generator, device):
    return model, {"loss": "low"}


class Duplicates(ScoredStrategy):
    def select(self, inputs, batch_size, params, noise):
        chosen = super().select(inputs, batch_size, params, noise)
        return Selection([chosen.sample_ids[0]] * batch_size)


class Strangers(ScoredStrategy):
    def select(self, inputs, batch_size, params, noise):
        return Selection([f"not-in-the-pool-{i}" for i in range(batch_size)])


class TooFew(ScoredStrategy):
    def select(self, inputs, batch_size, params, noise):
        chosen = super().select(inputs, batch_size, params, noise)
        return Selection(chosen.sample_ids[:1])


def committed_tags(workspace: Path) -> list[str]:
    if not (workspace / ".git").exists():
        return []
    out = subprocess.run(
        ["git", "-C", str(workspace), "tag", "--list"], capture_output=True, text=True
    )
    return out.stdout.split()


@pytest.mark.parametrize(
    ("section", "spec", "message", "tags"),
    [
        ("model__name", "test_bad_plugins:wrong_width", r"shape \[2, 3\].*expected \[2, 10\]", []),
        ("model__name", "test_bad_plugins:not_finite", "not finite", []),
        ("training__trainer", "test_bad_plugins:returns_nothing", "not the pair",
         ["tiny/round-0000"]),
        ("training__trainer", "test_bad_plugins:returns_text_metrics", "not a number",
         ["tiny/round-0000"]),
    ],
)  # fmt: skip
def test_a_broken_model_or_trainer_commits_nothing_of_its_round(
    tmp_path, tiny_params, prefect_harness, section, spec, message, tags
):
    params = with_plugins(tiny_params, **{section: spec})
    params["campaign"]["rounds"] = 1
    with pytest.raises(Exception, match=message) as caught:
        run_flow(tmp_path / "ws", params)
    assert spec in str(caught.value)
    assert committed_tags(tmp_path / "ws") == tags


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (Duplicates("test-duplicates", "power", "bald"), "twice"),
        (Strangers("test-strangers", "power", "bald"), "not an unlabeled sample"),
        (TooFew("test-too-few", "power", "bald"), r"returned 1 sample\(s\) for a batch of 5"),
    ],
)
def test_a_strategy_that_breaks_the_batch_commits_nothing_of_its_round(
    tmp_path, tiny_params, prefect_harness, strategy, message
):
    from baldflow.acquisition.strategies import register_strategy, unregister_strategy

    register_strategy(strategy)
    try:
        params = with_plugins(tiny_params, acquisition__strategy=strategy.name)
        params["campaign"]["rounds"] = 1
        with pytest.raises(PluginError, match=message) as caught:
            run_flow(tmp_path / "ws", params)
    finally:
        unregister_strategy(strategy.name)
    assert f"strategy plug-in {strategy.name!r}" in str(caught.value)
    assert committed_tags(tmp_path / "ws") == ["tiny/round-0000"]


def test_source_ids_must_be_unique_text(tmp_path, tiny_params, monkeypatch):
    """A plug-in source's ids, checked before anything is done with them."""
    module = tmp_path / "bad_sources.py"
    module.write_text(textwrap.dedent("""
        import torch
        from baldflow.data import DataSource, DataSplits

        class Twice(DataSource):
            def load(self, root, *, seed):
                x = torch.zeros(12, 3)
                y = torch.arange(12) % 2
                ids = [f"s{i}" for i in range(11)] + ["s0"]
                return DataSplits(x, y, ids, x[:4], y[:4], x[:4], y[:4], ["a", "b"])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from baldflow.data import DataSourceError
    from baldflow.data.campaign import campaign_pool_of

    config = validate(with_plugins(tiny_params, data__source="bad_sources:Twice",
                                   data__options={}))  # fmt: skip
    with pytest.raises(DataSourceError, match="'s0' appears twice"):
        campaign_pool_of(config.data, config.campaign)
