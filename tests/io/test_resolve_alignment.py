"""resolve() on generated SpatialData: positions land on the right pixels through any affine, in true microns."""

from __future__ import annotations

import numpy as np
import pytest
from spatialdata.transformations import Identity, set_transformation

import storm_sc as st
from storm_sc.io._elements import full_res
from tests.io._synthetic import affine, aligned_sdata, decode_pixels, expression, fingerprint

TRANSFORMS = {
    "identity": (affine(0, 1, 0, 0), affine(0, 1, 0, 0)),
    "scaled_shapes": (affine(0, 1, 0, 0), affine(0, 0.25, 0, 0)),
    "rotated_image": (affine(30, 2.5, 100, -40), affine(0, 1, 0, 0)),
    "both_affine": (affine(30, 2.5, 100, -40), affine(-10, 0.2, 5, 7)),
}


@pytest.mark.parametrize("multiscale", [False, True], ids=["single", "multiscale"])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_centers_px_decode_to_true_pixels(name, multiscale):
    image_to_cs, shapes_to_cs = TRANSFORMS[name]
    sdata, true_px = aligned_sdata(image_to_cs=image_to_cs, shapes_to_cs=shapes_to_cs, multiscale=multiscale)
    si = st.io.resolve(sdata, mpp=0.4)

    assert si.platform == "generic"
    assert si.image_key == "he"
    assert si.regions == ("spots",)
    assert si.coordinate_system == "aligned"
    np.testing.assert_allclose(si.centers_px, true_px, atol=1e-6)
    # the image's own pixel values say which pixel each centre falls in (level 0 of a pyramid)
    img = full_res(si.image).values
    np.testing.assert_array_equal(decode_pixels(img, si.centers_px), np.floor(true_px).astype(int))
    assert si.mpp == pytest.approx(0.4)
    # microns: distances are pixel distances times mpp, whatever the transforms
    d_um = np.linalg.norm(si.centers_um[1:] - si.centers_um[:-1], axis=1)
    d_px = np.linalg.norm(true_px[1:] - true_px[:-1], axis=1)
    np.testing.assert_allclose(d_um, d_px * 0.4, rtol=1e-9)


def test_rows_follow_table_order_not_shapes_order():
    sdata, true_px = aligned_sdata(n_obs=30, seed=3)
    # table rows reversed: positions must follow them
    table = sdata.tables["table"]
    sdata.tables["table"] = table[::-1].copy()
    si = st.io.resolve(sdata, mpp=1.0)
    np.testing.assert_allclose(si.centers_px, true_px[::-1], atol=1e-6)
    assert list(si.table.obs_names) == list(table.obs_names[::-1])


def test_from_arrays_round_trip_needs_no_mpp():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    centers = np.column_stack([rng.uniform(0, 200, 25), rng.uniform(0, 120, 25)])
    sdata = st.io.from_arrays(expression(25), centers, img, mpp=0.8, spot_diameter_um=55.0, library_id="s1")
    si = st.io.resolve(sdata)
    assert si.platform == "generic"
    assert si.library_id == "s1"
    assert si.mpp == pytest.approx(0.8)
    np.testing.assert_allclose(si.centers_px, centers, atol=1e-9)
    np.testing.assert_allclose(si.centers_um, centers * 0.8, atol=1e-9)
    # the user's mpp overrides the recorded one
    assert st.io.resolve(sdata, mpp=1.0).mpp == pytest.approx(1.0)


def test_recorded_mpp_converts_to_another_image():
    """attrs mpp is per pixel of the recorded image; a second image at half resolution gets twice the mpp."""
    img = np.zeros((100, 100, 3), dtype=np.uint8)
    sdata = st.io.from_arrays(expression(4), np.array([[10, 10], [50, 50], [80, 20], [30, 90.0]]), img, mpp=0.5)
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    sdata.images["small"] = Image2DModel.parse(
        np.zeros((3, 50, 50), dtype=np.uint8),
        dims=("c", "y", "x"),
        transformations={"slide": Scale([2, 2], axes=("y", "x"))},  # from_arrays: the slide's own system
    )
    si = st.io.resolve(sdata, image_key="small")
    assert si.mpp == pytest.approx(1.0)
    np.testing.assert_allclose(si.centers_px, np.array([[5, 5], [25, 25], [40, 10], [15, 45.0]]))
    np.testing.assert_allclose(si.centers_um, st.io.resolve(sdata).centers_um)


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("legacy_st", "legacy_st"), ("hest", "hest"), ("generic", "generic"), ("nonsense", "generic")],
)
def test_detect_platform_from_storm_attrs(platform, expected):
    sdata = st.io.from_arrays(expression(2), np.zeros((2, 2)), mpp=1.0, platform=platform)
    assert st.io.detect_platform(sdata) == expected


@pytest.mark.parametrize("reader", ["visium", "spatialdata_io.visium", "VISIUM"])
def test_detect_platform_accepts_reader_prefix(reader):
    sdata, _ = aligned_sdata(n_obs=3)
    sdata.attrs["spatialdata_io_reader"] = reader
    assert st.io.detect_platform(sdata) == "visium"
    sdata.attrs["spatialdata_io_reader"] = "merscope"  # a reader without an adapter
    assert st.io.detect_platform(sdata) == "generic"


def test_expression_only_without_image_uses_mpp_per_unit():
    sdata = st.io.from_arrays(
        expression(3), np.array([[0, 0], [10, 0], [0, 20.0]]), None, mpp=2.0, platform="legacy_st"
    )
    si = st.io.resolve(sdata)
    assert not si.has_image
    assert si.centers_px is None
    assert si.mpp is None
    np.testing.assert_allclose(si.centers_um, [[0, 0], [20, 0], [0, 40]])


def test_picks_the_coordinate_system_shared_with_the_image():
    sdata, true_px = aligned_sdata(n_obs=10)
    # a second system that only the shapes live in must not be chosen
    set_transformation(sdata.shapes["spots"], Identity(), "shapes_only")
    before = fingerprint(sdata)
    si = st.io.resolve(sdata, mpp=1.0)
    assert si.coordinate_system == "aligned"
    np.testing.assert_allclose(si.centers_px, true_px, atol=1e-6)
    assert fingerprint(sdata) == before


def test_border_observations_warn_only(storm_log):
    sdata, _ = aligned_sdata(n_obs=50, width=200, height=200)
    from shapely.affinity import translate

    shapes = sdata.shapes["spots"]
    moved = shapes.copy()
    # two spots pushed just past the left edge: allowed, patches get padded
    first = moved.index[:2]
    moved.loc[first, "geometry"] = [translate(g, xoff=-g.x - 3) for g in moved.loc[first, "geometry"]]
    sdata.shapes["spots"] = moved
    si = st.io.resolve(sdata, mpp=1.0)
    assert (si.centers_px[:, 0] < 0).sum() == 2
    assert "2 of 50 observations" in storm_log.text
    assert "lie outside image" in storm_log.text


def _with_alpha(sdata, alpha: np.ndarray | None = None, *, colour: np.ndarray | None = None):
    """The same slide with its H&E replaced by an RGBA version (``colour`` instead of its RGB when given)."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation
    from xarray import DataTree

    he = sdata.images["he"]
    rgb = full_res(he).values if colour is None else colour
    a = np.full(rgb.shape[1:], 255, np.uint8) if alpha is None else alpha
    sdata.images["he"] = Image2DModel.parse(
        np.concatenate([rgb, a[None]]),
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b", "a"],
        scale_factors=[2, 2] if isinstance(he, DataTree) else None,
        transformations=get_transformation(he, get_all=True),
    )
    return sdata


@pytest.mark.parametrize("margin", [0, 20], ids=["opaque", "transparent_margin"])
@pytest.mark.parametrize("multiscale", [False, True], ids=["single", "multiscale"])
def test_rgba_he_is_chosen_and_read_as_its_rgb(multiscale, margin):
    """A PNG export with an alpha channel is an H&E like its RGB: chosen without image_key, same patches."""
    sdata, _ = aligned_sdata(n_obs=20, multiscale=multiscale, seed=4)
    rgb = st.pp.patch_dataset(st.io.resolve(sdata, mpp=1.0), patch_um=16.0, patch_px=8)
    alpha = np.full(full_res(sdata.images["he"]).shape[1:], 255, np.uint8)
    if margin:
        alpha[:margin] = alpha[:, :margin] = 0  # transparent background around the tissue
    sdata = _with_alpha(sdata, alpha)
    si = st.io.resolve(sdata, mpp=1.0)
    assert si.image_key == "he"
    rgba = st.pp.patch_dataset(si, patch_um=16.0, patch_px=8)
    for i in range(si.n_obs):
        np.testing.assert_array_equal(rgba[i]["image"].numpy(), rgb[i]["image"].numpy())


@pytest.mark.parametrize("case", ["constant", "transparent", "four_fluorescence_channels"])
def test_blank_rgba_or_channel_stack_is_not_taken_for_he(case):
    """A placeholder RGBA image (one colour, or fully transparent) is not an H&E, nor is a 4-channel 8-bit stack
    whose fourth channel is not an opacity mask: the message names `image_key=`."""
    sdata, _ = aligned_sdata(n_obs=20, seed=5)
    shape = full_res(sdata.images["he"]).shape
    if case == "constant":
        sdata = _with_alpha(sdata, colour=np.zeros(shape, np.uint8))
    elif case == "transparent":
        sdata = _with_alpha(sdata, alpha=np.zeros(shape[1:], np.uint8))
    else:
        signal = np.random.default_rng(0).integers(0, 256, shape[1:], dtype=np.uint8)
        sdata = _with_alpha(sdata, alpha=signal)
    with pytest.raises(ValueError, match=r"No H&E image .*'he' \(4 channel\(s\), uint8.*Pass `image_key=`"):
        st.io.resolve(sdata, mpp=1.0)
