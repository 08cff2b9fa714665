"""Every key that storm_sc writes into AnnData / SpatialData objects, named once.

The documentation's storage-conventions page lists these; do not scatter string literals.
"""

# .obsm
OBSM_EMBEDDING = "X_storm"
# .obs
OBS_DOMAIN = "storm_domain"
# .uns
UNS_STORM = "storm"
# sdata.tables
TABLE_PREDICTED = "storm_predicted"
# .var of an aligned table
VAR_IN_VOCABULARY = "storm_in_vocabulary"
# SpatialData.attrs written by storm_sc's own readers (io.from_arrays, read_hest, datasets)
ATTRS_STORM = "storm_sc"

# Physical defaults
DEFAULT_PATCH_UM = 112.0
DEFAULT_PATCH_PX = 224
VISIUM_SPOT_DIAMETER_UM = 55.0
LEGACY_ST_SPOT_DIAMETER_UM = 100.0
