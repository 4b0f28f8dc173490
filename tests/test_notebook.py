"""Run notebooks/evaluate_auc.ipynb headless (nbclient) on a trained PPNet and a DNN export."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
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


def notebook_env(monkeypatch, tmp_path, export: Path, compare: Path | None, data: Path | None, figures: Path | None):
    """The environment `make notebook` or Jupyter would give the kernel: a kernelspec of this venv, the
    PPNET_* variables (unset ones removed), this checkout's ppnet first on the path."""
    monkeypatch.setenv("JUPYTER_PATH", str(kernelspec_for_this_python(tmp_path / "jupyter")))
    monkeypatch.setenv("PPNET_EXPORT", str(export))
    monkeypatch.setenv("PPNET_DNN_EXPORT", str(compare or ""))
    for name, value in (("PPNET_DATA", data), ("PPNET_FIGURES", figures)):
        if value:
            monkeypatch.setenv(name, str(value))
        else:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The kernel starts in notebooks/: without this it imports whichever ppnet the venv has installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def execute(nb) -> list:
    """Execute ``nb`` in place as Jupyter would (from notebooks/); its code cells."""
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    return [c for c in nb.cells if c.cell_type == "code"]


def run_notebook(tmp_path, monkeypatch, data, export, compare=None, figures=None) -> list:
    """Execute the notebook on ``export`` (and ``compare``) in a kernel of this venv; its code cells."""
    notebook_env(monkeypatch, tmp_path, export, compare, data, figures)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL_PYTHON', sys.executable)"))
    code = execute(nb)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert f"KERNEL_PYTHON {sys.executable}" in cell_text(code[-1])
    return code


def run_make_notebook(tmp_path, monkeypatch, export, compare=None) -> subprocess.CompletedProcess:
    """What `make notebook PPNET_EXPORT=... PPNET_DNN_EXPORT=...` runs, with PPNET_DATA unset."""
    notebook_env(monkeypatch, tmp_path, export, compare, None, None)
    return subprocess.run(
        [sys.executable, str(NOTEBOOK.parent / "execute.py")], capture_output=True, text=True, timeout=600
    )


def metric_table(code) -> str:
    return next(cell_text(c) for c in code if "observed_ctr" in cell_text(c))


def assert_pngs(directory: Path, names: list[str]) -> None:
    for name in names:
        assert (directory / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(directory.glob(".*")), "temporary files left beside the figures"


def test_make_notebook_scores_the_runs_validation_rows_and_writes_the_figures_beside_the_run(
    trained_run, dnn_run, tmp_path, monkeypatch
):
    done = run_make_notebook(tmp_path, monkeypatch, trained_run / "export" / "1", dnn_run / "export" / "1")
    assert done.returncode == 0, done.stderr
    figures = trained_run / "figures"
    code = [c for c in nbformat.read(figures / NOTEBOOK.name, as_version=4).cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]

    # PPNET_DATA unset: the export's recorded validation rows, the very metrics its run reported.
    assert "the run's validation rows, recorded in the export (PPNET_DATA unset)" in "".join(map(cell_text, code))
    table = metric_table(code)
    header = next(line for line in table.splitlines() if "ppnet" in line)
    assert header.split() == ["ppnet", "dnn"]
    for row in ("gauc", "gauc_users", "logloss", "rows", "mean_prediction", "observed_ctr"):
        assert re.search(rf"^{row}\s", table, re.M), row
    for column, run in enumerate((trained_run, dnn_run), start=1):
        reported = json.loads((run / "metrics.json").read_text())
        for metric in ("auc", "gauc", "logloss"):
            shown = float(re.search(rf"^{metric}\s+(\S+)\s+(\S+)", table, re.M).group(column))
            assert shown == pytest.approx(reported[metric], abs=1e-4), (run.name, metric)

    roc = next(c for c in code if "roc_curve(" in c.source)
    assert images(roc) == 1
    activity = next(c for c in code if "gauc_by_bucket(" in c.source)
    assert "is_click: gAUC by impressions per user" in cell_text(activity) and images(activity) == 1
    spread = next(c for c in code if "spread_by_user(" in c.source)
    assert "every sampled user on the same" in cell_text(spread) and images(spread) == 1
    gates = next(c for c in code if "gate_values(model, batch)" in c.source)
    text = cell_text(gates)
    assert "ppnet: gate values on" in text and "gate_0" in text
    assert "dnn: no `gates` signature" in text
    assert images(gates) == 1
    by_domain = cell_text(next(c for c in code if "slice_reports(" in c.source))
    assert "metrics by domain: skipped, no export has an EPNet domain gate" in by_domain
    assert_pngs(
        figures,
        ["roc_calibration.png", "gauc_by_activity.png", "gate_spread_by_user_ppnet.png", "gate_values_ppnet.png"],
    )


def test_notebook_shows_each_task_and_the_epnet_gate_by_domain(multitask_run, synthetic_dir, tmp_path, monkeypatch):
    figures = tmp_path / "figures"
    valid = synthetic_dir / "part-20220608.parquet"
    code = run_notebook(tmp_path, monkeypatch, valid, multitask_run / "export" / "1", figures=figures)
    table = metric_table(code)
    header = next(line for line in table.splitlines() if "pepnet" in line)
    assert header.split() == ["pepnet/is_click", "pepnet/long_view", "pepnet/is_like"]
    roc = next(c for c in code if "roc_curve(" in c.source)
    assert images(roc) == 1
    activity = cell_text(next(c for c in code if "gauc_by_bucket(" in c.source))
    assert "gAUC by user activity: skipped, there is no comparison export" in activity
    gates = cell_text(next(c for c in code if "gate_values(model, batch)" in c.source))
    assert all(f"gate_{task}_0" in gates for task in ("is_click", "long_view", "is_like"))
    by_domain = cell_text(next(c for c in code if "slice_reports(" in c.source))
    assert "by tab:" in by_domain
    lines = [line.split() for line in by_domain.splitlines()]
    tasks = [line[0] for line in lines if line and line[0].startswith("pepnet/")]
    assert tasks == ["pepnet/is_click", "pepnet/long_view", "pepnet/is_like"]  # each task's first (largest) tab
    domain = next(c for c in code if "epnet_gate" in c.source and "by_domain" in c.source)
    text = cell_text(domain)
    assert "pepnet: EPNet gate by tab" in text and "mean |gate - 1|" in text and images(domain) == 1
    rows = [line.split() for line in text.splitlines() if line.split() and line.split()[0].isdigit()]
    scored = int(re.search(r"EPNet gate by tab on (\d+) rows", text).group(1))
    assert len(rows) >= 3 and sum(int(row[1]) for row in rows) == scored  # every scored row in one domain
    pngs = ["roc_calibration.png", "gate_spread_by_user_pepnet.png", "gate_values_pepnet.png"]
    assert_pngs(figures, [*pngs, "epnet_by_domain_pepnet.png"])
    assert not (multitask_run / "figures").exists()  # PPNET_FIGURES put them elsewhere


def test_data_the_export_cannot_score_stops_the_notebook_with_one_line(
    trained_run, synthetic_dir, tmp_path, monkeypatch
):
    data = tmp_path / "no-hour.parquet"
    pq.write_table(pq.read_table(synthetic_dir / "part-20220608.parquet").drop(["hour"]), data)
    notebook_env(monkeypatch, tmp_path, trained_run / "export" / "1", None, data, tmp_path / "figures")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        execute(nb)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "PPNetError"
    assert errors[0].traceback == [f"{data}: column(s) ['hour'] missing (the model expects them)"]  # no traceback
    stopped = next(i for i, c in enumerate(nb.cells) if errors[0] in c.get("outputs", []))
    assert not any(c.get("outputs") for c in nb.cells[stopped + 1 :])  # nothing ran after it
    assert not (tmp_path / "figures").exists()


def test_make_notebook_refuses_a_comparison_export_of_other_tasks_in_one_line(
    trained_run, multitask_run, tmp_path, monkeypatch
):
    done = run_make_notebook(tmp_path, monkeypatch, trained_run / "export" / "1", multitask_run / "export" / "1")
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and "trained on tasks ['is_click', 'long_view', 'is_like']" in line
    assert line.startswith(f"evaluate_auc.ipynb: {multitask_run / 'export' / '1'}: ")
