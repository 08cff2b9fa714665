"""Sphinx configuration of the storm_sc documentation.

Build it (warnings are errors, as in the tests) from the repository root:

    sphinx-build -W --keep-going -b html docs docs/_build/html

The tutorials are jupytext percent scripts in ``tutorials/`` (``docs/tutorials`` links to them); they are rendered
without being executed here, because CI runs them on the real data separately (``tests/test_tutorials.py``).
Links to other projects' documentation (intersphinx) need the network, so they are opt-in:
``STORM_SC_DOCS_INTERSPHINX=1 sphinx-build ...``.
"""

from __future__ import annotations

import os
from datetime import date

import storm_sc

project = "storm_sc"
author = "storm_sc developers"
copyright = f"{date.today().year}, {author}"
release = storm_sc.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

# The sources: MyST markdown pages, and the tutorials' percent scripts read as notebooks through jupytext.
# conf.py itself is a .py file in the source folder: never a notebook.
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
exclude_patterns = ["_build", "conf.py", "**/__pycache__", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# Tutorials run on real data in CI (tests/test_tutorials.py), never during the docs build.
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# API reference: numpy-style docstrings, type hints in the description (the signatures stay readable).
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
napoleon_use_ivar = False
# storm_sc's docstrings write "Returns" as prose (what comes back and how to read it), not numpydoc's
# "type / indented description" pairs, so it is rendered as a plain section; the return type comes from the hints.
napoleon_custom_sections = ["Returns"]
autodoc_typehints = "both"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": False}
add_module_names = False

intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
if os.environ.get("STORM_SC_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable", None),
        "spatialdata": ("https://spatialdata.scverse.org/en/stable", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
    }

html_theme = "sphinx_book_theme"
html_title = "storm_sc"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
