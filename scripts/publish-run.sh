#!/usr/bin/env bash
# Copies a finished run's report into results/<name>/ together with the exact
# command that produced it.
#   scripts/publish-run.sh RUN_DIR NAME "COMMAND THAT PRODUCED IT"
set -euo pipefail
run=$1 name=$2 cmd=$3
[ -f "$run/summary.json" ] || { echo "error: $run has no summary.json (run not finished)" >&2; exit 1; }
out="results/$name"
mkdir -p "$out"
cp "$run/report.md" "$out/README.md"
cp "$run/results.csv" "$out/results.csv"
cp "$run/metrics.jsonl" "$out/metrics.jsonl"
cp "$run/config.toml" "$out/config.toml"
{
  echo "# Produced on $(date -u +%Y-%m-%d) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
  echo "$cmd"
} > "$out/command.txt"
printf '\nProduced by:\n\n```\n%s\n```\n' "$cmd" >> "$out/README.md"
echo "wrote $out"
