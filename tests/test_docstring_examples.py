"""Every docstring example of the package and of the benchmark helpers runs as written (with only the names it
imports) and prints what it shows.

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
ROOMS = ("io", "pp", "tl", "pl", "models", "training", "datasets", "clinical", "wsi")


def _public_objects() -> set[int]:
    """Ids of what the public namespaces export: functions, classes and the members of those classes."""
    found: set[int] = set()
    for room in ROOMS:
        namespace = importlib.import_module(f"storm_sc.{room}")
        for name in getattr(namespace, "__all__", [n for n in dir(namespace) if not n.startswith("_")]):
            obj = getattr(namespace, name)
            found.add(id(obj))
            if isinstance(obj, type):
                found |= {id(member) for key, member in vars(obj).items() if not key.startswith("_")}
    return found


def _documented_object(module, test_name: str):
    """The function, class or member a doctest was found on (``module.Class.method``), or None."""
    obj = module
    for part in test_name[len(module.__name__) + 1 :].split(".") if test_name != module.__name__ else []:
        obj = vars(obj).get(part) if isinstance(obj, type) else getattr(obj, part, None)
    return obj


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
    public = _public_objects()
    for test in tests:
        if id(_documented_object(module, test.name)) in public:
            # What the API pages show runs as a reader would paste it: with only the names the example imports.
            test.globs = {"__name__": "__main__"}
        runner.run(test, out=report.write)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) of {name} failed:\n{report.getvalue()}"
