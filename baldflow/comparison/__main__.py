"""Entry point of the comparison stages:
`python -m baldflow.comparison run-one|run-all|report|report-coldness`.

`--params FILE` (alias `--config`) reads the `benchmark` section of any YAML file, so another
data set is a file of its own (benchmarks/configs/fashion-mnist.yaml) rather than an edit of
params.yaml; `run-all` runs such a file's campaigns without DVC.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m baldflow.comparison",
        description="Strategy comparison: one benchmark campaign, or the report over all of them.",
    )
    parser.add_argument(
        "--params",
        "--config",
        dest="params",
        default="params.yaml",
        metavar="FILE",
        help="file with the benchmark section (params.yaml, or e.g. "
        "benchmarks/configs/fashion-mnist.yaml)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def campaign_options(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--out", default=out, metavar="DIR")
        p.add_argument(
            "--scratch",
            default=None,
            metavar="DIR",
            help="where throwaway workspaces go (default: $BALDFLOW_BENCH_SCRATCH or "
            "<tmp>/baldflow-benchmark)",
        )
        p.add_argument("--keep-workspace", action="store_true", help="keep the campaign workspace")
        # The MLflow store (./mlflow) belongs to the project, not to wherever the config lives.
        p.add_argument(
            "--project-root",
            default=None,
            metavar="DIR",
            help="where ./mlflow is (default: the current directory)",
        )

    p = sub.add_parser("run-one", help="run one campaign (strategy x seed) and write its curve")
    p.add_argument("--strategy", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument(
        "--coldness",
        default=None,
        metavar="BETA",
        help="override benchmark.coldness (the ablation); files are named "
        "<strategy>-beta<BETA>-seed<seed>, BETA as given",
    )
    campaign_options(p, "data/benchmark/campaigns")
    p = sub.add_parser(
        "run-all", help="run every strategy x seed of the file in turn (skips finished ones)"
    )
    campaign_options(p, "data/benchmark/campaigns")
    p.add_argument("--force", action="store_true", help="re-run campaigns that have a summary")
    p = sub.add_parser("report", help="aggregate the campaigns: table, metrics, plots")
    p.add_argument("--campaigns", default="data/benchmark/campaigns", metavar="DIR")
    p.add_argument("--out", default="data/benchmark/report", metavar="DIR")
    p = sub.add_parser(
        "report-coldness",
        help="the coldness ablation: labels to target and final accuracy per beta",
    )
    p.add_argument("--campaigns", default="data/benchmark/coldness", metavar="DIR")
    p.add_argument("--out", default="data/benchmark/report", metavar="DIR")
    return parser


def _coldness(text: str | None):
    """The --coldness value as a number, and its text as dvc.yaml rendered it (file names)."""
    from baldflow.config import ConfigError

    if text is None:
        return None, None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--coldness must be a number, got {text!r}") from None
    return value, f"beta{text}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from baldflow.comparison.config import load_benchmark
    from baldflow.config import ConfigError
    from baldflow.data import DataSourceError

    try:
        bench = load_benchmark(args.params)
        if args.command in ("run-one", "run-all"):
            from baldflow.comparison.campaigns import run_all, run_one

            common = {
                "project_root": Path(args.project_root or ".").resolve(),
                "out_dir": args.out,
                "scratch": args.scratch,
                "keep_workspace": args.keep_workspace,
            }
            if args.command == "run-one":
                coldness, variant = _coldness(args.coldness)
                run_one(
                    bench, args.strategy, args.seed, coldness=coldness, variant=variant, **common
                )
            else:
                run_all(bench, force=args.force, **common)
        elif args.command == "report":
            from baldflow.comparison.report import write_report

            write_report(bench, args.campaigns, args.out)
        else:
            from baldflow.comparison.report import write_coldness_report

            write_coldness_report(bench, args.campaigns, args.out)
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        # Also a data set that is not installed (DataNotFoundError says how to get it).
        print(f"FileNotFoundError: {exc}", file=sys.stderr)
        return 1
    except DataSourceError as exc:
        print(f"DataSourceError: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
