"""Every public name is documented: a numpy docstring with an example, and an entry in docs/api.md."""

import inspect
import re

import pytest

import storm_sc as st
from tests._paths import REPO_ROOT

SUBPACKAGES = ["io", "pp", "tl", "pl", "models", "training", "datasets", "wsi", "clinical"]
API_MD = (REPO_ROOT / "docs" / "api.md").read_text()


def _public():
    for sub in SUBPACKAGES:
        module = getattr(st, sub) if hasattr(st, sub) else __import__(f"storm_sc.{sub}", fromlist=["_"])
        for name in module.__all__:
            yield sub, name, getattr(module, name)


@pytest.mark.parametrize(("sub", "name", "obj"), list(_public()), ids=lambda v: v if isinstance(v, str) else "")
def test_listed_in_api_md(sub, name, obj):
    assert re.search(rf"st\.{sub}\.{name}\b", API_MD), f"st.{sub}.{name} is missing from docs/api.md"


@pytest.mark.parametrize(("sub", "name", "obj"), list(_public()), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_with_example(sub, name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc, f"st.{sub}.{name} has no docstring"
    if inspect.isclass(obj):
        assert "Examples" in doc, f"st.{sub}.{name} has no Examples section"
    if inspect.isfunction(obj):
        assert "Examples" in doc, f"st.{sub}.{name} has no Examples section"
        assert "Parameters" in doc or not inspect.signature(obj).parameters, f"st.{sub}.{name} lacks Parameters"
        hints = {k for k, p in inspect.signature(obj).parameters.items() if p.annotation is inspect.Parameter.empty}
        assert not hints - {"self", "cls"}, f"st.{sub}.{name}: parameters without type hints: {hints}"
