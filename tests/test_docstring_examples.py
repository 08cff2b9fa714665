"""Every docstring example of the package and of the benchmark helpers runs as written and prints what it shows.

Examples marked ``# doctest: +SKIP`` (a napari window, a training run of minutes, a file the reader must supply)
are not run. The examples build their data with ``st.datasets.toy`` and friends, so no real data is needed.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
from pathlib import Path

import pytest

import storm_sc

ROOT = Path(__file__).resolve().parents[1]


def _modules_with_examples() -> list[str]:
    """Module names whose source holds a ``>>>`` line, found without importing them (cheap at collection)."""
    found = []
    for package_name, folder in (("storm_sc", Path(storm_sc.__file__).parent), ("benchmarks", ROOT / "benchmarks")):
        candidates = [(package_name, folder / "__init__.py")]
        for info in pkgutil.walk_packages([str(folder)], prefix=f"{package_name}."):
            path = Path(info.module_finder.path) / (info.name.rsplit(".", 1)[-1])
            candidates.append((info.name, path / "__init__.py" if info.ispkg else path.with_suffix(".py")))
        found += [name for name, path in candidates if path.is_file() and ">>>" in path.read_text(encoding="utf-8")]
    return sorted(set(found))


MODULES = _modules_with_examples()


def test_examples_are_found_in_every_room_of_the_package():
    rooms = {name.split(".")[1] for name in MODULES if name.startswith("storm_sc.") and name.count(".") >= 1}
    assert {"io", "pp", "tl", "pl", "models", "training", "datasets", "clinical", "wsi"} <= rooms
    assert "benchmarks._splits" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    for test in tests:
        runner.run(test, out=report.write)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) of {name} failed:\n{report.getvalue()}"
