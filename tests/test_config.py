"""The params.yaml schema: defaults, overrides and the errors a wrong value gives."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from baldflow.config import (
    Config,
    ConfigError,
    apply_overrides,
    dump_yaml,
    load_config,
    parse_override,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]


def test_root_params_yaml_holds_the_schema_defaults():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    # `benchmark` belongs to the strategy comparison (dvc.yaml), with a schema of its own.
    data.pop("benchmark", None)
    assert data == Config().to_dict()
    assert list(data) == [
        "campaign",
        "data",
        "model",
        "training",
        "acquisition",
        "oracle",
        "tracking",
    ]


def test_default_config_names_resolve_in_their_registries():
    config = load_config(ROOT / "params.yaml")
    assert config.acquisition.strategy == "power-bald"
    assert config.data.source == "digits"


def test_dump_round_trips():
    config = validate({"acquisition": {"batch_size": 7}})
    assert validate(yaml.safe_load(dump_yaml(config))) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("acquisition.batch_size=0", "acquisition.batch_size must be >= 1, got 0"),
        ("campaign.rounds=-1", "campaign.rounds must be >= 0, got -1"),
        ("model.dropout=1.0", "model.dropout must be < 1.0, got 1.0"),
        ("training.learning_rate=0", "training.learning_rate must be > 0.0, got 0"),
        ("acquisition.coldness=-0.5", "acquisition.coldness must be >= 0.0, got -0.5"),
        ("acquisition.batchsize=3", "acquisition.batchsize is not a known parameter (got 3)"),
        ("campaign.seed=abc", "campaign.seed"),
        ("oracle.kind=crowd", "oracle.kind must be one of 'simulated'"),
        ("oracle.kind=crowd", "got 'crowd'"),
    ],
)
def test_bad_values_name_the_field_and_the_value(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override], check_names=False)
    assert message in str(info.value)


def test_error_reads_as_documented():
    with pytest.raises(ConfigError) as info:
        validate({"acquisition": {"batch_size": 0}})
    text = f"{type(info.value).__name__}: {info.value}"
    assert text == "ConfigError: acquisition.batch_size must be >= 1, got 0"


def test_campaign_name_must_suit_git_tags_and_artifact_keys():
    with pytest.raises(ConfigError, match="campaign.name must be lowercase"):
        validate({"campaign": {"name": "My Campaign"}}, check_names=False)


@pytest.mark.parametrize(
    ("section", "key", "value", "valid"),
    [
        ("acquisition", "strategy", "power-bold", "power-bald"),
        ("model", "name", "transformer", "mlp"),
        ("data", "source", "imagenet", "digits"),
    ],
)
def test_unknown_names_list_the_valid_ones(section, key, value, valid):
    with pytest.raises(ConfigError) as info:
        validate({section: {key: value}})
    text = str(info.value)
    assert f"{section}.{key} must be one of" in text
    assert repr(value) in text
    assert valid in text


def test_device_is_checked_before_any_work():
    with pytest.raises(ConfigError, match="training.device must be auto, cpu, cuda or cuda:N"):
        validate({"training": {"device": "gpu-please"}})


def test_unknown_section_and_non_mapping_section():
    with pytest.raises(ConfigError, match="sampling is not a known parameter"):
        validate({"sampling": {}}, check_names=False)
    with pytest.raises(ConfigError, match="training must be a mapping, got 3"):
        validate({"training": 3}, check_names=False)


def test_overrides_parse_values_as_yaml():
    assert parse_override("acquisition.coldness=2.5") == (["acquisition", "coldness"], 2.5)
    assert parse_override("data.root=") == (["data", "root"], None)
    merged = apply_overrides(
        {"acquisition": {"batch_size": 4}},
        ["acquisition.coldness=2", "data.options.pool_size=100"],
    )
    assert merged == {
        "acquisition": {"batch_size": 4, "coldness": 2},
        "data": {"options": {"pool_size": 100}},
    }
    config = validate(merged, check_names=False)
    assert config.data.options == {"pool_size": 100}


@pytest.mark.parametrize("text", ["acquisition.batch_size", "batch_size=3", "nosuch.key=1"])
def test_malformed_overrides(text):
    with pytest.raises(ConfigError):
        parse_override(text)


def test_parameter_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- of things\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    partial = tmp_path / "partial.yaml"
    partial.write_text("acquisition:\n  strategy: topk-bald\n")
    config = load_config(partial, ["acquisition.batch_size=3"])
    assert (config.acquisition.strategy, config.acquisition.batch_size) == ("topk-bald", 3)
    assert config.campaign == Config().campaign


def test_identity_ignores_what_may_change_on_resume():
    a = validate({"campaign": {"rounds": 3}, "training": {"device": "cpu"}}, check_names=False)
    b = validate(
        {"campaign": {"rounds": 9}, "training": {"device": "auto", "num_threads": 2}},
        check_names=False,
    )
    assert a.identity() == b.identity()
    c = validate({"acquisition": {"coldness": 2.0}}, check_names=False)
    assert c.identity() != a.identity()


def test_acquisition_keys_keep_their_order():
    # The acquisition section is built from two schemas; params.yaml files list the strategy
    # first all the same, as the root params.yaml does.
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    dumped = yaml.safe_load(dump_yaml(Config()))
    for section in Config.model_fields:
        assert list(dumped[section]) == list(data[section]), section
    assert list(dumped["acquisition"])[0] == "strategy"


# ------------------------------------------------------------------ the benchmark section
def test_the_campaign_schema_leaves_the_benchmark_section_to_its_owner():
    # Whatever the comparison's section holds, a campaign neither reads nor judges it.
    config = validate({"campaign": {"seed": 4}, "benchmark": {"label_budjet": "lots"}})
    assert config.campaign.seed == 4
    assert "benchmark" not in config.to_dict()


def test_validating_a_campaign_imports_nothing_of_the_comparison():
    code = (
        "import sys, yaml\n"
        "from baldflow.config import load_config\n"
        f"load_config({str(ROOT / 'params.yaml')!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith('baldflow.comparison')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


def test_config_module_has_no_import_of_the_comparison():
    # Not even a lazy one inside a function: the comparison builds on the campaign schema.
    tree = ast.parse((ROOT / "baldflow" / "config.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not [name for name in imported if name.startswith("baldflow.comparison")]


# ------------------------------------------------------------------ MC samples and strategies
# Hand-picked: every mode over the disagreement scores, and BatchBALD.
NEED_TWO_SAMPLES = [
    "power-bald",
    "topk-bald",
    "softmax-bald",
    "softrank-bald",
    "batchbald",
    "power-variation_ratios",
    "topk-mean_std",
]


@pytest.mark.parametrize("strategy", NEED_TWO_SAMPLES)
def test_one_mc_sample_is_refused_for_bald_like_strategies(strategy):
    with pytest.raises(ConfigError) as info:
        validate({"acquisition": {"strategy": strategy, "mc_samples": 1}})
    text = str(info.value)
    assert text.startswith(f"acquisition.mc_samples must be >= 2 for strategy {strategy!r}, got 1")
    assert "0 for every point" in text
    assert validate({"acquisition": {"strategy": strategy, "mc_samples": 2}})


@pytest.mark.parametrize("strategy", ["random", "power-entropy", "topk-margin", "softmax-entropy"])
def test_one_mc_sample_is_fine_where_the_score_is_about_the_mean_prediction(strategy):
    config = validate({"acquisition": {"strategy": strategy, "mc_samples": 1}})
    assert config.acquisition.mc_samples == 1


def test_one_mc_sample_is_refused_through_overrides_too():
    with pytest.raises(ConfigError, match="acquisition.mc_samples must be >= 2"):
        load_config(ROOT / "params.yaml", ["acquisition.mc_samples=1"])
