"""The tools warn when an H&E image does not line up with the observations (they lie on its glass)."""

import anndata as ad
import numpy as np

import storm_sc as st
from storm_sc.io._alignment import on_tissue, warn_if_misaligned


def _half_tissue_slide(shift_px: float = 0.0):
    """A 400 x 400 px image (2 um/px), stained tissue on its left half, glass on the right; spots on the tissue."""
    image = np.full((400, 400, 3), 235, dtype=np.uint8)
    rng = np.random.default_rng(0)
    image[:, :200] = (170, 90, 150) + rng.integers(-15, 15, (400, 200, 3))
    xy = np.column_stack([rng.uniform(20, 180, 150), rng.uniform(20, 380, 150)]) + [shift_px, 0]
    table = ad.AnnData(rng.poisson(1.0, (150, 10)).astype(np.float32))
    return st.io.from_arrays(table, xy, image.transpose(2, 0, 1), mpp=2.0, spot_diameter_um=20.0, library_id="half")


def test_observations_on_glass_are_warned_about(storm_log):
    aligned = st.io.resolve(_half_tissue_slide())
    observations, share = on_tissue(aligned)
    assert observations > 0.95 and 0.4 < share < 0.6
    with storm_log.at_level("WARNING", logger="storm_sc"):
        warn_if_misaligned(aligned)
    assert "lie on tissue" not in storm_log.text
    shifted = st.io.resolve(_half_tissue_slide(shift_px=200.0))  # the same spots over the glass half
    with storm_log.at_level("WARNING", logger="storm_sc"):
        warn_if_misaligned(shifted)
    assert "Slide 'half': only 0% of its observations lie on tissue" in storm_log.text
