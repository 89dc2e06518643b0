#!/usr/bin/env bash
# The embedded default: set up, simulate a 6-node, 3-zone cluster for 2 hours into
# ./netmon-lake (once), run the cost job on local Ray over it, and print the summary.
# The simulated cluster has a peered VPC, described by the job config the simulator writes
# beside its ground truth; the sample cloud IP ranges in jobs/fixtures tag S3/EC2 addresses.
# Re-running is incremental: with nothing new, the job has nothing to do.
# Usage: scripts/demo.sh [LAKE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
LAKE=${1:-./netmon-lake}
scripts/setup.sh
if [ ! -d "$LAKE/raw/flows" ]; then
  .venv/bin/netmon-jobs simulate --lake "$LAKE" --nodes 6 --hours 2 --seed 7
fi
.venv/bin/netmon-jobs cost --lake "$LAKE" --config "$LAKE/_expected/job-config.json" --ip-ranges jobs/fixtures
