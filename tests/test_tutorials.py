"""Every tutorial runs top to bottom as a notebook on the real data, in fast mode (as CI runs them).

Each tutorial (a jupytext percent script in ``tutorials/``) is converted to a notebook and executed with nbclient
in a fresh Python kernel, with ``STORM_SC_TUTORIAL_FAST=1`` (a few training steps), matplotlib's Agg backend, the
working directory in a temporary folder, and ``STORM_SC_DATA_DIR`` pointing at a temporary folder that links to the
real datasets the tutorial needs (read-only; nothing may be written into them). A tutorial whose data is absent
is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from tests._paths import DATA_DIR, REPO_ROOT

TUTORIALS = sorted((REPO_ROOT / "tutorials").glob("*.py"))
# The real datasets (folders of the shared data directory) each tutorial reads.
NEEDS = {
    "01_visium_dlpfc": ["dlpfc_151675"],
    "02_her2st_expression": ["her2st"],
    "03_xenium_cosmx": ["xenium_toy", "cosmx_lung12", "xenium_lung_he_ncbi858"],
    "04_pretrain_finetune": ["mob_he_stahl2016", "visium_ffpe_villacampa2021"],
    "05_clinical": ["her2st", "visium_ffpe_villacampa2021"],
    "06_several_sections": ["mob", "mob_he_stahl2016"],
}
CELL_TIMEOUT_S = 900


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_every_tutorial_declares_its_data():
    assert TUTORIALS, "no tutorials found"
    assert sorted(p.stem for p in TUTORIALS) == sorted(NEEDS), "update NEEDS when adding or renaming a tutorial"


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, tmp_path, monkeypatch):
    for module in ("jupytext", "nbclient", "ipykernel"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    import jupytext
    from nbclient import NotebookClient

    needed = [DATA_DIR / name for name in NEEDS[path.stem]]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.skip(f"real data not available: {missing} (set STORM_SC_TEST_DATA to the folder holding it)")

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for source in needed:
        (data_dir / source.name).symlink_to(source, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("STORM_SC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("STORM_SC_TUTORIAL_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")

    before = {p.name: _snapshot(p) for p in needed}
    notebook = jupytext.read(path)
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    seconds = time.perf_counter() - start

    errors = [
        o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors, errors
    for source in needed:
        assert _snapshot(source) == before[source.name], f"the tutorial changed files in {source}"
    print(f"{path.name}: {seconds:.1f} s")
