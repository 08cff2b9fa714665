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
# The tissue tiles that stand for the observations of an H&E-only slide: their table and their circles
# (spatialdata wants element names unique across element types)
TABLE_TILES = "storm_tiles"
SHAPES_TILES = "storm_tile_circles"
# .var of an aligned table
VAR_IN_VOCABULARY = "storm_in_vocabulary"
# SpatialData.attrs written by storm_sc's own readers (io.from_arrays, read_hest, datasets)
ATTRS_STORM = "storm_sc"

# Physical defaults
DEFAULT_PATCH_UM = 112.0
DEFAULT_PATCH_PX = 224
VISIUM_SPOT_DIAMETER_UM = 55.0
LEGACY_ST_SPOT_DIAMETER_UM = 100.0

# Published labels and annotations written by the dataset loaders
OBS_TRUE_DOMAIN = "true_domain"  # .obs: the planted domain of st.datasets.toy
VAR_MARKER_OF = "marker_of"  # .var: which domain a toy gene marks ("" for background genes)
OBS_LAYER = "layer"  # .obs: manual layers of dlpfc (L1-L6, WM) and mob (olfactory bulb layers)
OBS_PATHOLOGIST_LABEL = "pathologist_label"  # .obs: her2st ST-pat/lbl
OBS_EXPRESSION_CLUSTER = "expression_cluster"  # .obs: her2st res/ST-cluster/lbl
OBS_ORGANOID = "organoid"  # .obs: visium_ffpe organoid_selection.txt
VAR_HISTOGENE_PANEL = "histogene_panel"  # .var: the 785-gene panel of HisToGene/Hist2ST on her2st

# Sub-keys of sdata.attrs["storm_sc"]
ATTRS_DATASET = "dataset"  # the dataset a loader returned
ATTRS_TECHNOLOGY = "technology"  # the technology behind a from_arrays build
ATTRS_MPP_SOURCE = "mpp_source"  # how the pixel size was obtained (given, estimated, ...)
ATTRS_SEED = "seed"  # the seed of generated data
# .layers of the predicted-expression table
LAYER_PREDICTED_STD = "predicted_std"
OBSM_SPATIAL_UM = "spatial_um"  # .obsm of a prediction: positions in microns (its "spatial" is the table's own)
