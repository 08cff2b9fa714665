"""Generated slides for the pp tests: images that encode their pixel coordinates, hexagonal spot grids."""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
from shapely.geometry import Point
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale
from xarray import DataArray

from storm_sc.io import SpatialInput

# Pixel values wrap every _WRAP pixels: 251 is prime, so the three channels never wrap together by accident.
_WRAP = 251


def coordinate_image(height: int, width: int) -> np.ndarray:
    """``(3, y, x)`` uint8: R = x % 251, G = y % 251, B = 16 (x // 251) + y // 251 (unique up to 4016 px)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx % _WRAP, yy % _WRAP, (xx // _WRAP) * 16 + yy // _WRAP]).astype(np.uint8)


def decode_center(patch: np.ndarray) -> np.ndarray:
    """Continuous full-resolution ``(x, y)`` at the centre of a ``(3, p, p)`` patch of :func:`coordinate_image`.

    Pixel ``i`` holds value ``i`` and its centre lies at ``i + 0.5``; averaging the 2 x 2 central output pixels
    (a linear ramp is preserved by linear filters) gives the value at the exact patch centre.
    """
    p = patch.shape[-1]
    lo, hi = p // 2 - 1, p // 2 + 1
    r, g, b = (float(patch[c, lo:hi, lo:hi].astype(float).mean()) for c in range(3))
    b = round(b)
    return np.array([(b // 16) * _WRAP + r + 0.5, (b % 16) * _WRAP + g + 0.5])


def safe_positions(n: int, height: int, width: int, *, margin: float, seed: int) -> np.ndarray:
    """``(n, 2)`` random ``(x, y)`` pixel positions at least ``margin`` px from any wrap of the encoding and edge."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        x, y = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        if margin <= x % _WRAP <= _WRAP - margin and margin <= y % _WRAP <= _WRAP - margin:
            out.append((x, y))
    return np.asarray(out)


def counts_table(n_obs: int, n_vars: int = 8, *, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(rng.poisson(3.0, size=(n_obs, n_vars)).astype(np.float32))
    adata.obs_names = [f"spot_{i}" for i in range(n_obs)]
    adata.var_names = [f"Gene{j}" for j in range(n_vars)]
    return adata


def image_sdata(
    image_cyx: np.ndarray,
    centers_px: np.ndarray,
    *,
    mpp: float,
    scale_factors: list[int] | None = None,
    seed: int = 0,
) -> SpatialData:
    """SpatialData whose image is placed in a micron coordinate system by a ``Scale(mpp)`` and whose circles are
    stored in microns (Identity), linked to a counts table. Nothing records ``mpp``: resolve needs ``mpp=``.
    """
    n = len(centers_px)
    image = Image2DModel.parse(
        image_cyx,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=scale_factors,
        chunks=(3, 256, 256),
        transformations={"microns": Scale([mpp, mpp], axes=("x", "y"))},
    )
    um = np.asarray(centers_px) * mpp
    circles = gpd.GeoDataFrame(
        {"radius": np.full(n, 5.0)}, geometry=[Point(x, y) for x, y in um], index=np.arange(10, 10 + n)
    )
    shapes = ShapesModel.parse(circles, transformations={"microns": Identity()})
    table = counts_table(n, seed=seed)
    table.obs["region"] = pd.Categorical(["spots"] * n)
    table.obs["spot_id"] = np.arange(10, 10 + n)
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
    return SpatialData(images={"he": image}, shapes={"spots": shapes}, tables={"table": table})


def spatial_input(
    image_cyx: np.ndarray | DataArray | None,
    centers_px: np.ndarray,
    *,
    mpp: float | None,
    scale_factors: list[int] | None = None,
    table: ad.AnnData | None = None,
) -> SpatialInput:
    """A SpatialInput built directly (no resolve), for cases resolve would refuse (e.g. centres off the image)."""
    centers_px = np.asarray(centers_px, dtype=np.float64)
    image = image_cyx if isinstance(image_cyx, DataArray) else None
    if isinstance(image_cyx, np.ndarray):
        image = Image2DModel.parse(
            image_cyx, dims=("c", "y", "x"), scale_factors=scale_factors, chunks=(image_cyx.shape[0], 256, 256)
        )
    return SpatialInput(
        table=table if table is not None else counts_table(len(centers_px)),
        table_key=None,
        regions=("spots",),
        platform="generic",
        coordinate_system="global",
        centers_um=centers_px * (mpp or 1.0),
        image_key=None if image is None else "he",
        image=image,
        centers_px=None if image is None else centers_px,
        mpp=None if image is None else mpp,
        library_id="synthetic",
    )


def hex_grid(n_rows: int, n_cols: int, *, pitch: float = 100.0, origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Centres ``(x, y)`` of a Visium-like hexagonal grid with ``pitch`` between neighbouring spots."""
    pts = [
        (origin[0] + c * pitch + (pitch / 2 if r % 2 else 0.0), origin[1] + r * pitch * np.sqrt(3) / 2)
        for r in range(n_rows)
        for c in range(n_cols)
    ]
    return np.asarray(pts, dtype=np.float64)
