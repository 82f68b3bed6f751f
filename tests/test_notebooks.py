"""The notebooks in ``notebooks/``: committed stripped, and each runs top to bottom.

Every notebook is executed with nbclient in the ``python3`` kernel of this
interpreter (ipykernel installs that kernelspec into the venv, and
jupyter_client starts ``python`` kernels with ``sys.executable``). A notebook
that raises fails its test. Processes a notebook starts (notebook 02's Dask
workers) are stopped even when it fails: every process the kernel spawned is
recorded before each cell and after it, and whatever is still alive once the
kernel is shut down is terminated by its id.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from real_data import real_root

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
psutil = pytest.importorskip("psutil")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
STARTS_PROCESSES = {"02_batch_on_dask"}  # LocalCluster workers
NEEDS_REAL_DATA = {"05_train_on_real_imagery"}  # ../shared/data/real (TERRASEG_REAL_DATA)
CELL_TIMEOUT_S = 300


def _params() -> list[Any]:
    marks = {stem: [pytest.mark.cluster] for stem in STARTS_PROCESSES}
    return [pytest.param(p, id=p.stem, marks=marks.get(p.stem, [])) for p in NOTEBOOKS]


def _descendants() -> set[Any]:
    """Processes this test process started, transitively (psutil compares pid + start time)."""
    try:
        return set(psutil.Process().children(recursive=True))
    except psutil.Error:
        return set()


def _stop(processes: set[Any]) -> list[Any]:
    """Terminate (then kill) each still-running process by its id; return those that were."""
    alive = [p for p in processes if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(alive, timeout=10)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)
    return alive


def _execute(nb: Any, cwd: Path) -> tuple[Any, set[Any]]:
    """Run ``nb`` in a fresh ``python3`` kernel; return it and the processes it spawned.

    The kernel is shut down (killed) on the way out, error or not, and every
    process it left behind is stopped.
    """
    before = _descendants()
    spawned: set[Any] = set()

    def record(**_: Any) -> None:
        spawned.update(_descendants() - before)

    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
        on_cell_execute=record,
        on_cell_executed=record,
        on_cell_error=record,
    )
    try:
        client.execute()
    finally:
        record()
        km = client.km
        if km is not None:
            try:
                nbclient.util.run_sync(km.shutdown_kernel)(now=True)
            except Exception:  # noqa: BLE001 - already shut down by execute()
                pass
        _stop(spawned)
    return nb, spawned


def test_notebooks_exist() -> None:
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_explore_scene", "02_batch_on_dask", "03_evaluate_and_export"} <= names


@pytest.mark.parametrize("path", _params())
def test_notebook_is_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs; strip them"
        assert cell.get("execution_count") is None, (
            f"{path.name} cell {i} has an execution count; strip it"
        )
    assert nb.cells[0].cell_type == "markdown", f"{path.name} must open with a markdown intro"
    assert any("import terraseg" in c.source for c in nb.cells if c.cell_type == "code")


def test_python3_kernel_is_this_interpreter(tmp_path: Path) -> None:
    cell = nbformat.v4.new_code_cell("import sys; print(sys.prefix)")
    nb = nbformat.v4.new_notebook(cells=[cell])
    executed, _ = _execute(nb, tmp_path)
    printed = "".join(o.get("text", "") for o in executed.cells[0].outputs).strip()
    assert Path(printed).resolve() == Path(sys.prefix).resolve()


@pytest.mark.parametrize("path", _params())
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.stem in NEEDS_REAL_DATA:
        real = real_root()
        if not real.is_dir():
            pytest.skip(f"real test data not found at {real} (set TERRASEG_REAL_DATA)")
        monkeypatch.setenv("TERRASEG_REAL_DATA", str(real))  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    executed, _ = _execute(nb, tmp_path)  # raises CellExecutionError on any error
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
