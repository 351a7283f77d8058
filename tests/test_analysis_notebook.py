"""The variance notebook runs top to bottom on a synthetic study (nbclient, real kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from analysis_fixtures import SMOL_8, write_default_like_study
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "analysis" / "notebooks" / "variance.ipynb"


def _outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append(out["text"])
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_executes_on_a_study(tmp_path):
    study = write_default_like_study(tmp_path)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    params[0].source = f"STUDY = {str(study)!r}"
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert _outputs(code[-1]).strip() == "{'runs': 14, 'cells': 2, 'problems': 0}"
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the answer's figure, the perplexity figure and the loss curves
    answer = next(c for c in code if "sections_answer.answer" in c.source)
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in answer["outputs"])
    assert "- `8-bit` vs `32-bit`, 7 paired trials:" in shown  # opens with the report's answer
    assert SMOL_8.dirname in _outputs(next(c for c in code if "cell_verdicts" in c.source))


def test_notebook_cells_only_call_the_package():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for forbidden in ("summary.json", "open(", "read_csv", "json.load", "def ", "plt."):
        assert forbidden not in source, forbidden
    nbformat.validate(nb)  # raises when the file is not a valid notebook
