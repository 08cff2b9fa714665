"""Generated SpatialData for the resolve tests: images that encode their own pixel coordinates, a Visium HD layout."""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
from shapely.geometry import Point, box
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Affine, Identity, Scale, get_transformation


def coordinate_image(height: int, width: int) -> np.ndarray:
    """``(3, y, x)`` uint8 image whose pixel (row y, column x) holds R = x % 256, G = y % 256, B = coarse x, y."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx % 256, yy % 256, (xx // 256) + 16 * (yy // 256)]).astype(np.uint8)


def decode_pixels(image_cyx: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Read back ``(x, y)`` pixel indices encoded by :func:`coordinate_image` at the pixels containing ``xy``."""
    cols = np.floor(xy[:, 0]).astype(int)
    rows = np.floor(xy[:, 1]).astype(int)
    r, g, b = (image_cyx[c, rows, cols].astype(int) for c in range(3))
    return np.stack([r + 256 * (b % 16), g + 256 * (b // 16)], axis=1)


def affine(theta_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """``3 x 3`` similarity transform: rotate by ``theta``, scale, translate."""
    t = np.deg2rad(theta_deg)
    return np.array(
        [[scale * np.cos(t), -scale * np.sin(t), tx], [scale * np.sin(t), scale * np.cos(t), ty], [0, 0, 1.0]]
    )


def expression(n_obs: int, n_vars: int = 5, *, seed: int = 0, prefix: str = "obs") -> ad.AnnData:
    """Poisson counts with unique obs names."""
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(rng.poisson(2.0, size=(n_obs, n_vars)).astype(np.float32))
    adata.obs_names = [f"{prefix}_{i}" for i in range(n_obs)]
    adata.var_names = [f"gene_{j}" for j in range(n_vars)]
    return adata


def aligned_sdata(
    *,
    n_obs: int = 60,
    height: int = 300,
    width: int = 520,
    image_to_cs: np.ndarray | None = None,
    shapes_to_cs: np.ndarray | None = None,
    radius_px: float = 8.0,
    multiscale: bool = False,
    seed: int = 0,
    cs: str = "aligned",
) -> tuple[SpatialData, np.ndarray]:
    """A plain SpatialData (no platform attrs): coordinate image, circles and a table, placed by affines in ``cs``.

    Returns the SpatialData and the true ``(x, y)`` pixel positions of the observations in the image.
    """
    rng = np.random.default_rng(seed)
    image_to_cs = affine(0, 1, 0, 0) if image_to_cs is None else image_to_cs
    shapes_to_cs = affine(0, 1, 0, 0) if shapes_to_cs is None else shapes_to_cs
    true_px = np.column_stack([rng.uniform(5, width - 5, n_obs), rng.uniform(5, height - 5, n_obs)])
    # positions of the circles in their own intrinsic space, such that shapes->cs lands on image->cs(true_px)
    to_shapes = np.linalg.inv(shapes_to_cs) @ image_to_cs
    xy = true_px @ to_shapes[:2, :2].T + to_shapes[:2, 2]
    shape_radius = radius_px * np.sqrt(abs(np.linalg.det(to_shapes[:2, :2])))

    img = Image2DModel.parse(
        coordinate_image(height, width),
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=[2, 2] if multiscale else None,
        transformations={cs: Affine(image_to_cs, input_axes=("x", "y"), output_axes=("x", "y"))},
    )
    ids = np.arange(100, 100 + n_obs)  # not 0..n-1, so that matching by position would be caught
    order = rng.permutation(n_obs)  # shapes stored in another order than the table rows
    circles = gpd.GeoDataFrame(
        {"radius": np.full(n_obs, shape_radius)},
        geometry=[Point(*p) for p in xy[order]],
        index=ids[order],
    )
    shapes = ShapesModel.parse(
        circles, transformations={cs: Affine(shapes_to_cs, input_axes=("x", "y"), output_axes=("x", "y"))}
    )
    table = expression(n_obs, seed=seed)
    table.obs["region"] = pd.Categorical(["spots"] * n_obs)
    table.obs["spot_id"] = ids
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
    sdata = SpatialData(images={"he": img}, shapes={"spots": shapes}, tables={"table": table})
    return sdata, true_px


def fingerprint(sdata: SpatialData) -> dict:
    """Everything a resolve could be tempted to change, to check that it changes nothing."""
    out: dict = {"attrs": repr(sdata.attrs)}
    for key, table in sdata.tables.items():
        out[f"table:{key}"] = (
            tuple(table.obs_names),
            tuple(table.obs.columns),
            tuple(table.obsm.keys()),
            tuple(table.uns.keys()),
            float(np.asarray(table.X.sum())),
            table.shape,
        )
    for group in ("images", "labels", "shapes", "points"):
        for key, el in getattr(sdata, group).items():
            out[f"{group}:{key}"] = repr(get_transformation(el, get_all=True))
    for key, el in sdata.shapes.items():
        out[f"geom:{key}"] = (tuple(el.index), el.geometry.centroid.x.sum(), tuple(el.columns))
    return out


# --- Visium HD, laid out as spatialdata_io.visium_hd writes it -------------------------------------------------

HD_MPP = 0.5  # microns per full-resolution pixel of the generated slide
HD_HIRES_SCALEF = 0.25
HD_LOWRES_SCALEF = 0.0625


def visium_hd_sdata(
    *,
    dataset_id: str = "hd",
    bin_sizes: tuple[int, ...] = (2, 8, 16),
    extent_um: float = 40.0,
    origin_px: tuple[float, float] = (30.0, 40.0),
    full_image: bool = True,
    cells: bool = True,
    reader_attr: str = "visium_hd",
    seed: int = 0,
) -> SpatialData:
    """A small Visium HD SpatialData with the element names, transforms and attrs of ``spatialdata_io.visium_hd``.

    Bins cover ``extent_um`` x ``extent_um`` from ``origin_px`` in a full-resolution image at ``HD_MPP`` um/px;
    tables ``square_XXXum`` annotate squares ``<dataset_id>_square_XXXum`` (index = ``location_id``); the
    optional segmented-cell table ``cell_segmentations`` annotates polygons ``<dataset_id>_cell_segmentations``.
    """
    rng = np.random.default_rng(seed)
    transformations = {
        dataset_id: Identity(),
        f"{dataset_id}_downscaled_hires": Scale([HD_HIRES_SCALEF, HD_HIRES_SCALEF], axes=("y", "x")),
        f"{dataset_id}_downscaled_lowres": Scale([HD_LOWRES_SCALEF, HD_LOWRES_SCALEF], axes=("y", "x")),
    }
    side_full = int(origin_px[0] + extent_um / HD_MPP + 60)
    tables, shapes, images = {}, {}, {}
    for bin_um in bin_sizes:
        name = f"square_{bin_um:03}um"
        n = int(extent_um // bin_um)
        rows, cols = np.mgrid[0:n, 0:n]
        rows, cols = rows.ravel(), cols.ravel()
        side_px = bin_um / HD_MPP
        x = origin_px[0] + (cols + 0.5) * side_px
        y = origin_px[1] + (rows + 0.5) * side_px
        adata = expression(len(x), seed=seed + bin_um, prefix=f"s_{bin_um:03}um")
        adata.obs_names = [f"s_{bin_um:03}um_{r:05}_{c:05}-1" for r, c in zip(rows, cols, strict=True)]
        adata.obs["in_tissue"] = 1
        adata.obs["array_row"] = rows
        adata.obs["array_col"] = cols
        adata.obs["location_id"] = np.arange(len(x))
        adata.obs["region"] = pd.Categorical([f"{dataset_id}_{name}"] * len(x))
        adata.obsm["spatial"] = np.column_stack([x, y])
        circles = ShapesModel.parse(
            np.column_stack([x, y]),
            geometry=0,
            radius=side_px / 2.0,
            index=adata.obs["location_id"].copy(),
            transformations=transformations,
        )
        squares = circles.buffer(side_px / 2.0, cap_style=3)
        shapes[f"{dataset_id}_{name}"] = ShapesModel.parse(
            gpd.GeoDataFrame(geometry=squares), transformations=transformations
        )
        tables[name] = TableModel.parse(
            adata, region=f"{dataset_id}_{name}", region_key="region", instance_key="location_id"
        )

    if cells:
        n_cells = 12
        centres = np.column_stack(
            [
                rng.uniform(origin_px[0] + 10, origin_px[0] + extent_um / HD_MPP - 10, n_cells),
                rng.uniform(origin_px[1] + 10, origin_px[1] + extent_um / HD_MPP - 10, n_cells),
            ]
        )
        ids = [f"cellid_{i:09}-1" for i in range(n_cells)]
        polys = gpd.GeoDataFrame(geometry=[box(cx - 6, cy - 5, cx + 6, cy + 5) for cx, cy in centres], index=ids)
        key = f"{dataset_id}_cell_segmentations"
        shapes[key] = ShapesModel.parse(polys, transformations=transformations)
        cells_adata = expression(n_cells, seed=seed, prefix="cellid")
        cells_adata.obs_names = ids
        cells_adata.obs["cell_id"] = ids
        cells_adata.obs["region"] = pd.Categorical([key] * n_cells)
        tables["cell_segmentations"] = TableModel.parse(
            cells_adata, region=key, region_key="region", instance_key="cell_id"
        )

    he = coordinate_image(side_full, side_full)
    if full_image:
        images[f"{dataset_id}_full_image"] = Image2DModel.parse(
            he, dims=("c", "y", "x"), scale_factors=[2], transformations={dataset_id: Identity()}
        )
    for tag, scalef in (("hires", HD_HIRES_SCALEF), ("lowres", HD_LOWRES_SCALEF)):
        small = he[:, :: int(1 / scalef), :: int(1 / scalef)]
        images[f"{dataset_id}_{tag}_image"] = Image2DModel.parse(
            small,
            dims=("c", "y", "x"),
            transformations={
                f"{dataset_id}_downscaled_{tag}": Identity(),
                dataset_id: Scale([scalef, scalef], axes=("y", "x")).inverse(),
            },
        )
    # the CytAssist capture: RGB too, coarse, placed by an affine; never the H&E to use
    images[f"{dataset_id}_cytassist_image"] = Image2DModel.parse(
        np.full((3, 50, 50), 200, dtype=np.uint8),
        dims=("c", "y", "x"),
        transformations={dataset_id: Affine(affine(3, 4.0, -10, -5), input_axes=("x", "y"), output_axes=("x", "y"))},
    )
    sdata = SpatialData(images=images, shapes=shapes, tables=tables)
    sdata.attrs["spatialdata_io_software_version"] = "0.7.1"
    sdata.attrs["spatialdata_io_reader"] = reader_attr
    return sdata
