"""Entry point of the comparison stages: `python -m baldflow.comparison run-one|report`."""

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
        "--params", default="params.yaml", metavar="FILE", help="file with the benchmark section"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("run-one", help="run one campaign (strategy x seed) and write its curve")
    p.add_argument("--strategy", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", default="data/benchmark/campaigns", metavar="DIR")
    p.add_argument(
        "--scratch",
        default=None,
        metavar="DIR",
        help="where throwaway workspaces go (default: $BALDFLOW_BENCH_SCRATCH or "
        "<tmp>/baldflow-benchmark)",
    )
    p.add_argument("--keep-workspace", action="store_true", help="keep the campaign workspace")
    p = sub.add_parser("report", help="aggregate the campaigns: table, metrics, plots")
    p.add_argument("--campaigns", default="data/benchmark/campaigns", metavar="DIR")
    p.add_argument("--out", default="data/benchmark/report", metavar="DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from baldflow.comparison.config import load_benchmark
    from baldflow.config import ConfigError

    try:
        bench = load_benchmark(args.params)
        if args.command == "run-one":
            from baldflow.comparison.campaigns import run_one

            run_one(
                bench,
                args.strategy,
                args.seed,
                project_root=Path(args.params).resolve().parent,
                out_dir=args.out,
                scratch=args.scratch,
                keep_workspace=args.keep_workspace,
            )
        else:
            from baldflow.comparison.report import write_report

            write_report(bench, args.campaigns, args.out)
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"FileNotFoundError: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
