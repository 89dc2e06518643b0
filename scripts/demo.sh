#!/usr/bin/env bash
# The embedded default: set up, simulate four days of a 4-node, 3-zone cluster into ./netmon-lake
# (once), run the cost job on local Ray over it, print the summary, and write the HTML cost
# report. The days are the 13th to the 16th of a month, one busy hour each (a different seed
# each day, so workloads move and the report has a previous period to compare with): cross-zone,
# cross-region, NAT-processed internet egress, peering and endpoint traffic.
# A real month: the lake starts on the 13th, and the account had already sent 150 GB to the
# internet since the 1st (what its bill shows as USE1-DataTransfer-Out-Bytes). The job config's
# egress_baseline says so, so the month's tiers start there: the free 100 GB are used up and
# the cluster's internet egress is billed from its first byte at $0.09/GB, as on the bill.
# Four days of four nodes, not more: on a 2-core machine shared with other work, five days of
# six nodes took over three minutes, and the demo should stay well under two.
# The simulated cluster has a peered VPC, described by the job config the simulator writes
# beside its ground truth; the sample cloud IP ranges in jobs/fixtures tag S3/EC2 addresses.
# Re-running is incremental: with nothing new, the job has nothing to do.
# Usage: scripts/demo.sh [LAKE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
LAKE=${1:-./netmon-lake}
BASELINE_GB=150
scripts/setup.sh
if [ ! -d "$LAKE/raw/flows" ]; then
  # one process for the four days: `netmon-jobs simulate --lake L --nodes 4 --hours 1 --seed S
  # --start 2026-01-DDT14:00Z` four times, without paying the interpreter's start-up four times
  .venv/bin/python - "$LAKE" <<'PY'
import contextlib, io, sys
from simulator.simulate import main
for day in (13, 14, 15, 16):
    print(f"demo: simulating 2026-01-{day} 14:00-15:00 UTC (4 nodes) into {sys.argv[1]}", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):  # its summary; progress goes to stderr
        rc = main(["--lake", sys.argv[1], "--nodes", "4", "--hours", "1", "--seed", str(day - 5),
                   "--start", f"2026-01-{day}T14:00Z"])
    if rc:
        sys.exit(rc)
PY
fi
# The simulator's job config (its peered VPC, NAT gateway, gateway endpoint) plus the month's
# egress used before the lake started.
CONFIG="$LAKE/_demo/job-config.json"
mkdir -p "$(dirname "$CONFIG")"
.venv/bin/python - "$LAKE/_expected/job-config.json" "$CONFIG" "$BASELINE_GB" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["egress_baseline"] = {"2026-01": {"aws/us-east-1": float(sys.argv[3])}}
json.dump(cfg, open(sys.argv[2], "w"), indent=1)
PY
echo "demo: internet egress before the lake's first hour: ${BASELINE_GB} GB in January (egress_baseline in $CONFIG)"
.venv/bin/netmon-jobs cost --lake "$LAKE" --config "$CONFIG" --ip-ranges jobs/fixtures
# The last two days against the two before them.
.venv/bin/netmon-jobs report --lake "$LAKE" --out "$LAKE/_reports/html" --start 2026-01-15 --end 2026-01-16
