"""Turn whatever the user passes (SpatialData, AnnData or an already resolved SpatialInput) into a SpatialInput."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anndata import AnnData

from storm_sc.io._spatial_input import SpatialInput

if TYPE_CHECKING:
    from spatialdata import SpatialData


def as_spatial_input(
    data: SpatialData | AnnData | SpatialInput,
    *,
    caller: str,
    **options: Any,
) -> SpatialInput:
    """Resolve ``data`` with :func:`storm_sc.io.resolve`, or return it when it is already a :class:`SpatialInput`.

    ``options`` are the keyword arguments of ``resolve`` (``table_key``, ``image_key``, ``mpp``, ``library_id``);
    those left at ``None`` are not passed on.
    """
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(data, SpatialInput):
        if given:
            # A SpatialInput is already resolved: silently ignoring e.g. `mpp=` would give wrong physical sizes.
            raise ValueError(
                f"`{caller}` received a SpatialInput together with {sorted(given)}; those options only apply when "
                "resolving a SpatialData or AnnData. Pass them to `st.io.resolve(...)` instead, or pass the "
                "SpatialData itself."
            )
        return data
    from spatialdata import SpatialData

    if not isinstance(data, SpatialData | AnnData):
        raise TypeError(
            f"`{caller}` expects a SpatialData, an AnnData or a SpatialInput (from `st.io.resolve`); "
            f"got {type(data).__name__}."
        )
    # Imported here so that storm_sc.pp imports even while storm_sc.io is being assembled.
    from storm_sc.io import resolve

    return resolve(data, **given)


def table_of(data: SpatialData | AnnData | SpatialInput, *, caller: str, table_key: str | None = None) -> AnnData:
    """Return the AnnData holding the expression of ``data``; a bare AnnData needs no spatial resolution."""
    if isinstance(data, AnnData):
        if table_key is not None:
            raise ValueError(f"`{caller}`: `table_key` only applies to a SpatialData; an AnnData was given.")
        return data
    return as_spatial_input(data, caller=caller, table_key=table_key).table
