"""A campaign records the plug-ins it uses (name, package, version, code hash; the weights
file's sha256) and refuses to resume with another, naming what changed and the fix."""

from __future__ import annotations

import copy
import sys
import textwrap

import pytest
import torch
import yaml
from helpers import run_flow

from baldflow.config import ConfigError, campaign_identity, validate
from baldflow.plugins import MODEL_PLUGINS

MODULE = textwrap.dedent("""
    from torch import nn

    def net(input_shape, num_classes, options):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, {width}), nn.ReLU(), nn.Dropout(0.5),
                             nn.Linear({width}, num_classes))
""")


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A model plug-in in a module of its own, importable as `my_nets:net`."""
    (tmp_path / "my_nets.py").write_text(MODULE.format(width=16))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_nets", raising=False)
    MODEL_PLUGINS._resolved.pop("my_nets:net", None)
    yield tmp_path / "my_nets.py"
    MODEL_PLUGINS._resolved.pop("my_nets:net", None)
    sys.modules.pop("my_nets", None)


def test_the_record_names_each_plugin(plugin_module, tiny_params):
    params = copy.deepcopy(tiny_params)
    params["model"] = {"name": "my_nets:net"}
    record = campaign_identity(validate(params))["plugins"]
    assert record["model"]["name"] == "my_nets:net"
    assert len(record["model"]["code_hash"]) == 64
    assert record["trainer"] == {"name": "baldflow", "package": "baldflow"}
    assert record["strategy"] == {"name": "power-bald", "package": "baldflow"}


def test_resuming_with_changed_plugin_code_or_weights_is_refused(
    plugin_module, tmp_path, tiny_params, prefect_harness
):
    import my_nets

    from baldflow.preflight import check_campaign

    weights = tmp_path / "pretrained.pt"
    torch.save(my_nets.net((1, 8, 8), 10, {}).state_dict(), weights)
    params = copy.deepcopy(tiny_params)
    params["model"] = {"name": "my_nets:net", "weights": str(weights)}
    params["campaign"]["rounds"] = 1
    workspace = tmp_path / "ws"
    run_flow(workspace, params)
    recorded = yaml.safe_load((workspace / "data" / "tiny" / "campaign.yaml").read_text())
    assert recorded["plugins"]["model"]["name"] == "my_nets:net"
    assert len(recorded["plugins"]["model"]["weights_sha256"]) == 64
    assert recorded["model"]["weights"] == str(weights)  # where this machine found them

    # The same code and weights resume, from wherever the file now lies.
    moved = tmp_path / "moved.pt"
    weights.rename(moved)
    longer = copy.deepcopy(params)
    longer["campaign"]["rounds"] = 2
    longer["model"]["weights"] = str(moved)
    check_campaign(validate(longer), workspace)

    # Other weights are refused, naming the field and the fix.
    state = torch.load(moved, weights_only=True)
    state["1.bias"] = state["1.bias"] + 1.0
    torch.save(state, moved)
    with pytest.raises(ConfigError, match=r"plugins\.model\.weights_sha256: was "):
        check_campaign(validate(longer), workspace)

    # So is changed code.
    torch.save(my_nets.net((1, 8, 8), 10, {}).state_dict(), moved)
    plugin_module.write_text(MODULE.format(width=24))
    MODEL_PLUGINS._resolved.pop("my_nets:net", None)
    with pytest.raises(ConfigError) as caught:
        check_campaign(validate(longer), workspace)
    text = str(caught.value)
    assert "plugins.model.code_hash: was " in text and "pick a new campaign.name" in text
    assert "the plug-in's package and code" in text
