"""Data access: turn SpatialData from any platform into the model's input."""

from ._build import from_arrays
from ._spatial_input import SpatialInput

__all__ = ["SpatialInput", "from_arrays"]
