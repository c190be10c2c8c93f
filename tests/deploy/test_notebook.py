"""notebooks/leader_student_champion.ipynb runs top to bottom (nbclient, a python3 kernel) in the
project copy of the default flow: it loads the champion through the catalog, scores two patients,
plots and shows the report's main table."""

from __future__ import annotations

from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "leader_student_champion.ipynb"


def test_the_notebook_runs_top_to_bottom(tracked_flow):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tracked_flow)}},  # the kernel's working directory
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(
        o.get("text", "") if o.get("output_type") == "stream" else str(o.get("data", {}))
        for o in outputs
    )
    assert "leader-student v" in text and "val PRAUC" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot"
    last = nb.cells[-1]["outputs"][-1]["data"]["text/html"]
    # the report's main table: the paired comparisons, one row per A - B, groups as columns
    assert "student_no_kd" in last and "overall" in last and "[" in last
