#!/usr/bin/env bash
# The embedded default: set up, simulate a small cluster into ./netmon-lake (once), run the cost job
# on local Ray over it, and print the summary. Re-running is incremental (nothing new: no work).
# Usage: scripts/demo.sh [LAKE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
LAKE=${1:-./netmon-lake}
scripts/setup.sh
if [ ! -d "$LAKE/raw/flows" ]; then
  .venv/bin/netmon-jobs simulate --lake "$LAKE" --nodes 6 --hours 2 --seed 7
fi
.venv/bin/netmon-jobs cost --lake "$LAKE"
