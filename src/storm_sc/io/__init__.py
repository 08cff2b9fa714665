"""Data access: turn SpatialData from any platform into the model's input."""

from ._build import from_arrays
from ._hest import read_hest
from ._legacy_st import read_st
from ._resolve import detect_platform, resolve
from ._slides import split_slides
from ._spatial_input import SpatialInput

__all__ = ["SpatialInput", "detect_platform", "from_arrays", "read_hest", "read_st", "resolve", "split_slides"]
