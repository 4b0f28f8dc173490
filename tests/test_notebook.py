"""Run notebooks/evaluate_auc.ipynb headless (nbclient) on a trained PPNet and a DNN export."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, small_config

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = REPO / "notebooks" / "evaluate_auc.ipynb"
KERNEL = "python3"


@pytest.fixture(scope="module")
def dnn_run(synthetic_dir, tmp_path_factory) -> Path:
    from ppnet.train import train

    run = tmp_path_factory.mktemp("runs") / "dnn"
    train(small_config("model.name=dnn"), str(synthetic_dir), run)
    return run


def kernelspec_for_this_python(root: Path) -> Path:
    """A `python3` kernelspec running sys.executable (the venv), wherever ipykernel's default points."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ppnet venv)",
                "language": "python",
            }
        )
    )
    return root


def cell_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out and "text/plain" in out.data:
            parts.append(out.data["text/plain"])
    return "".join(parts)


def images(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def test_committed_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is None and not c.outputs for c in code), "clear the notebook's outputs"
    # The first cell imports ppnet (TF_USE_LEGACY_KERAS) and loads TensorFlow before anything else does.
    assert code[0].source.splitlines()[0].startswith("import ppnet") and "load_tensorflow()" in code[0].source
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


def run_notebook(tmp_path, monkeypatch, data: Path, export: Path, compare: Path | None = None) -> list:
    """Execute the notebook on ``export`` (and ``compare``) in a kernel of this venv; its code cells."""
    monkeypatch.setenv("JUPYTER_PATH", str(kernelspec_for_this_python(tmp_path / "jupyter")))
    monkeypatch.setenv("PPNET_EXPORT", str(export))
    monkeypatch.setenv("PPNET_DNN_EXPORT", str(compare or ""))
    monkeypatch.setenv("PPNET_DATA", str(data))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The kernel starts in notebooks/: without this it imports whichever ppnet the venv has installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL_PYTHON', sys.executable)"))
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert f"KERNEL_PYTHON {sys.executable}" in cell_text(code[-1])
    return code


def test_notebook_runs_on_ppnet_and_dnn_exports(trained_run, dnn_run, synthetic_dir, tmp_path, monkeypatch):
    valid = synthetic_dir / "part-20220608.parquet"
    code = run_notebook(tmp_path, monkeypatch, valid, trained_run / "export" / "1", dnn_run / "export" / "1")

    # Metrics table: one column per model, AUC better than chance for both.
    table = next(cell_text(c) for c in code if "observed_ctr" in cell_text(c))
    header = next(line for line in table.splitlines() if "ppnet" in line)
    assert header.split() == ["ppnet", "dnn"]
    for row in ("gauc", "logloss", "rows", "mean_prediction", "observed_ctr"):
        assert re.search(rf"^{row}\s", table, re.M), row
    aucs = [float(v) for v in re.search(r"^auc\s+(\S+)\s+(\S+)", table, re.M).groups()]
    assert all(0.5 < a <= 1.0 for a in aucs), aucs

    # ROC + calibration figure, then gate histograms for PPNet and a skip note for the DNN.
    roc = next(c for c in code if "roc_curve(" in c.source)
    assert images(roc) >= 1
    gates = next(c for c in code if 'signatures["gates"]' in c.source)
    text = cell_text(gates)
    assert "ppnet: gate values on" in text and "gate_0" in text
    assert "dnn: no `gates` signature" in text
    assert images(gates) >= 1


def test_notebook_shows_each_task_and_the_epnet_gate_by_domain(multitask_run, synthetic_dir, tmp_path, monkeypatch):
    code = run_notebook(tmp_path, monkeypatch, synthetic_dir / "part-20220608.parquet", multitask_run / "export" / "1")
    table = next(cell_text(c) for c in code if "observed_ctr" in cell_text(c))
    header = next(line for line in table.splitlines() if "pepnet" in line)
    assert header.split() == ["pepnet/is_click", "pepnet/long_view", "pepnet/is_like"]
    roc = next(c for c in code if "roc_curve(" in c.source)
    assert images(roc) >= 1
    gates = cell_text(next(c for c in code if 'signatures["gates"]' in c.source))
    assert all(f"gate_{task}_0" in gates for task in ("is_click", "long_view", "is_like"))
    domain = next(c for c in code if "epnet_gate" in c.source and "by_domain" in c.source)
    text = cell_text(domain)
    assert "pepnet: EPNet gate by tab" in text and "mean |gate - 1|" in text and images(domain) == 1
    rows = [line.split() for line in text.splitlines() if line.split() and line.split()[0].isdigit()]
    scored = int(re.search(r"EPNet gate by tab on (\d+) rows", text).group(1))
    assert len(rows) >= 3 and sum(int(row[1]) for row in rows) == scored  # every scored row in one domain
