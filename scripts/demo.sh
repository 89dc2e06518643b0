#!/usr/bin/env bash
# The embedded default: set up, simulate five days of a 6-node, 3-zone cluster into ./netmon-lake
# (once), run the cost job on local Ray over it, print the summary, and write the HTML cost
# report. The days are the first five of a month, one busy hour each (a different seed each
# day, so workloads move and the report has a previous period to compare with): about $1.40
# of cross-zone, cross-region, NAT-processed internet egress, peering and endpoint traffic,
# with the month-to-date egress tier and its free allowance. Five days, not more: on a 2-core
# machine a simulated week took over a minute before set-up, and the demo should stay short.
# The simulated cluster has a peered VPC, described by the job config the simulator writes
# beside its ground truth; the sample cloud IP ranges in jobs/fixtures tag S3/EC2 addresses.
# Re-running is incremental: with nothing new, the job has nothing to do.
# Usage: scripts/demo.sh [LAKE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
LAKE=${1:-./netmon-lake}
scripts/setup.sh
if [ ! -d "$LAKE/raw/flows" ]; then
  for day in 1 2 3 4 5; do
    echo "demo: simulating 2026-01-0${day} 14:00-15:00 UTC (6 nodes) into $LAKE"
    .venv/bin/netmon-jobs simulate --lake "$LAKE" --nodes 6 --hours 1 --seed $((6 + day)) \
      --start "2026-01-0${day}T14:00Z" >/dev/null
  done
fi
.venv/bin/netmon-jobs cost --lake "$LAKE" --config "$LAKE/_expected/job-config.json" --ip-ranges jobs/fixtures
# The last two days against the two before them.
.venv/bin/netmon-jobs report --lake "$LAKE" --out "$LAKE/_reports/html" --start 2026-01-04 --end 2026-01-05
