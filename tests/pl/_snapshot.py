"""Capture everything a plot could modify in a SpatialData / AnnData, to prove that it modified nothing."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData


def _table(t: AnnData) -> dict[str, Any]:
    x = t.X.toarray() if sparse.issparse(t.X) else np.asarray(t.X)
    return {
        "obs": t.obs.copy(deep=True),
        "var": t.var.copy(deep=True),
        "X": x.copy(),
        "obsm": {k: np.array(v, copy=True) for k, v in t.obsm.items()},
        "layers": sorted(t.layers),
        "uns": repr(sorted(t.uns.keys())) + repr({k: list(v) for k, v in t.uns.items() if k.endswith("_colors")}),
        "obsp": sorted(t.obsp),
    }


def snapshot(data: SpatialData | AnnData) -> dict[str, Any]:
    if isinstance(data, AnnData):
        return {"table": _table(data)}
    return {
        "elements": {kind: sorted(getattr(data, kind)) for kind in ("images", "labels", "points", "shapes", "tables")},
        "attrs": copy.deepcopy(dict(data.attrs)),
        "tables": {k: _table(t) for k, t in data.tables.items()},
    }


def assert_unchanged(before: dict[str, Any], data: SpatialData | AnnData) -> None:
    after = snapshot(data)
    assert before.keys() == after.keys()
    tables_before = before.get("tables", {"table": before.get("table")})
    tables_after = after.get("tables", {"table": after.get("table")})
    assert before.get("elements") == after.get("elements")
    assert before.get("attrs") == after.get("attrs")
    assert tables_before.keys() == tables_after.keys()
    for key, tb in tables_before.items():
        ta = tables_after[key]
        pd.testing.assert_frame_equal(tb["obs"], ta["obs"])
        pd.testing.assert_frame_equal(tb["var"], ta["var"])
        np.testing.assert_array_equal(tb["X"], ta["X"])
        assert tb["obsm"].keys() == ta["obsm"].keys(), key
        for k in tb["obsm"]:
            np.testing.assert_array_equal(tb["obsm"][k], ta["obsm"][k])
        assert (tb["layers"], tb["uns"], tb["obsp"]) == (ta["layers"], ta["uns"], ta["obsp"]), key
