"""The agent's entry point keeps heavy packages out of its process (see node_agent/lean.py)."""
from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import sys
from node_agent.lean import refuse_heavy_imports, allow_heavy_imports
assert refuse_heavy_imports()
import pyarrow as pa, pyarrow.parquet as pq, io
t = pa.table({"a": pa.array(list(range(5))), "s": pa.array(["x"] * 5)})   # converts Python objects
pq.write_table(t, io.BytesIO())
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg                  # the collector's imports
from pyroute2.iproute.linux import IPRoute
try:
    import pandas
    raise SystemExit("pandas imported")
except ModuleNotFoundError:
    pass
heavy = [m for m in ("pandas", "numpy", "pyroute2.ndb", "pyroute2.ipdb", "kubernetes_validate") if m in sys.modules]
print("heavy:", heavy)
allow_heavy_imports()
import pyroute2
assert hasattr(pyroute2, "IPRoute"), "the real package is back after allow_heavy_imports"
print("ok")
"""


def test_entry_point_guard_keeps_heavy_packages_out():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["heavy: []", "ok"]


def test_guard_is_not_installed_over_a_loaded_pandas():
    out = subprocess.run([sys.executable, "-c",
                          "import pandas\nfrom node_agent.lean import refuse_heavy_imports\n"
                          "print(refuse_heavy_imports())"], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
