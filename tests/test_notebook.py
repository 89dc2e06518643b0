"""The cost exploration notebook runs headless, top to bottom, on a costed simulated lake."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks" / "cost_exploration.ipynb"


@pytest.mark.slow
def test_notebook_executes_and_draws_every_plot(costed_lake, monkeypatch):
    monkeypatch.setenv("NETMON_LAKE", str(costed_lake))
    monkeypatch.delenv("NETMON_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NB.parent)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue") if errors else ""
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    # one figure per analysis: class over time, namespaces/workloads, egress, matrix, savings
    assert len(images) == 5
    first = code[1].outputs[-1]["data"]["text/plain"]
    assert "rows" in first and "cost_usd" in first
