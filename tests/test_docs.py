"""The documentation builds with warnings as errors, and its API pages render every public name."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

import storm_sc as st
from tests._paths import REPO_ROOT

DOCS = REPO_ROOT / "docs"
SUBPACKAGES = ["io", "pp", "tl", "pl", "models", "training", "datasets", "wsi", "clinical"]
_DIRECTIVE = re.compile(r"^\.\. auto(?:function|class|exception|data):: (\w+)\s*$", re.MULTILINE)


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_api_page_renders_every_public_name(sub):
    """docs/api/<sub>.md has one autodoc entry per name of ``__all__`` (docs/api.md links to them), and no stale ones."""
    page = (DOCS / "api" / f"{sub}.md").read_text()
    assert f".. currentmodule:: storm_sc.{sub}" in page
    documented = _DIRECTIVE.findall(page)
    public = list(getattr(st, sub).__all__)
    assert sorted(documented) == sorted(public), (
        f"docs/api/{sub}.md: missing {sorted(set(public) - set(documented))}, "
        f"not public {sorted(set(documented) - set(public))}, duplicated {sorted({d for d in documented if documented.count(d) > 1})}"
    )


def test_tutorials_are_in_the_docs():
    """Every tutorial script is listed in the tutorials' toctree, which the docs reach through docs/tutorials."""
    index = (REPO_ROOT / "tutorials" / "index.md").read_text()
    scripts = sorted(p.stem for p in (REPO_ROOT / "tutorials").glob("*.py"))
    assert scripts, "no tutorials found"
    missing = [s for s in scripts if not re.search(rf"^{re.escape(s)}$", index, re.MULTILINE)]
    assert not missing, f"tutorials/index.md does not list {missing}"
    assert (DOCS / "tutorials" / "index.md").is_file(), "docs/tutorials must link to ../tutorials"


@pytest.mark.slow
def test_sphinx_build_without_warnings(tmp_path):
    """``sphinx-build -W --keep-going -b html docs <tmp>`` succeeds (warnings are errors; notebooks not executed)."""
    for module in ("sphinx", "myst_nb", "jupytext", "sphinx_book_theme"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out),
           "-d", str(tmp_path / "doctrees")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    assert proc.returncode == 0, (
        f"sphinx-build failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    for page in ["index", "installation", "api", "api/tl", "storage", "model_card", "benchmarks", "tutorials/index"]:
        assert (out / f"{page}.html").is_file(), f"{page}.html was not built"
    for script in (REPO_ROOT / "tutorials").glob("*.py"):
        html = (out / "tutorials" / f"{script.stem}.html").read_text()
        assert 'class="cell_input docutils container"' in html, f"{script.name} was not rendered as a notebook"
    tl_page = (out / "api" / "tl.html").read_text()
    assert 'id="storm_sc.tl.storm_embed"' in tl_page, "autodoc did not render st.tl.storm_embed"
