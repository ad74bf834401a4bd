"""Strategy comparison: curve maths by hand, the benchmark schema, the report on synthetic
campaigns, and real tiny benchmark campaigns through the campaign flow."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from baldflow.comparison import (
    BenchmarkConfig,
    Curve,
    area_under_curve,
    campaign_params,
    labels_to_target,
    load_benchmark,
    validate_benchmark,
)
from baldflow.comparison.__main__ import main as comparison_main
from baldflow.comparison.campaigns import curve_paths
from baldflow.comparison.curves import CurveError, aggregate, mean_curve
from baldflow.comparison.report import markdown_table, write_report
from baldflow.config import AcquisitionConfig, CampaignConfig, Config, ConfigError, validate


# ------------------------------------------------------------------------------ curve maths
def test_labels_to_target_is_the_first_size_at_or_above_the_target():
    labeled = [20, 30, 40, 50]
    accuracy = [0.50, 0.91, 0.85, 0.95]
    assert labels_to_target(labeled, accuracy, 0.90) == 30
    # Reaching the target exactly counts; a later dip does not undo an earlier crossing.
    assert labels_to_target(labeled, accuracy, 0.91) == 30
    assert labels_to_target(labeled, accuracy, 0.95) == 50


def test_labels_to_target_not_reached_is_none():
    assert labels_to_target([20, 30], [0.5, 0.8], 0.9) is None


def test_area_under_curve_by_hand():
    # Trapezoids: (0 + 1)/2 * 10 + (1 + 1)/2 * 10 = 15 over a range of 20 labels.
    assert area_under_curve([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    # Unequal widths: (0.5+0.7)/2*10 + (0.7+0.9)/2*30 = 6 + 24 = 30 over 40.
    assert area_under_curve([20, 30, 60], [0.5, 0.7, 0.9]) == pytest.approx(0.75)
    # A flat curve's normalised area is its level; one point is its own accuracy.
    assert area_under_curve([20, 30, 40], [0.6, 0.6, 0.6]) == pytest.approx(0.6)
    assert area_under_curve([20], [0.42]) == pytest.approx(0.42)


def test_curves_refuse_bad_input_with_clear_messages():
    with pytest.raises(CurveError, match="labeled must increase"):
        area_under_curve([20, 20], [0.5, 0.6])
    with pytest.raises(CurveError, match="labeled has 2 points but accuracy has 1"):
        labels_to_target([20, 30], [0.5], 0.9)
    with pytest.raises(CurveError, match=r"test_accuracy must lie in \[0, 1\], got 1.5"):
        Curve([20], [1.5])
    with pytest.raises(CurveError, match="at least one point"):
        Curve([], [])


def _curve(accuracy, start=20, step=10, seconds=0.1):
    labeled = [start + step * i for i in range(len(accuracy))]
    return Curve(
        labeled,
        list(accuracy),
        seconds_acquisition=[seconds] * len(accuracy),
        seconds_train=[1.0] * len(accuracy),
    )


def test_aggregate_over_seeds_with_a_seed_that_never_reaches():
    curves = [
        _curve([0.5, 0.9, 0.95], seconds=0.1),  # reaches 0.9 at 30
        _curve([0.5, 0.7, 0.92], seconds=0.3),  # reaches at 40
        _curve([0.5, 0.6, 0.70], seconds=0.2),  # never
    ]
    s = aggregate("power-bald", curves, 0.9)
    assert (s.seeds, s.reached) == (3, 2)
    assert s.labels_to_target_mean == pytest.approx(35.0)
    assert s.labels_to_target_std == pytest.approx(math.sqrt(50.0))  # sample std of 30, 40
    # Median with "not reached" counted as beyond any size: sorted 30, 40, inf.
    assert s.labels_to_target_median == 40
    assert s.acquisition_seconds_mean == pytest.approx(0.2)
    assert s.acquisition_seconds_std == pytest.approx(0.1)
    expected_auc = [area_under_curve(c.labeled, c.test_accuracy) for c in curves]
    assert s.auc_mean == pytest.approx(sum(expected_auc) / 3)
    assert s.final_accuracy_mean == pytest.approx((0.95 + 0.92 + 0.70) / 3)


def test_aggregate_when_no_seed_or_most_seeds_do_not_reach():
    never = aggregate("topk-bald", [_curve([0.5, 0.6]), _curve([0.5, 0.7])], 0.9)
    assert never.reached == 0
    assert math.isnan(never.labels_to_target_mean)
    assert math.isinf(never.labels_to_target_median)
    mostly = aggregate("random", [_curve([0.95]), _curve([0.5]), _curve([0.5])], 0.9)
    assert mostly.reached == 1 and math.isinf(mostly.labels_to_target_median)
    even = aggregate("x", [_curve([0.5, 0.95]), _curve([0.95, 0.95])], 0.9)
    assert even.labels_to_target_median == pytest.approx(25.0)


def test_mean_curve_band_over_seeds():
    rows = mean_curve([_curve([0.2, 0.6]), _curve([0.4, 0.8]), _curve([0.6, 1.0])])
    assert [r["labeled"] for r in rows] == [20, 30]
    assert rows[0]["accuracy_mean"] == pytest.approx(0.4)
    assert rows[0]["accuracy_std"] == pytest.approx(0.2)
    assert (rows[1]["accuracy_min"], rows[1]["accuracy_max"]) == (0.6, 1.0)


def test_curve_from_a_campaign_rounds_summary_skips_round_zero():
    rounds = [
        {"round": "0", "train_size": "0", "labeled": "20", "test_accuracy": ""},
        {
            "round": "2",
            "train_size": "30",
            "test_accuracy": "0.8",
            "test_nll": "0.5",
            "seconds_compute": "3.0",
            "seconds_acquisition": "0.5",
        },
        {
            "round": "1",
            "train_size": "20",
            "test_accuracy": "0.6",
            "test_nll": "0.9",
            "seconds_compute": "2.0",
            "seconds_acquisition": "0.25",
        },
    ]
    curve = Curve.from_rounds(rounds, {1: {"seconds_score": 0.2, "seconds_select": 0.05}})
    assert curve.labeled == [20, 30]
    assert curve.test_accuracy == [0.6, 0.8]
    assert curve.seconds_train == [1.75, 2.5]
    assert curve.seconds_select[0] == 0.05 and math.isnan(curve.seconds_select[1])


def test_curve_csv_round_trip_keeps_missing_columns_missing(tmp_path):
    curve = Curve([20, 30], [0.5, 0.75], seconds_acquisition=[0.1, 0.2])
    curve.write_csv(tmp_path / "c.csv")
    back = Curve.read_csv(tmp_path / "c.csv")
    assert back.labeled == [20, 30] and back.test_accuracy == [0.5, 0.75]
    assert back.seconds_acquisition == [0.1, 0.2]
    assert all(math.isnan(v) for v in back.seconds_select)


# ------------------------------------------------------------------------------ the schema
def test_benchmark_defaults_are_the_issue_setting():
    bench = validate_benchmark({})
    assert bench.strategies == [
        "random",
        "topk-bald",
        "power-bald",
        "softmax-bald",
        "softrank-bald",
        "batchbald",
        "power-epig",
        "badge",
        "coreset",
        "annealed-power-bald",
        "stochastic-batchbald",
    ]
    assert bench.coldness_grid == [0.25, 1, 4, 8, 16]  # the authors' grid
    assert len(bench.seeds) >= 3
    assert (bench.data.source, bench.data.repeat, bench.data.noise_std) == ("digits", 3, 0.1)
    assert (bench.initial_per_class, bench.batch_size) == (2, 10)
    # Round r trains on 20 + 10 (r - 1) labels: 15 rounds reach a budget of 160.
    assert bench.rounds(num_classes=10) == 15


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"batch_sise": 5}, "benchmark.batch_sise is not a known parameter"),
        ({"batch_size": 0}, "benchmark.batch_size must be >= 1, got 0"),
        ({"target_accuracy": 1.5}, "benchmark.target_accuracy must be <= 1"),
        ({"seeds": [0, 0]}, "benchmark.seeds must not repeat a seed"),
        ({"strategies": ["power-bal"]}, "benchmark.strategies.0 must be one of .*power-bald"),
        ({"data": {"source": "mnits"}}, "benchmark.data.source must be one of .*digits"),
        ({"training": {"max_epoch": 3}}, "benchmark.training.max_epoch is not a known"),
        ("fast", "benchmark must be a mapping"),
    ],
)
def test_benchmark_errors_name_field_and_value(section, message):
    with pytest.raises(ConfigError, match=message):
        validate_benchmark(section)


def test_the_benchmark_section_is_checked_by_its_own_loader(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"campaign": {"seed": 4}, "benchmark": {"label_budjet": 100}}))
    # The campaign schema skips the section; the comparison's loader is the one that judges it.
    assert validate(yaml.safe_load(params.read_text())).campaign.seed == 4
    with pytest.raises(ConfigError, match="benchmark.label_budjet is not a known parameter"):
        load_benchmark(params)
    code = comparison_main(["--params", str(params), "report", "--campaigns", str(tmp_path)])
    assert code == 2


def test_benchmark_reuses_the_campaign_acquisition_schema():
    # Same keys, defaults and bounds as a campaign's acquisition section (bar the strategy,
    # which the benchmark varies): one schema, not a copy that can drift.
    for name, field in AcquisitionConfig.model_fields.items():
        if name == "strategy":
            continue
        assert name in BenchmarkConfig.model_fields, name
        mine = BenchmarkConfig.model_fields[name]
        assert (mine.annotation, mine.default, mine.metadata) == (
            field.annotation,
            field.default,
            field.metadata,
        ), name
    campaign = CampaignConfig.model_fields["initial_per_class"]
    mine = BenchmarkConfig.model_fields["initial_per_class"]
    assert (mine.default, mine.metadata) == (campaign.default, campaign.metadata)
    for key in ("model", "training"):
        assert BenchmarkConfig.model_fields[key].annotation is Config.model_fields[key].annotation
    # What the benchmark sets is what every campaign of it gets, field for field.
    bench = validate_benchmark({"coldness": 3.0, "chunk_size": 77, "batchbald_candidates": 50})
    params = campaign_params(bench, "batchbald", 0, num_classes=10, mlflow_uri="sqlite:///x.db")
    expected = AcquisitionConfig(strategy="batchbald", coldness=3.0, chunk_size=77)
    expected.batchbald_candidates = 50
    assert params["acquisition"] == expected.model_dump(mode="json")
    assert list(params["acquisition"])[0] == "strategy"


def test_benchmark_refuses_one_mc_sample_for_bald_like_strategies():
    with pytest.raises(ConfigError) as info:
        validate_benchmark({"mc_samples": 1, "strategies": ["random", "power-bald"]})
    assert str(info.value).startswith(
        "benchmark.mc_samples must be >= 2 for strategy 'power-bald', got 1"
    )
    fine = validate_benchmark({"mc_samples": 1, "strategies": ["random", "power-entropy"]})
    assert fine.mc_samples == 1


def test_the_repository_params_yaml_is_valid():
    from pathlib import Path

    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    validate(params)
    validate_benchmark(params["benchmark"])


def test_campaign_params_follow_the_benchmark():
    bench = validate_benchmark({"batch_size": 5, "label_budget": 40, "mc_samples": 7})
    params = campaign_params(bench, "power-bald", 1, num_classes=10, mlflow_uri="sqlite:///x.db")
    assert params["campaign"]["rounds"] == 5  # trains on 20, 25, ..., 40
    assert params["campaign"]["name"] == f"power-bald-seed1-{bench.fingerprint()}"
    stamped = campaign_params(
        bench, "power-bald", 1, num_classes=10, mlflow_uri="sqlite:///x.db", suffix="1124051700"
    )
    assert stamped["campaign"]["name"].endswith("-1124051700")
    assert params["acquisition"]["strategy"] == "power-bald"
    assert params["acquisition"]["mc_samples"] == 7
    assert params["tracking"] == {
        "mlflow_uri": "sqlite:///x.db",
        "experiment": bench.experiment,
        "register_model": False,
    }
    # A different setting gets a different campaign name, so MLflow keeps their runs apart.
    other = campaign_params(
        validate_benchmark({"batch_size": 6, "label_budget": 40}),
        "power-bald",
        1,
        num_classes=10,
        mlflow_uri="sqlite:///x.db",
    )
    assert other["campaign"]["name"] != params["campaign"]["name"]
    with pytest.raises(ConfigError, match="strategy 'softmax-entropy' is not in"):
        campaign_params(bench, "softmax-entropy", 1, num_classes=10, mlflow_uri="sqlite:///x")
    with pytest.raises(ConfigError, match="benchmark.label_budget must be >= the initial"):
        validate_benchmark({"label_budget": 10}).rounds(num_classes=10)


# ------------------------------------------------------------------------------ the report
def _write_campaigns(directory, bench: BenchmarkConfig, levels: dict[str, list[list[float]]]):
    for strategy, per_seed in levels.items():
        for seed, accuracy in zip(bench.seeds, per_seed, strict=True):
            csv_path, _ = curve_paths(directory, strategy, seed)
            seconds = 5.0 if strategy == "batchbald" else 0.05
            _curve(accuracy, seconds=seconds).write_csv(csv_path)


def test_report_on_synthetic_campaigns(tmp_path):
    bench = validate_benchmark(
        {
            "strategies": ["random", "power-bald", "batchbald"],
            "seeds": [0, 1],
            "target_accuracy": 0.9,
        }
    )
    _write_campaigns(
        tmp_path / "campaigns",
        bench,
        {
            "random": [[0.5, 0.7, 0.8], [0.5, 0.75, 0.85]],
            "power-bald": [[0.6, 0.9, 0.95], [0.6, 0.85, 0.92]],
            "batchbald": [[0.6, 0.92, 0.96], [0.65, 0.9, 0.93]],
        },
    )
    summaries = write_report(bench, tmp_path / "campaigns", tmp_path / "report")
    by_name = {s.strategy: s for s in summaries}
    assert by_name["power-bald"].labels_to_target_mean == pytest.approx(35.0)
    assert by_name["batchbald"].labels_to_target_mean == pytest.approx(30.0)
    assert by_name["random"].reached == 0

    report = tmp_path / "report"
    table = (report / "summary.md").read_text()
    assert "| random | not reached | 0/2 | not reached (> 40) |" in table
    assert "| power-bald | 35 ± 7 | 2/2 | 35 |" in table
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["target_accuracy"] == 0.9
    assert metrics["random"]["labels_to_target_mean"] is None  # JSON has no NaN
    assert metrics["batchbald"]["acquisition_seconds_mean"] == pytest.approx(5.0)
    curve_rows = (report / "learning_curves.csv").read_text().splitlines()
    assert curve_rows[0] == (
        "strategy,labeled,accuracy_mean,accuracy_std,accuracy_min,accuracy_max,seeds"
    )
    assert "power-bald,20,0.6,0,0.6,0.6,2" in curve_rows
    png = (report / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (report / "summary.csv").read_text().startswith("strategy,seeds,reached,")


def test_report_entry_point_names_a_missing_campaign(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"benchmark": {"strategies": ["random"], "seeds": [3]}}))
    code = comparison_main(
        ["--params", str(params), "report", "--campaigns", str(tmp_path / "none")]
    )
    assert code == 1
    assert "random-seed3.csv does not exist" in capsys.readouterr().err


def test_markdown_table_marks_not_reached():
    s = aggregate("topk-bald", [_curve([0.5, 0.6])], 0.9)
    line = markdown_table([s], 0.9, budget=30).splitlines()[2]
    assert line.startswith("| topk-bald | not reached | 0/1 | not reached (> 30) |")


# ------------------------------------------------------------------------------ a real campaign
@pytest.mark.usefixtures("prefect_harness")
def test_run_one_real_tiny_campaign(tmp_path, monkeypatch):
    """One benchmark campaign through the campaign flow, Prefect, MLflow, git and DVC."""
    from mlflow.tracking import MlflowClient

    from baldflow.comparison.campaigns import _QUIET_TASK_RUNS, run_one
    from baldflow.workspace.repo import OFFLINE_ENVIRONMENT

    # run_one sets these; monkeypatch undoes them after the test.
    for key, value in {**OFFLINE_ENVIRONMENT, **_QUIET_TASK_RUNS}.items():
        monkeypatch.setenv(key, value)
    bench = validate_benchmark(
        {
            "strategies": ["power-bald"],
            "seeds": [5],
            "initial_per_class": 1,
            "batch_size": 5,
            "label_budget": 20,
            "mc_samples": 4,
            "data": {
                "source": "digits",
                "repeat": 2,
                "noise_std": 0.1,
                "options": {"pool_size": 200},
            },
            "training": {"max_epochs": 2, "epoch_samples": 64, "eval_mc_samples": 2},
        }
    )
    record = run_one(
        bench,
        "power-bald",
        5,
        project_root=tmp_path,
        out_dir=tmp_path / "out",
        scratch=tmp_path / "scratch",
    )
    curve = Curve.read_csv(tmp_path / "out" / "power-bald-seed5.csv")
    assert curve.labeled == [10, 15, 20]
    summary = json.loads((tmp_path / "out" / "power-bald-seed5.json").read_text())
    assert summary["campaign"] == record["campaign"]
    assert summary["auc"] == pytest.approx(area_under_curve(curve.labeled, curve.test_accuracy))
    # The throwaway workspace is gone; only the shared Prefect home may stay in the scratch dir.
    leftovers = [p.name for p in (tmp_path / "scratch").iterdir()]
    assert not [name for name in leftovers if name.startswith(record["campaign"])]
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["mlflow_run_id"])
    assert run.data.tags["benchmark.strategy"] == "power-bald"
    assert run.data.metrics["benchmark.auc"] == pytest.approx(summary["auc"])
    # Scoring and selection seconds come from the round runs, one per curve point.
    assert all(v >= 0 for v in curve.seconds_select)
    experiment = client.get_experiment_by_name(bench.experiment)
    assert experiment.artifact_location.startswith((tmp_path / "mlflow").as_uri())
    rounds = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`baldflow.kind` = 'round'"
    )
    assert len(rounds) == 3


def _tiny_bench(**changes):
    section = {
        "strategies": ["power-bald"],
        "seeds": [5],
        "initial_per_class": 1,
        "batch_size": 5,
        "label_budget": 20,
        "mc_samples": 4,
        "data": {"source": "digits", "repeat": 1, "options": {"pool_size": 200}},
        "training": {"max_epochs": 2, "epoch_samples": 64, "eval_mc_samples": 2},
    }
    return validate_benchmark({**section, **changes})


@pytest.mark.usefixtures("prefect_harness")
def test_a_failing_campaign_raises_its_cause_and_keeps_its_workspace(tmp_path, monkeypatch):
    from baldflow.comparison.campaigns import _QUIET_TASK_RUNS, CampaignFailedError, run_one
    from baldflow.data import DataSourceError
    from baldflow.workspace import Workspace
    from baldflow.workspace.repo import OFFLINE_ENVIRONMENT

    for key, value in {**OFFLINE_ENVIRONMENT, **_QUIET_TASK_RUNS}.items():
        monkeypatch.setenv(key, value)
    # 200 pool points of 10 classes have about 20 of each: 30 per class fails inside the flow,
    # when it chooses the initial labeled set, after the schema and the source said yes.
    bench = _tiny_bench(initial_per_class=30, label_budget=400)
    with pytest.raises(CampaignFailedError) as info:
        run_one(
            bench,
            "power-bald",
            5,
            project_root=tmp_path,
            out_dir=tmp_path / "out",
            scratch=tmp_path / "scratch",
        )
    error = info.value
    # The flow's own exception, not an exit code: the reason reads in the message and the chain.
    assert isinstance(error.__cause__, DataSourceError)
    assert "need per_class=30" in str(error)
    assert Workspace.is_workspace(error.workspace)
    assert error.workspace.parent == tmp_path / "scratch"
    assert f"kept at {error.workspace}" in str(error)
    assert not (tmp_path / "out" / "power-bald-seed5.json").exists()


def test_campaigns_use_the_flow_not_the_command_line():
    import ast
    from pathlib import Path

    import baldflow.comparison.campaigns as campaigns

    tree = ast.parse(Path(campaigns.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert "baldflow.cli" not in imported
    assert "baldflow.flows.campaign" in imported


def test_the_flow_is_imported_after_the_offline_environment(tmp_path):
    """Prefect reads its settings once, at import: they must be in place before."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from baldflow.comparison.campaigns import load_campaign_flow\n"
        "assert 'prefect' not in sys.modules\n"
        f"flow = load_campaign_flow({str(tmp_path)!r})\n"
        "from prefect.settings import get_current_settings\n"
        "settings = get_current_settings()\n"
        "print(settings.home, settings.server.analytics_enabled, flow.name)\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "DO_NOT_TRACK", "MLFLOW_", "DVC_"))
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    # The workspace's own Prefect home and no telemetry, as `baldflow run` sets them up.
    assert done.stdout.split() == [
        str(tmp_path.resolve() / ".prefect"),
        "False",
        "baldflow-campaign",
    ]


# ------------------------------------------------------------------------------ new columns
def _batch_curve(accuracy, joint_mi, ratio, pairs, start=20, step=10):
    n = len(accuracy)
    return Curve(
        [start + step * i for i in range(n)],
        list(accuracy),
        seconds_score=[0.5] * n,
        seconds_select=[0.25] * n,
        batch_joint_mi=[joint_mi] * n,
        batch_redundancy_ratio=[ratio] * n,
        batch_near_duplicate_pairs=[pairs] * n,
    )


def test_report_shows_acquisition_seconds_and_batch_quality_and_reads_old_curves(tmp_path):
    bench = validate_benchmark({"strategies": ["power-bald", "topk-bald"], "seeds": [0, 1]})
    campaigns = tmp_path / "campaigns"
    _batch_curve([0.6, 0.9], 2.0, 0.1, 0.0).write_csv(curve_paths(campaigns, "power-bald", 0)[0])
    _batch_curve([0.6, 0.8], 1.0, 0.3, 2.0).write_csv(curve_paths(campaigns, "power-bald", 1)[0])
    # topk-bald's curves predate the batch columns: written with the old header only.
    old_header = "labeled,test_accuracy,test_nll,seconds_acquisition,seconds_score,"
    old_header += "seconds_select,seconds_train"
    for seed in (0, 1):
        path = curve_paths(campaigns, "topk-bald", seed)[0]
        path.write_text(f"{old_header}\n20,0.5,,0.2,,,1.0\n30,0.7,,0.4,,,1.0\n")
    summaries = {s.strategy: s for s in write_report(bench, campaigns, tmp_path / "report")}
    power = summaries["power-bald"]
    # No seconds_acquisition column values: score + select per round, mean over rounds/seeds.
    assert power.acquisition_seconds_mean == pytest.approx(0.75)
    assert power.batch_joint_mi_mean == pytest.approx(1.5)
    assert power.batch_redundancy_ratio_mean == pytest.approx(0.2)
    assert power.batch_near_duplicate_pairs_mean == pytest.approx(1.0)
    old = summaries["topk-bald"]
    assert old.acquisition_seconds_mean == pytest.approx(0.3)
    assert math.isnan(old.batch_joint_mi_mean)
    table = (tmp_path / "report" / "summary.md").read_text()
    assert "| batch joint MI | redundancy ratio | near-duplicate pairs |" in table
    assert "| 1.500 | 0.200 | 1.00 |" in table
    topk_line = next(line for line in table.splitlines() if line.startswith("| topk-bald"))
    assert topk_line.endswith("| - | - | - |")
    rows = (tmp_path / "report" / "summary.csv").read_text().splitlines()
    assert rows[0].endswith(
        "batch_joint_mi_mean,batch_redundancy_ratio_mean,batch_near_duplicate_pairs_mean"
    )
    assert next(r for r in rows if r.startswith("topk-bald")).endswith(",,,")  # blank cells
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["power-bald"]["batch_joint_mi_mean"] == pytest.approx(1.5)
    assert metrics["topk-bald"]["batch_joint_mi_mean"] is None


def test_curve_keeps_the_round_metrics_from_mlflow():
    rows = [
        {"round": "0", "train_size": "20", "test_accuracy": ""},
        {"round": "1", "train_size": "20", "test_accuracy": "0.6", "seconds_acquisition": "0.3"},
        {"round": "2", "train_size": "30", "test_accuracy": "0.7", "seconds_acquisition": "0.4"},
    ]
    steps = {
        1: {"seconds_score": 0.2, "seconds_select": 0.1, "batch_joint_mi": 1.25},
        2: {"seconds_score": 0.3, "seconds_select": 0.1, "batch_near_duplicate_pairs": 3.0},
    }
    curve = Curve.from_rounds(rows, steps)
    assert curve.batch_joint_mi[0] == 1.25 and math.isnan(curve.batch_joint_mi[1])
    assert curve.batch_near_duplicate_pairs[1] == 3.0


def test_coldness_report_beside_the_authors_numbers(tmp_path):
    from baldflow.comparison.campaigns import coldness_variant
    from baldflow.comparison.report import AUTHORS_COLDNESS, write_coldness_report

    bench = validate_benchmark({"seeds": [0, 1], "coldness_grid": [0.25, 1, 4]})
    campaigns = tmp_path / "coldness"
    levels = {0.25: [0.6, 0.8, 0.9], 1: [0.6, 0.9, 0.92], 4: [0.7, 0.9, 0.95]}
    for beta, accuracy in levels.items():
        for seed in (0, 1):
            path = curve_paths(campaigns, "power-bald", seed, coldness_variant(beta))[0]
            assert path.name == f"power-bald-beta{beta:g}-seed{seed}.csv"
            _curve(accuracy).write_csv(path)
    # dvc.yaml renders a grid value written as 4.0 as "4.0": that name is found too.
    for seed in (0, 1):
        old = curve_paths(campaigns, "power-bald", seed, "beta4")[0]
        old.rename(old.with_name(f"power-bald-beta4.0-seed{seed}.csv"))
    rows = write_coldness_report(bench, campaigns, tmp_path / "report")
    assert [(beta, s.labels_to_target_mean) for beta, s, _ in rows] == [
        (0.25, 40.0),
        (1.0, 30.0),
        (4.0, 30.0),
    ]
    table = (tmp_path / "report" / "coldness.md").read_text()
    assert "| authors: labels to 90% | authors: accuracy at 300 |" in table
    assert "| 0.25 | 40 ± 0 | 2/2 | 40 | 0.900 | 40 |" in table
    assert "| 4 | 30 ± 0 | 2/2 | 30 | 0.950 | 40 |" in table
    assert table.splitlines()[-1].endswith("| 90 | 0.966 |")
    assert AUTHORS_COLDNESS[1.0] == (110, 0.957)
    csv_rows = (tmp_path / "report" / "coldness.csv").read_text().splitlines()
    assert csv_rows[0].startswith("coldness,seeds,reached,labels_to_target_mean")
    assert csv_rows[1].startswith("0.25,2,2,40,") and csv_rows[1].endswith(",120,0.943")
    metrics = json.loads((tmp_path / "report" / "coldness_metrics.json").read_text())
    assert metrics["beta1"]["labels_to_target_median"] == 30
    code = comparison_main(
        ["--params", str(_params_file(tmp_path, {"seeds": [7]})), "report-coldness",
         "--campaigns", str(campaigns), "--out", str(tmp_path / "r2")]
    )  # fmt: skip
    assert code == 1  # seed 7 was never run: the missing file is named


def _params_file(tmp_path, section):
    path = tmp_path / "bench-params.yaml"
    path.write_text(yaml.safe_dump({"benchmark": section}))
    return path


def test_fingerprint_ignores_evidence_and_the_ablation_lists():
    base = validate_benchmark({})
    same = [
        {"shadow_batchbald": True},
        {"coldness_grid": [1, 2]},
        {"strategies": ["random"], "seeds": [9]},
        {"chunk_size": 5},
        {"training": {"mixed_precision": True}},
    ]
    for change in same:
        assert validate_benchmark(change).fingerprint() == base.fingerprint(), change
    for change in ({"coldness": 4.0}, {"epig_targets": 50}, {"coldness_end": 1.0}):
        assert validate_benchmark(change).fingerprint() != base.fingerprint(), change
    # The new acquisition fields reach every campaign.
    bench = validate_benchmark({"epig_targets": 33, "coldness_end": 0.5, "shadow_batchbald": True})
    params = campaign_params(bench, "power-epig", 0, num_classes=10, mlflow_uri="sqlite:///x")
    acquisition = params["acquisition"]
    assert (acquisition["epig_targets"], acquisition["coldness_end"]) == (33, 0.5)
    assert acquisition["shadow_batchbald"] is True
    # The ablation's strategy may run even where the comparison's list leaves it out.
    bench = validate_benchmark({"strategies": ["random"]})
    params = campaign_params(bench, "power-bald", 0, num_classes=10, mlflow_uri="sqlite:///x")
    assert params["acquisition"]["strategy"] == "power-bald"
    with pytest.raises(ConfigError, match="coldness_grid must not repeat"):
        validate_benchmark({"coldness_grid": [1, 1.0]})
    with pytest.raises(ConfigError, match="coldness_strategy must be one of"):
        validate_benchmark({"coldness_strategy": "power-bal"})


def test_the_fashion_mnist_config_validates_and_says_when_the_data_is_missing(tmp_path, capsys):
    from pathlib import Path

    config = Path(__file__).parents[1] / "benchmarks" / "configs" / "fashion-mnist.yaml"
    bench = load_benchmark(config)
    assert (bench.data.source, bench.data.repeat, bench.data.noise_std) == ("fashion-mnist", 3, 0.1)
    assert (bench.model.name, bench.seeds) == ("cnn", [0, 1, 2])
    # Point it at an empty directory: the loader's own message, before any MLflow store exists.
    raw = yaml.safe_load(config.read_text())
    raw["benchmark"]["data"]["root"] = str(tmp_path / "empty")
    path = tmp_path / "fashion.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = comparison_main(
        ["--config", str(path), "run-one", "--strategy", "badge", "--seed", "0",
         "--out", str(tmp_path / "out"), "--project-root", str(tmp_path)]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found" in err and "dataset-fashion-mnist" in err
    assert not (tmp_path / "mlflow").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_run_one_real_tiny_badge_and_power_epig(tmp_path, monkeypatch):
    """The new strategies run as benchmark campaigns and record the batch evidence."""
    from baldflow.comparison.campaigns import _QUIET_TASK_RUNS, run_one
    from baldflow.workspace.repo import OFFLINE_ENVIRONMENT

    for key, value in {**OFFLINE_ENVIRONMENT, **_QUIET_TASK_RUNS}.items():
        monkeypatch.setenv(key, value)
    bench = _tiny_bench(strategies=["badge", "power-epig"], label_budget=15, epig_targets=20)
    for strategy in ("badge", "power-epig"):
        record = run_one(
            bench,
            strategy,
            5,
            project_root=tmp_path,
            out_dir=tmp_path / "out",
            scratch=tmp_path / "scratch",
        )
        curve = Curve.read_csv(tmp_path / "out" / f"{strategy}-seed5.csv")
        assert curve.labeled == [10, 15]
        assert all(v >= 0 for v in curve.batch_joint_mi), strategy
        assert all(v >= 0 for v in curve.seconds_score), strategy
        assert record["batch_joint_mi"] is not None
    # The ablation names its files by beta.
    record = run_one(
        _tiny_bench(label_budget=10),
        "power-bald",
        5,
        project_root=tmp_path,
        out_dir=tmp_path / "cold",
        scratch=tmp_path / "scratch",
        coldness=4.0,
    )
    assert record["coldness"] == 4.0
    assert (tmp_path / "cold" / "power-bald-beta4-seed5.json").exists()


def test_campaigns_started_together_on_a_fresh_project_share_one_store(tmp_path):
    """Two stages at a time on a fresh clone: both create ./mlflow's SQLite store at once; its
    migrations must run once (they collided: 'table _alembic_tmp_experiments already exists')."""
    import subprocess
    import sys
    import time

    start_at = time.time() + 8  # both processes past their imports, then at the same moment
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from baldflow.comparison.campaigns import _ensure_experiment, default_tracking_uri\n"
        "root = Path(sys.argv[1])\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "_ensure_experiment(default_tracking_uri(root), 'baldflow-comparison',"
        " root / 'mlflow' / 'artifacts')\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), str(start_at)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
