import numpy as np
import spatialdata as sd
from spatialdata.models import Image2DModel
from spatialdata.transformations import Scale, get_transformation

from storm_sc.io import _tiles


def _slide(side: int, *, scale_factors=None, transformations=None):
    """Bright glass with a stained disc of a third of the side in the middle."""
    yy, xx = np.mgrid[:side, :side]
    disc = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side / 3) ** 2
    rgb = np.full((3, side, side), 240, dtype=np.uint8)
    rgb[:, disc] = np.array([150, 60, 140], dtype=np.uint8)[:, None]  # haematoxylin-eosin purple
    image = Image2DModel.parse(rgb, dims=("c", "y", "x"), scale_factors=scale_factors, transformations=transformations)
    return sd.SpatialData(images={"he": image})


def test_thumbnail_comes_from_the_coarsest_level_large_enough():
    pixels, factor = _tiles.thumbnail(_slide(400, scale_factors=[2, 2]).images["he"], side=100)
    assert pixels.shape == (100, 100, 3) and factor == 4  # the 100 px level, not a stride through 400 px
    pixels, factor = _tiles.thumbnail(_slide(400).images["he"], side=100)
    assert pixels.shape == (100, 100, 3) and factor == 4


def test_tiles_cover_the_tissue_and_keep_the_image_transformations():
    slide = _slide(600, transformations={"global": Scale([2.0, 2.0], axes=("y", "x"))})
    tiles = _tiles.tile_observations(slide, image_key=None, mpp=1.0, tile_um=20.0)
    circles = tiles.shapes["storm_tile_circles"]
    xy = np.array([[p.x, p.y] for p in circles.geometry])
    # every tile centre on the disc (radius 200 px around 300, 300), and most of the disc covered
    assert (np.hypot(xy[:, 0] - 300, xy[:, 1] - 300) < 200 + 10).all()
    assert len(xy) > 0.8 * np.pi * 200**2 / 20**2
    np.testing.assert_allclose(circles["radius"], 10.0)
    assert get_transformation(circles, "global") == get_transformation(slide.images["he"], "global")
    assert tiles.tables["storm_tiles"].n_obs == len(xy) and not slide.shapes
