"""The resolved view of one slide that every later step (patches, expression, graph, model) consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from anndata import AnnData


@dataclass(frozen=True, eq=False)
class SpatialInput:
    """One table of observations with its image, positions and physical scale, resolved from a SpatialData.

    Built by :func:`storm_sc.io.resolve`; never by hand in user code. Nothing here is a copy of the
    user's data: ``table`` and ``image`` are the objects held by the SpatialData (read lazily).

    Attributes
    ----------
    table
        The AnnData table, rows in the user's order.
    table_key
        Its key in ``sdata.tables`` (``None`` for a bare AnnData).
    regions
        The element(s) the table annotates (shapes or labels), from ``get_table_keys``.
    platform
        ``"visium"``, ``"visium_hd"``, ``"xenium"``, ``"cosmx"``, ``"legacy_st"``, ``"hest"`` or ``"generic"``.
    coordinate_system
        The coordinate system in which observations and image were brought together.
    centers_um
        ``(n_obs, 2)`` float64 observation centres in microns, ``(x, y)``.
    image_key
        Key of the H&E image in ``sdata.images``, or ``None`` when the slide has none (expression-only use).
    image
        The image element (a ``DataArray`` or multiscale ``DataTree``), or ``None``.
    centers_px
        ``(n_obs, 2)`` float64 observation centres in pixels of the image's full-resolution level, ``(x, y)``,
        or ``None`` without an image.
    mpp
        Microns per pixel of the image's full-resolution level, or ``None`` without an image.
    library_id
        Name of the slide, used to keep slides apart when several are combined.
    extra
        Platform details worth keeping (bin size, spot diameter, ...).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> si = st.io.resolve(sdata)
    >>> si.platform, si.n_obs, si.has_image, si.mpp
    ('generic', 200, True, 2.0)
    >>> si.image_key, si.centers_um.shape
    ('toy_image', (200, 2))
    """

    table: AnnData
    table_key: str | None
    regions: tuple[str, ...]
    platform: str
    coordinate_system: str
    centers_um: np.ndarray
    image_key: str | None = None
    image: Any = None
    centers_px: np.ndarray | None = None
    mpp: float | None = None
    library_id: str = "slide"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_obs(self) -> int:
        """Number of observations (table rows)."""
        return self.table.n_obs

    @property
    def has_image(self) -> bool:
        """Whether an H&E image was found."""
        return self.image is not None

    def __repr__(self) -> str:
        img = f"image={self.image_key!r} at {self.mpp:.3g} um/px" if self.has_image else "no image"
        return (
            f"SpatialInput({self.platform}, table={self.table_key!r} with {self.n_obs} obs x {self.table.n_vars} vars, "
            f"regions={list(self.regions)}, cs={self.coordinate_system!r}, {img})"
        )
