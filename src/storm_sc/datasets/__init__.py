"""storm_sc.datasets: real public datasets (downloaded once into ``st.settings.data_dir``) and generated data."""

from ._catalog import available
from ._her2st import her2st
from ._olfactory_bulb import mob, mob_he
from ._platform_fixtures import cosmx_lung12, xenium_lung_he, xenium_mouse_brain, xenium_toy
from ._toy import toy
from ._visium import dlpfc, visium_ffpe, visium_heart

__all__ = [
    "available",
    "cosmx_lung12",
    "dlpfc",
    "her2st",
    "mob",
    "mob_he",
    "toy",
    "visium_ffpe",
    "visium_heart",
    "xenium_lung_he",
    "xenium_mouse_brain",
    "xenium_toy",
]
