"""Bad input to resolve(): a clear error before any work, and the user's object left as it was."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from shapely.geometry import Point
from spatialdata.models import Image2DModel, TableModel
from spatialdata.transformations import Identity, Translation, set_transformation

import storm_sc as st
from tests.io._synthetic import aligned_sdata, expression, fingerprint


def _plain():
    return aligned_sdata(n_obs=20)[0]


def _visium_like():
    sdata = _plain()
    sdata.attrs["spatialdata_io_reader"] = "visium"
    return sdata


def _empty_table():
    sdata = _plain()
    # spatialdata refuses to add an empty table, but one can be emptied in place after filtering
    sdata.tables["table"]._inplace_subset_obs(np.zeros(20, dtype=bool))
    return sdata


def _duplicated_names():
    sdata = _plain()
    t = sdata.tables["table"]
    t.obs_names = ["same"] * 5 + list(t.obs_names[5:])
    return sdata


def _no_table():
    sdata = _plain()
    del sdata.tables["table"]
    return sdata


def _two_tables():
    sdata = _plain()
    sdata.tables["other"] = sdata.tables["table"].copy()
    return sdata


def _two_rgb_images():
    sdata = _plain()
    sdata.images["he2"] = Image2DModel.parse(
        np.zeros((3, 40, 40), np.uint8), dims=("c", "y", "x"), transformations={"aligned": Identity()}
    )
    return sdata


def _only_fluorescence():
    sdata = _plain()
    del sdata.images["he"]
    sdata.images["dapi"] = Image2DModel.parse(
        np.zeros((1, 300, 520), np.uint16), dims=("c", "y", "x"), transformations={"aligned": Identity()}
    )
    return sdata


def _no_shared_cs():
    sdata = _plain()
    set_transformation(sdata.images["he"], {"elsewhere": Identity()}, set_all=True)
    return sdata


def _mostly_outside():
    sdata = _plain()
    # the image is placed far away from the spots
    set_transformation(sdata.images["he"], Translation([10_000, 10_000], axes=("x", "y")), "aligned")
    return sdata


def _unknown_instances():
    sdata = _plain()
    sdata.tables["table"].obs["spot_id"] = np.arange(20) + 10_000
    return sdata


def _missing_region_element():
    sdata = _plain()
    del sdata.shapes["spots"]
    return sdata


def _no_geometry():
    sdata = _plain()
    spots = sdata.shapes["spots"]
    column = spots.geometry.name
    spots.loc[104, column] = Point(np.nan, np.nan)  # a NaN point, as a failed conversion leaves it
    spots.loc[108, column] = Point()  # an empty one
    return sdata


CASES = {
    # name: (builder, kwargs, exception, match)
    "mpp_zero": (_plain, {"mpp": 0.0}, ValueError, "must be a positive number"),
    "mpp_negative": (_plain, {"mpp": -0.5}, ValueError, "must be a positive number"),
    "mpp_nan": (_plain, {"mpp": float("nan")}, ValueError, "must be a positive number"),
    "mpp_inf": (_plain, {"mpp": float("inf")}, ValueError, "must be a positive number"),
    "mpp_string": (_plain, {"mpp": "0.5"}, ValueError, "must be a positive number"),
    "mpp_bool": (_plain, {"mpp": True}, ValueError, "must be a positive number"),
    "mpp_missing_generic": (_plain, {}, ValueError, r"pass `mpp=`"),
    "visium_mpp_40x_too_small": (
        _visium_like,
        {"mpp": 0.1},
        ValueError,
        r"`mpp=0.1` is 40.6x smaller than the scale of this visium slide",
    ),
    "empty_table": (_empty_table, {"mpp": 1.0}, ValueError, "no observations"),
    "duplicated_obs_names": (_duplicated_names, {"mpp": 1.0}, ValueError, r"obs_names_make_unique"),
    "no_table": (_no_table, {"mpp": 1.0}, ValueError, "has no table"),
    "unknown_table_key": (
        _plain,
        {"mpp": 1.0, "table_key": "nope"},
        ValueError,
        r"No table 'nope'; tables found: \['table'\]",
    ),
    "two_tables": (_two_tables, {"mpp": 1.0}, ValueError, r"pass `table_key=`"),
    "unknown_image_key": (
        _plain,
        {"mpp": 1.0, "image_key": "nope"},
        ValueError,
        r"No image 'nope'; images found: 'he'",
    ),
    "two_rgb_images": (_two_rgb_images, {"mpp": 1.0}, ValueError, r"Several H&E images.*'he'.*'he2'"),
    "no_he_image": (_only_fluorescence, {"mpp": 1.0}, ValueError, r"No H&E image.*'dapi' \(1 channel"),
    "no_shared_cs": (_no_shared_cs, {"mpp": 1.0, "image_key": "he"}, ValueError, "share no coordinate system"),
    "mostly_outside_image": (
        _mostly_outside,
        {"mpp": 1.0},
        ValueError,
        r"20 of 20 observations.*lie outside image 'he'",
    ),
    "unknown_instances": (
        _unknown_instances,
        {"mpp": 1.0},
        ValueError,
        r"20 of 20 table rows .* not an instance of 'spots'",
    ),
    "no_geometry": (
        _no_geometry,
        {"mpp": 1.0},
        ValueError,
        r"2 table rows of region 'spots' have no position: the geometry of their instances in 'spots' is empty or "
        r"NaN \(`\.obs\['spot_id'\]`: \['104', '108'\]\)",
    ),
    "missing_region_element": (
        _missing_region_element,
        {"mpp": 1.0},
        ValueError,
        r"annotates element 'spots', which is not in",
    ),
    "image_key_list": (_plain, {"mpp": 1.0, "image_key": ["he"]}, TypeError, r"`image_key` must be a name.*'he'"),
    "table_key_list": (_plain, {"mpp": 1.0, "table_key": ["table"]}, TypeError, r"pass table_key='table'"),
    "library_id_not_str": (_plain, {"mpp": 1.0, "library_id": 3}, TypeError, "`library_id` must be a string"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_and_left_unchanged(name):
    build, kwargs, exc, match = CASES[name]
    sdata = build()
    before = fingerprint(sdata)
    with pytest.raises(exc, match=match):
        st.io.resolve(sdata, **kwargs)
    assert fingerprint(sdata) == before


def test_unlinked_table_is_refused():
    sdata = _plain()
    t = expression(20)
    sdata.tables["loose"] = TableModel.parse(t)
    with pytest.raises(ValueError, match=r"does not say which elements it annotates|annotates element"):
        st.io.resolve(sdata, table_key="loose", mpp=1.0)


def test_not_spatial_data_is_refused():
    with pytest.raises(TypeError, match="SpatialData or an AnnData"):
        st.io.resolve({"table": 1})
    with pytest.raises(TypeError, match="must be a SpatialData"):
        st.io.detect_platform(ad.AnnData(np.ones((1, 1))))


def test_implausible_generic_size_warns(storm_log):
    sdata = _plain()  # spots of 16 px across
    st.io.resolve(sdata, mpp=200.0)  # 3.2 mm spots: suspicious but not refused without a known spot size
    assert "implausible" in storm_log.text


def test_concatenated_slides_are_named_as_such():
    # spatialdata.concatenate with named inputs puts each slide in its own coordinate systems under one table.
    import spatialdata as sd

    both = sd.concatenate({"a": _plain(), "b": _plain()}, concatenate_tables=True)
    before = fingerprint(both)
    for kwargs in ({}, {"use_image": False}):
        with pytest.raises(ValueError, match=r"annotates 2 regions that share no coordinate system.*split_slides"):
            st.io.resolve(both, **kwargs)
    assert fingerprint(both) == before


def test_one_mpp_per_object_from_lists_arrays_and_series():
    import numpy as np
    import pandas as pd

    from storm_sc.io._resolve import mpp_per_object

    assert mpp_per_object(np.array([0.5, np.nan]), 2) == [0.5, None]
    assert mpp_per_object(pd.Series([None, 0.25]), 2) == [None, 0.25]
    with pytest.raises(ValueError, match="pass them as a list to give each its own"):
        mpp_per_object([0.5, 0.25], 1)
    with pytest.raises(ValueError, match="positive number"):
        mpp_per_object([float("nan"), 0.25], 2)  # in a list, None says "its own scale"
