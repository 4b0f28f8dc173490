"""``make notebook``: execute evaluate_auc.ipynb headless, as Jupyter runs it (the kernel in
notebooks/, the ``PPNET_*`` variables passed through), and write the executed copy beside its figures.

``jupyter nbconvert --execute`` would run it too, but answers a notebook stopped by a ppnet error
(data that does not fit the export, say) with a traceback of nbconvert itself and the failing
cell's source; this ends with the error's one line and exit status 2, as ppnet's commands do.
The committed notebook is only read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from ppnet.files import write_text_atomic

NOTEBOOK = Path(__file__).resolve().with_name("evaluate_auc.ipynb")


def main() -> int:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print(FIGURES_DIR)"))  # asks where the figures went
    try:
        NotebookClient(nb, resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    except CellExecutionError as err:
        if err.ename != "PPNetError":  # a bug: nbclient's full report
            raise
        print(f"{NOTEBOOK.name}: {err.evalue}", file=sys.stderr)
        return 2
    figures = Path(nb.cells.pop().outputs[0].text.strip())
    executed = figures / NOTEBOOK.name
    write_text_atomic(executed, nbformat.writes(nb))
    print(f"executed notebook: {executed}\nfigures: {', '.join(sorted(p.name for p in figures.glob('*.png')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
