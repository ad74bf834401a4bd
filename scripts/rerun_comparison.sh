#!/usr/bin/env bash
# Rerun every campaign stage of dvc.yaml (comparison and coldness ablation) JOBS at a time
# through DVC itself, then the two reports, so that dvc.lock records the outputs that today's
# code produced. DVC releases its repository lock while a stage's command runs, so several
# `dvc repro` processes on disjoint stages can share one repository.
# Usage: scripts/rerun_comparison.sh [JOBS]     (default 2; one torch thread per campaign)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-2}
export PATH="$PWD/.venv/bin:$PATH"

mapfile -t stages < <(dvc stage list --name-only | grep -E '^(campaign|coldness)@')
echo "rerunning ${#stages[@]} campaign stages, $jobs at a time" >&2
logs=$(mktemp -d)
# -f: run even where dvc.lock looks current (it may have been stamped over stale outputs);
# -s: that stage only. One stage per dvc process so a failure names its stage; the others go
# on, and the reports run only when every campaign stage succeeded.
printf '%s\n' "${stages[@]}" |
    xargs -P "$jobs" -I{} sh -c 'dvc repro -f -s "$1" > "$2/$(echo "$1" | tr @ _).log" 2>&1 ||
        { echo "stage $1 failed: see $2" >&2; exit 1; }' _ {} "$logs"
dvc repro -f -s report
dvc repro -f -s coldness-report
dvc status
echo "logs of the campaign stages: $logs" >&2
