"""Deep snapshots of the user's objects, to prove that a call left them exactly as they were (or changed only X)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.transformations import get_transformation

_GROUPS = ("images", "labels", "points", "shapes")
_ANNDATA_MAPPINGS = ("layers", "obsm", "varm", "obsp", "varp")


def snapshot(data: Any) -> dict[str, Any]:
    """A deep copy of everything a tool could be tempted to change in ``data`` (a SpatialData, AnnData or a list)."""
    if isinstance(data, list | tuple):
        return {"items": [snapshot(d) for d in data]}
    if isinstance(data, AnnData):
        return {"tables": {"<AnnData>": data.copy()}}
    if isinstance(data, SpatialData):
        snap: dict[str, Any] = {
            "attrs": copy.deepcopy(dict(data.attrs)),
            "tables": {k: t.copy() for k, t in data.tables.items()},
            "elements": {g: list(getattr(data, g)) for g in _GROUPS},
            "transformations": {
                f"{g}[{k!r}]": repr(get_transformation(el, get_all=True))
                for g in _GROUPS
                for k, el in getattr(data, g).items()
            },
            "shapes": {k: el.copy() for k, el in data.shapes.items()},
            # rasters are never written by the tools and can be large: the very same lazy objects must still be there
            "rasters": {f"{g}[{k!r}]": el for g in ("images", "labels") for k, el in getattr(data, g).items()},
        }
        return snap
    raise TypeError(f"cannot snapshot a {type(data).__name__}")


def differences(before: dict[str, Any], data: Any) -> list[str]:
    """What changed in ``data`` since ``before`` was taken, one readable line per difference (empty: unchanged)."""
    if "items" in before:
        if not isinstance(data, list | tuple) or len(data) != len(before["items"]):
            return ["the list of slides itself changed"]
        pairs = enumerate(zip(before["items"], data, strict=True))
        return [f"slide {i}: {d}" for i, (b, x) in pairs for d in differences(b, x)]
    if isinstance(data, AnnData):
        return _anndata_diff("adata", before["tables"]["<AnnData>"], data)
    out: list[str] = []
    out += _mapping_diff("attrs", before["attrs"], dict(data.attrs))
    for group in _GROUPS:
        now = list(getattr(data, group))
        if now != before["elements"][group]:
            out.append(f"{group}: {before['elements'][group]} -> {now}")
    for key, rep in before["transformations"].items():
        group, name = key.split("[", 1)
        name = name[1:-2]
        element = getattr(data, group).get(name)
        if element is not None and repr(get_transformation(element, get_all=True)) != rep:
            out.append(f"{key}: transformations changed")
    for key, gdf in before["shapes"].items():
        if key in data.shapes:
            now = data.shapes[key]
            if not (gdf.index.equals(now.index) and gdf.geometry.geom_equals_exact(now.geometry, 0).all()):
                out.append(f"shapes[{key!r}]: geometry changed")
            out += _frame_diff(f"shapes[{key!r}]", pd.DataFrame(gdf.drop(columns="geometry")),
                               pd.DataFrame(now.drop(columns="geometry")))  # fmt: skip
    for key, el in before["rasters"].items():
        group, name = key.split("[", 1)
        if getattr(data, group).get(name[1:-2]) is not el:
            out.append(f"{key}: replaced")
    for key in sorted(set(before["tables"]) | set(data.tables)):
        if key not in data.tables:
            out.append(f"tables[{key!r}] removed")
        elif key not in before["tables"]:
            out.append(f"tables[{key!r}] added")
        else:
            out += _anndata_diff(f"tables[{key!r}]", before["tables"][key], data.tables[key])
    return out


def _anndata_diff(where: str, a: AnnData, b: AnnData) -> list[str]:
    out: list[str] = []
    if a.shape != b.shape:
        return [f"{where}: shape {a.shape} -> {b.shape}"]
    if not a.obs_names.equals(b.obs_names):
        out.append(f"{where}.obs_names changed")
    if not a.var_names.equals(b.var_names):
        out.append(f"{where}.var_names changed")
    out += _frame_diff(f"{where}.obs", a.obs, b.obs)
    out += _frame_diff(f"{where}.var", a.var, b.var)
    if not _equal(a.X, b.X):
        out.append(f"{where}.X changed")
    for field in _ANNDATA_MAPPINGS:
        out += _mapping_diff(f"{where}.{field}", dict(getattr(a, field)), dict(getattr(b, field)), recurse=False)
    out += _mapping_diff(f"{where}.uns", dict(a.uns), dict(b.uns))
    return out


def _frame_diff(where: str, a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    out = [f"{where}[{c!r}] added" for c in b.columns if c not in a.columns]
    out += [f"{where}[{c!r}] removed" for c in a.columns if c not in b.columns]
    for c in a.columns.intersection(b.columns):
        try:
            pd.testing.assert_series_equal(a[c], b[c], check_names=False)
        except AssertionError:
            out.append(f"{where}[{c!r}] changed")
    return out


def _mapping_diff(where: str, a: Mapping, b: Mapping, *, recurse: bool = True) -> list[str]:
    out = [f"{where}[{k!r}] added" for k in b if k not in a]
    out += [f"{where}[{k!r}] removed" for k in a if k not in b]
    for k in a:
        if k not in b:
            continue
        if recurse and isinstance(a[k], Mapping) and isinstance(b[k], Mapping):
            out += _mapping_diff(f"{where}[{k!r}]", a[k], b[k])
        elif not _equal(a[k], b[k]):
            out.append(f"{where}[{k!r}] changed")
    return out


def _equal(a: Any, b: Any) -> bool:
    if sparse.issparse(a) or sparse.issparse(b):
        if not (sparse.issparse(a) and sparse.issparse(b)) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        return _equal(a.toarray(), b.toarray())
    if isinstance(a, pd.DataFrame | pd.Series | pd.Index) or isinstance(b, pd.DataFrame | pd.Series | pd.Index):
        return type(a) is type(b) and a.equals(b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return not _mapping_diff("", a, b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b
