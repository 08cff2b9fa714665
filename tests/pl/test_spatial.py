import logging

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.collections import EllipseCollection
from matplotlib.colors import to_rgba
from matplotlib.image import AxesImage
from matplotlib_scalebar.scalebar import ScaleBar
from spatialdata import SpatialData
from spatialdata.models import Image2DModel
from spatialdata.transformations import Affine, Scale, Sequence, Translation

import storm_sc as st
from storm_sc.pl._colors import NA_COLOR
from storm_sc.pl._tissue import image_to_um, read_tissue_image, spot_bounds

from ._snapshot import assert_unchanged, snapshot


def _spots(ax) -> EllipseCollection:
    (coll,) = [c for c in ax.collections if isinstance(c, EllipseCollection)]
    return coll


def _with_image_transform(base: SpatialData, transform) -> SpatialData:
    """The same slide with its image placed by ``transform`` (a new image element; ``base`` is untouched)."""
    (key,) = base.images
    image = Image2DModel.parse(base.images[key].data, dims=("c", "y", "x"), transformations={"global": transform})
    out = SpatialData(images={key: image}, shapes=dict(base.shapes), tables={"table": base["table"].copy()})
    out.attrs.update({k: dict(v) if isinstance(v, dict) else v for k, v in base.attrs.items()})
    return out


def test_domains_draws_spots_in_microns_with_stored_colours(sdata, tmp_path):
    before = snapshot(sdata)
    table = sdata["table"]
    fig = st.pl.domains(sdata, alpha=0.6, save=tmp_path / "domains.png", show=False)
    assert (tmp_path / "domains.png").stat().st_size > 10_000
    (ax,) = fig.axes
    slide = st.io.resolve(sdata, table_key="table")
    spots = _spots(ax)
    np.testing.assert_allclose(spots.get_offsets(), slide.centers_um)
    np.testing.assert_allclose(spots.get_widths(), 55.0)  # the toy's spot diameter, in microns
    colors = table.uns["storm_domain_colors"]
    expected = np.array([to_rgba(colors[c], 0.6) for c in table.obs["storm_domain"].cat.codes])
    np.testing.assert_allclose(spots.get_facecolor(), expected)
    images = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    assert len(images) == 1
    # the toy image is 800 px at 2 um/px, placed from 0 to 1600 um; y points down like the image
    np.testing.assert_allclose(images[0].get_extent(), [0, 1600, 1600, 0])
    assert ax.get_ylim()[0] > ax.get_ylim()[1]
    assert any(isinstance(a, ScaleBar) for a in ax.get_children())
    assert "µm" in ax.get_xlabel()
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(table.obs["storm_domain"].cat.categories)
    assert_unchanged(before, sdata)


def test_domains_several_slides_share_colours(slides):
    befores = [snapshot(s) for s in slides]
    fig = st.pl.domains(slides, image=False, show=False)
    axes = [a for a in fig.axes if a.get_visible()]
    assert len(axes) == 2
    assert [a.get_title() for a in axes] == ["toy (1)", "toy (2)"]
    assert not any(isinstance(a, AxesImage) for ax in axes for a in ax.get_children())
    for ax, sdata in zip(axes, slides, strict=True):
        table = sdata["table"]
        colors = table.uns["storm_domain_colors"]
        expected = np.array([to_rgba(colors[c], 0.75) for c in table.obs["storm_domain"].cat.codes])
        np.testing.assert_allclose(_spots(ax).get_facecolor(), expected)
    assert axes[0].get_legend() is None
    assert axes[1].get_legend() is not None
    for before, sdata in zip(befores, slides, strict=True):
        assert_unchanged(before, sdata)


def test_a_domain_dropped_from_one_slide_keeps_its_place_in_the_legends(slides):
    # Subsetting a slide after clustering drops the categories it no longer holds (anndata): the legend still reads
    # 0, 1, 2 (it read 0, 2, 1 with the union taken in first-seen order), in its stored colour.
    table = slides[0]["table"]
    subset = table[table.obs["storm_domain"] != "1"].copy()
    assert list(subset.obs["storm_domain"].cat.categories) == ["0", "2"]
    lone = SpatialData(images=dict(slides[0].images), shapes=dict(slides[0].shapes), tables={"table": subset})
    lone.attrs.update(slides[0].attrs)
    fig = st.pl.domains([lone, slides[1]], image=False, show=False)
    labels = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert labels == ["0", "1", "2"]
    fig = st.pl.embedding_umap([lone, slides[1]], color="storm_domain", show=False)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["0", "1", "2"]


def test_a_column_only_one_slide_has_is_missing_on_the_others(slides):
    # One labelled section beside unlabelled replicates (tutorial 6): colour by the labels, the others drawn as NA.
    labelled, other = slides
    labelled["table"].obs["layer"] = pd.Categorical(np.where(np.arange(labelled["table"].n_obs) % 2, "L1", "L2"))
    try:
        fig = st.pl.domains(slides, key="layer", image=False, show=False)
        spots = [_spots(ax) for ax in fig.axes if ax.get_visible()]
        np.testing.assert_allclose(
            spots[1].get_facecolor(), np.tile(to_rgba(NA_COLOR, 0.75), (other["table"].n_obs, 1))
        )
        fig = st.pl.embedding_umap(slides, color=["layer", "storm_domain"], show=False)
        assert "NA" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        with pytest.raises(KeyError, match=r"None of the 2 slides: .obs\['nope'\] not found"):
            st.pl.domains(slides, key="nope")
    finally:
        del labelled["table"].obs["layer"]


def test_domains_any_categorical_column_with_missing_values(sdata):
    # a copy of the table with an annotation that leaves some spots unlabelled
    table = sdata["table"].copy()
    labels = table.obs["true_domain"].astype(object).to_numpy()
    labels[:10] = None
    table.obs["annotation"] = pd.Categorical(labels)
    other = SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": table})
    other.attrs.update(sdata.attrs)
    fig = st.pl.domains(other, key="annotation", spot_size=30.0, show=False)
    (ax,) = fig.axes
    spots = _spots(ax)
    np.testing.assert_allclose(spots.get_widths(), 30.0)
    np.testing.assert_allclose(spots.get_facecolor()[0], to_rgba("#d3d3d3", 0.75))
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "NA"
    assert "annotation_colors" not in table.uns  # default colours are used, not written


def test_domains_into_given_axes(sdata):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    out = st.pl.domains(sdata, ax=ax, legend=False, title="mine")  # drawn into the caller's axes: not shown
    assert out is fig
    assert ax.get_title() == "mine"
    assert ax.get_legend() is None


def test_a_figure_is_shown_or_returned_not_both(sdata, monkeypatch):
    # As scanpy: a shown figure is not returned, or Jupyter draws it twice (once shown, once as the cell's value).
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    assert st.pl.domains(sdata) is None
    assert len(shown) == 1
    assert st.pl.domains(sdata, show=True) is None
    assert len(shown) == 2
    assert st.pl.domains(sdata, show=False) is not None
    assert len(shown) == 2
    # every plot that makes its own figure: expression has no `ax` (it once read a loop variable of that name)
    assert st.pl.expression(sdata, "gene_0002") is None
    assert st.pl.gene_correlation(sdata) is None
    assert st.pl.embedding_umap(sdata) is None
    assert len(shown) == 5
    with pytest.raises(TypeError, match="`show` must be True or False or None"):
        st.pl.domains(sdata, show="yes")


@pytest.mark.parametrize(
    "transform",
    [
        Sequence([Scale([2.0, 2.0], axes=("x", "y")), Translation([-30.0, 12.0], axes=("x", "y"))]),
        Affine(np.array([[0.0, -1.0, 800.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), ("x", "y"), ("x", "y")),
    ],
    ids=["scaled-shifted", "rotated"],
)
def test_image_lines_up_with_spots_whatever_its_transformation(sdata, transform):
    moved = _with_image_transform(sdata, transform)
    slide = st.io.resolve(moved)
    full = np.asarray(slide.image.data.compute())
    bounds = spot_bounds(slide.centers_um, 55.0)
    tissue = read_tissue_image(slide, bounds, max_side=4000)  # no downsampling: pixels compare exactly
    inside = (slide.centers_px >= 0).all(1) & (slide.centers_px < 800).all(1)
    col_row = np.floor((np.linalg.inv(tissue.to_um) @ np.c_[slide.centers_um, np.ones(slide.n_obs)].T).T[:, :2]).astype(
        int
    )
    fx, fy = np.floor(slide.centers_px[inside]).astype(int).T
    np.testing.assert_array_equal(tissue.pixels[col_row[inside, 1], col_row[inside, 0]], full[:, fy, fx].T)
    fig = st.pl.domains(moved, key="true_domain", show=False)
    (image,) = [a for a in fig.axes[0].get_children() if isinstance(a, AxesImage)]
    assert image.get_array().shape[:2] == tissue.pixels.shape[:2]
    # the image is placed by its own transformation: a full-resolution pixel measures mpp microns
    np.testing.assert_allclose(np.sqrt(abs(np.linalg.det(image_to_um(slide)[:2, :2]))), slide.mpp)


def _gradient_slide(side: int = 4400, mpp: float = 0.5) -> SpatialData:
    """A large lazy image whose red/green channels encode x/y (in 32-pixel steps), with 60 spots over it."""
    x = da.arange(side, chunks=1024) // 32
    y = da.arange(side, chunks=1024) // 32
    red = da.broadcast_to(x[None, :], (side, side))
    green = da.broadcast_to(y[:, None], (side, side))
    image = da.stack([red, green, da.full((side, side), 128, chunks=1024)]).astype(np.uint8)
    rng = np.random.default_rng(0)
    centers = rng.uniform(200, side - 200, size=(60, 2))
    table = AnnData(
        np.ones((60, 3), dtype=np.float32),
        obs=pd.DataFrame({"region": pd.Categorical(rng.choice(["a", "b"], 60))}, index=[f"s{i}" for i in range(60)]),
    )
    return st.io.from_arrays(table, centers, image, mpp=mpp, spot_diameter_um=20.0, library_id="big")


def test_large_image_is_read_from_a_coarse_level_and_placed_exactly():
    sdata = _gradient_slide()
    slide = st.io.resolve(sdata)
    assert len(slide.image.children) > 1  # from_arrays built a pyramid
    bounds = spot_bounds(slide.centers_um, 20.0)
    tissue = read_tissue_image(slide, bounds, max_side=500)
    assert max(tissue.pixels.shape[:2]) <= 500
    step = tissue.to_um[0, 0] / slide.mpp
    assert step >= 8  # full-resolution pixels per displayed pixel
    # the centre of each displayed pixel shows the gradient value of the full-resolution pixels under it
    h, w = tissue.pixels.shape[:2]
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    um = (tissue.to_um @ np.stack([cols.ravel(), rows.ravel(), np.ones(cols.size)]))[:2]
    px = um / slide.mpp
    np.testing.assert_allclose(tissue.pixels[..., 0].ravel(), px[0] / 32 - 0.5, atol=1.0)
    np.testing.assert_allclose(tissue.pixels[..., 1].ravel(), px[1] / 32 - 0.5, atol=1.0)
    fig = st.pl.domains(sdata, key="region", show=False)
    (image,) = [a for a in fig.axes[0].get_children() if isinstance(a, AxesImage)]
    assert max(image.get_array().shape[:2]) <= 1800


def test_domains_errors(sdata, tmp_path, storm_log):
    import matplotlib.pyplot as plt

    with pytest.raises(KeyError, match=r"'not_a_column'\] not found"):
        st.pl.domains(sdata, key="not_a_column")
    with pytest.raises(KeyError, match="Run st.tl.storm_domains first"):
        st.pl.domains(st.datasets.toy(n_obs=60, n_genes=10, n_domains=2, seed=0))
    numeric = sdata["table"].copy()
    numeric.obs["depth"] = np.linspace(0.0, 1.0, numeric.n_obs)
    other = SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": numeric})
    other.attrs.update(sdata.attrs)
    with pytest.raises(TypeError, match="categories"):
        st.pl.domains(other, key="depth")
    with pytest.raises(ValueError, match="between 0 and 1"):
        st.pl.domains(sdata, alpha=2)
    with pytest.raises(TypeError, match=r"`image_key` must be a name.*pass image_key='toy_image'"):
        st.pl.domains(sdata, image_key=["toy_image"])
    with pytest.raises(TypeError, match=r"`table_key` must be a name"):
        st.pl.domains(sdata, table_key=["table"])
    with pytest.raises(ValueError, match="positive"):
        st.pl.domains(sdata, spot_size=-5)
    with pytest.raises(TypeError, match="SpatialData"):
        st.pl.domains("slide.zarr")
    with pytest.raises(ValueError, match="suffix"):
        st.pl.domains(sdata, save=tmp_path / "domains.unknown")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        st.pl.domains(sdata, save=tmp_path / "missing" / "domains.png")
    with pytest.raises(ValueError, match="one per panel"):
        st.pl.domains(sdata, ax=[])
    assert plt.get_fignums() == []  # refused before drawing anything
    with pytest.raises(KeyError, match="No table"):
        st.pl.domains(sdata, table_key="nope")
    crowded = SpatialData(
        images=dict(sdata.images),
        shapes=dict(sdata.shapes),
        tables={k: sdata.tables[k].copy() for k in ("table", "storm_predicted")} | {"other": sdata["table"].copy()},
    )
    with pytest.raises(ValueError, match="pass `table_key=`"):
        st.pl.domains(crowded)
    # an existing file is replaced with a warning, never silently
    target = tmp_path / "again.png"
    target.write_bytes(b"old")
    st.pl.domains(sdata, save=target)
    assert target.read_bytes()[:4] == b"\x89PNG"
    assert any("Replacing" in r.message and r.levelno == logging.WARNING for r in storm_log.records)


def test_visium_hd_bins_are_drawn_as_squares_of_their_size():
    from matplotlib.collections import PolyCollection

    from tests.io._synthetic import visium_hd_sdata

    hd = visium_hd_sdata(bin_sizes=(8,), cells=False)
    table = hd["square_008um"]
    table.obs["region_kind"] = pd.Categorical(np.where(np.arange(table.n_obs) % 2, "a", "b"))
    fig = st.pl.domains(hd, key="region_kind", table_key="square_008um", show=False)
    squares = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(squares) == 1
    corners = np.stack([p.vertices[:4] for p in squares[0].get_paths()])
    np.testing.assert_allclose(np.ptp(corners, axis=1), 8.0)  # 8 um wide and high: the bins tile the tissue
    centres = st.io.resolve(hd, table_key="square_008um").centers_um
    np.testing.assert_allclose(corners.mean(axis=1), centres)


def test_domains_numbered_by_separate_calls_are_flagged_in_one_figure(slides, storm_log):
    with storm_log.at_level(logging.WARNING, logger="storm_sc"):
        st.pl.domains(slides, show=False)  # clustered together: one numbering
        assert not [r for r in storm_log.records if "separate storm_domains calls" in r.getMessage()]
        copies = [st.tl.storm_domains(s, n_domains=3, key_added="apart", copy=True) for s in slides]
        fig = st.pl.domains(copies, key="apart", image=False, show=False)
        st.pl.embedding_umap(copies, color="apart", show=False)
    flagged = [r.getMessage() for r in storm_log.records if "separate storm_domains calls" in r.getMessage()]
    assert len(flagged) == 2 and ".obs['apart'] of these slides comes from 2 separate" in flagged[0]
    # numbered apart, one legend would pair unrelated domains: each panel has its own, from its own colours
    axes = [a for a in fig.axes if a.get_visible()]
    for ax, sdata in zip(axes, copies, strict=True):
        table = sdata["table"]
        legend = ax.get_legend()
        assert legend is not None and legend.get_title().get_text() == "apart (this slide)"
        assert [t.get_text() for t in legend.get_texts()] == list(table.obs["apart"].cat.categories)
        colors = table.uns["apart_colors"]
        expected = np.array([to_rgba(colors[c], 0.75) for c in table.obs["apart"].cat.codes])
        np.testing.assert_allclose(_spots(ax).get_facecolor(), expected)
