"""Data access: turn SpatialData from any platform into the model's input."""

from ._build import from_arrays
from ._spatial_input import SpatialInput

__all__ = ["SpatialInput", "from_arrays"]

from ._resolve import detect_platform, resolve  # noqa: E402

__all__ += ["detect_platform", "resolve"]

from ._hest import read_hest  # noqa: E402
from ._legacy_st import read_st  # noqa: E402

__all__ += ["read_hest", "read_st"]
