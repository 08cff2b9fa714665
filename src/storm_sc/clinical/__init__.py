"""Clinical prediction from whole-slide H&E: STORM slide features, attention MIL, patient-level evaluation.

The user-facing calls are :func:`storm_sc.tl.slide_features` and :func:`storm_sc.tl.fit_outcome`; this package
holds their parts.
"""

from ._cohort import Cohort, validate_cohort
from ._evaluation import c_index, hazard_ratio_per_sd, patient_folds
from ._features import FEATURE_KEYS, SlideFeatures, read_slide_features
from ._mil import GatedAttentionMIL, MeanPoolMIL, MILSettings, cox_loss
from ._result import OutcomeResult

__all__ = [
    "FEATURE_KEYS",
    "Cohort",
    "GatedAttentionMIL",
    "MILSettings",
    "MeanPoolMIL",
    "OutcomeResult",
    "SlideFeatures",
    "c_index",
    "cox_loss",
    "hazard_ratio_per_sd",
    "patient_folds",
    "read_slide_features",
    "validate_cohort",
]
