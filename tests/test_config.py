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
    with_identity,
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
        "scale",
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
    # A section, like --set's message for one, listing the sections there are.
    with pytest.raises(ConfigError, match=r"sampling is not a known section \(sections: camp"):
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
    "power-variation-ratios",
    "topk-mean-std",
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


# ------------------------------------------------------------------ errors that say the fix
# Issue 10: the field, the value, what is allowed and the nearest valid name.
ACQUISITION_KEYS = (
    "strategy, batch_size, coldness, mc_samples, batchbald_candidates, batchbald_num_samples, "
    "chunk_size, epig_targets, coldness_end, shadow_batchbald"
)


def config_error(*overrides: str, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


def test_an_unknown_key_lists_its_section_and_guesses_the_name():
    assert config_error("acquisition.batchsize=5") == (
        "acquisition.batchsize is not a known parameter (got 5); did you mean "
        f"acquisition.batch_size? (acquisition parameters: {ACQUISITION_KEYS})"
    )
    # The right key in the wrong section.
    assert "did you mean acquisition.strategy?" in config_error("training.strategy=random")
    # Nothing close: no guess, the list all the same.
    text = config_error("model.widht_multiplier=2")
    assert "did you mean" not in text
    assert "(model parameters: name, dropout, options, weights, head, head_dropout, freeze)" in text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("acquisition.batch_size=abc", "acquisition.batch_size must be an integer, got 'abc'"),
        ("campaign.rounds=2.5", "campaign.rounds must be an integer, got 2.5"),
        ("acquisition.batch_size=", "acquisition.batch_size must be an integer, got None"),
        ("training.learning_rate=fast", "training.learning_rate must be a number, got 'fast'"),
        ("data.options=5", "data.options must be a mapping, got 5"),
        ("tracking.experiment=[1]", "tracking.experiment must be text, got [1]"),
    ],
)
def test_a_value_of_the_wrong_type_says_what_the_field_takes(override, message):
    # Not pydantic's "Input should be a valid integer, unable to parse string as an integer".
    assert config_error(override) == message


@pytest.mark.parametrize(
    ("override", "guess"),
    [
        ("oracle.kind=simulate", "did you mean 'simulated'?"),
        ("acquisition.strategy=powerbald", "did you mean power-bald?"),
        ("model.name=mpl", "did you mean mlp?"),
        ("data.source=mnits", "did you mean mnist?"),
    ],
)
def test_a_mistyped_name_gets_the_nearest_valid_one(override, guess):
    text = config_error(override)
    assert text.endswith(guess)
    assert "must be one of" in text


def test_set_without_a_section_or_with_a_mistyped_one_gets_the_set_that_works():
    text = config_error("batch_size=5")
    assert text.endswith(
        "did you mean --set training.batch_size=5 or --set acquisition.batch_size=5?"
    )
    assert config_error("coldnes=2").endswith("did you mean --set acquisition.coldness=2?")
    text = config_error("acquisiton.batch_size=5")
    assert text.startswith("acquisiton is not a known section; did you mean ")
    assert "--set acquisition.batch_size=5?" in text
    assert "(e.g. --set acquisition.batch_size=20)" in config_error("acquisition.batch_size")


def test_an_error_from_the_file_names_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("acquisition:\n  batchsize: 4\n")
    text = config_error(path=params)
    assert text.endswith(f"(acquisition.batchsize set in {params})")
    # What the command line typed is the user's to see in the command line.
    params.write_text("acquisition:\n  batch_size: 4\n")
    assert "set in" not in config_error("acquisition.batch_size=abc", path=params)


def test_overrides_leave_the_callers_mapping_alone():
    data = {"data": {"options": {"pool_size": 10}}}
    apply_overrides(data, ["data.options.val_size=5"])
    assert data == {"data": {"options": {"pool_size": 10}}}


def test_a_recorded_identity_wins_over_the_file_and_overrides_win_over_both(tmp_path):
    recorded = validate(
        {"campaign": {"name": "old", "seed": 7}, "acquisition": {"batch_size": 3}}
    ).identity()
    recorded["model"]["retired_key"] = 1  # a key today's schema no longer has
    params = tmp_path / "params.yaml"
    params.write_text("campaign:\n  name: new\n  rounds: 4\ntraining:\n  device: auto\n")
    config = load_config(params, ["campaign.rounds=9"], identity=recorded)
    assert (config.campaign.name, config.campaign.seed) == ("old", 7)
    assert config.acquisition.batch_size == 3
    assert (config.campaign.rounds, config.training.device) == (9, "auto")
    assert "retired_key" not in with_identity({}, recorded)["model"]


def test_a_tracking_uri_with_a_password_is_refused_without_showing_it():
    """campaign.yaml records tracking.mlflow_uri in git: a password there would be committed."""
    with pytest.raises(ConfigError) as caught:
        validate({"tracking": {"mlflow_uri": "http://ann:s3cret-pw@127.0.0.1:5000"}})
    message = str(caught.value)
    assert message.startswith("tracking.mlflow_uri must not carry a password")
    assert "MLFLOW_TRACKING_PASSWORD" in message
    assert "s3cret-pw" not in message
    # A user name alone is no secret.
    assert validate({"tracking": {"mlflow_uri": "http://ann@127.0.0.1:5000"}}).tracking.mlflow_uri
