"""A full disk under the lake: the job fails with one line and exit 2, leaves no temporary
file and quarantines nothing; with space again, the next run equals an uninterrupted run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from jobs import catalog
from lake.storage import open_lake
from simulator.simulate import simulate

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "jobs", "fixtures")


def cost(root, cfg):
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", REPO), "NETMON_STORAGE_BACKOFF": "0.05"}
    r = subprocess.run([sys.executable, "-m", "jobs", "cost", "--lake", str(root), "--executor", "inline", "--quiet",
                        "--config", cfg, "--ip-ranges", FIXTURES], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    return r.returncode, r.stdout, r.stderr


def totals(root):
    lake = open_lake(str(root))
    t = pa.concat_tables([lake.read_table(r) for r in catalog.current_files(lake, "costs/flows")])
    return t.num_rows, pc.sum(t["tx_bytes"]).as_py() + pc.sum(t["rx_bytes"]).as_py(), round(pc.sum(t["cost_usd"]).as_py(), 9)


@pytest.fixture
def tiny_disk():
    mnt = tempfile.mkdtemp(prefix="netmon-faults-disk-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "netmon-faults", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)


def test_out_of_space_is_one_line_and_leaves_no_temporary_files(tmp_path, tiny_disk):
    src = tmp_path / "src"
    simulate(open_lake(str(src)), nodes=2, hours=1, seed=5)
    cfg = str(tmp_path / "job-config.json")
    shutil.copy(src / "_expected" / "job-config.json", cfg)
    ref = tmp_path / "ref"
    shutil.copytree(src, ref)
    assert cost(ref, cfg)[0] == 0
    root = os.path.join(tiny_disk, "lake")
    shutil.copytree(src, root)
    # fill the disk but for a few KB: enough for the job's start-up probe, not for a cost part
    filler = os.path.join(tiny_disk, "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    st = os.statvfs(tiny_disk)
    os.truncate(filler, os.path.getsize(filler) - 64 * 1024 + st.f_bavail * st.f_frsize)

    rc, out, err = cost(root, cfg)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: ") and "No space left on device" in lines[0]
    leftovers = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n.endswith(".tmp")]
    assert leftovers == []
    assert not os.path.exists(os.path.join(root, "_quarantine"))
    assert sorted(p.relative_to(src) for p in (src / "raw").rglob("*.parquet")) == \
        sorted(p.relative_to(root) for p in __import__("pathlib").Path(root, "raw").rglob("*.parquet"))

    os.unlink(filler)
    rc, out, err = cost(root, cfg)
    assert rc == 0, err
    assert totals(root) == totals(ref)
