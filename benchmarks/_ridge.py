"""Ridge regression from image features to expression, its penalty chosen by grouped cross-validation."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ._metrics import pearson_per_gene

logger = logging.getLogger("storm_sc.benchmarks")

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-1, 6, 15))


def _mean_pearson(estimator: BaseEstimator, x: np.ndarray, y: np.ndarray) -> float:
    r = pearson_per_gene(y, estimator.predict(x))
    # A fold where no gene varies cannot rank penalties; scoring it the worst keeps the search defined.
    return float(np.nanmean(r)) if np.isfinite(r).any() else -1.0


def fit_ridge(
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups: np.ndarray,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> tuple[Pipeline, float]:
    """Standardise features and fit one multi-output ridge, choosing its penalty on the training data only.

    The penalty maximises the mean per-gene Pearson correlation over leave-one-group-out folds of the training
    rows (``groups``: training sections, or spatial blocks of a single section, see
    :func:`benchmarks._splits.inner_groups`). The scaler is refitted inside every fold, so no fold sees the
    statistics of the rows it is scored on; the final model is refitted on all training rows.

    Parameters
    ----------
    x_train
        ``(n, n_features)`` features.
    y_train
        ``(n, n_genes)`` targets.
    groups
        ``(n,)`` fold labels, at least two distinct values.
    alphas
        Ridge penalties to try.

    Returns
    -------
    The fitted ``StandardScaler -> Ridge`` pipeline and the chosen penalty.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(60, 5))
    >>> y = x[:, :2] @ np.array([[1.0, 0.0], [0.0, 2.0]]) + 0.1 * rng.normal(size=(60, 2))
    >>> model, alpha = fit_ridge(x, y, np.repeat([0, 1, 2], 20))
    >>> model.predict(x).shape
    (60, 2)
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    y_train = np.asarray(y_train, dtype=np.float64)
    groups = np.asarray(groups)
    if x_train.ndim != 2 or y_train.ndim != 2 or len(x_train) != len(y_train) or groups.shape != (len(x_train),):
        raise ValueError(
            f"`x_train` (n, features), `y_train` (n, genes) and `groups` (n,) must agree in n; "
            f"got {x_train.shape}, {y_train.shape}, {groups.shape}."
        )
    if len(np.unique(groups)) < 2:
        raise ValueError("`groups` needs at least two distinct values to hold a fold out.")
    if not np.isfinite(x_train).all():
        raise ValueError("`x_train` holds NaN or infinite features; fix the feature extraction first.")
    alphas = [float(a) for a in alphas]
    if not alphas or any(a <= 0 for a in alphas):
        raise ValueError(f"`alphas` must be positive penalties, got {alphas!r}.")
    search = GridSearchCV(
        make_pipeline(StandardScaler(), Ridge()),
        {"ridge__alpha": alphas},
        scoring=_mean_pearson,
        cv=LeaveOneGroupOut(),
        refit=True,
        n_jobs=1,
    )
    with warnings.catch_warnings():
        # Constant features inside one fold (e.g. a texture bin that never fires) are harmless for ridge.
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        search.fit(x_train, y_train, groups=groups)
    alpha = float(search.best_params_["ridge__alpha"])
    if alpha in (min(alphas), max(alphas)) and len(alphas) > 1:
        # With a correlation score, very large penalties converge (predictions shrink but keep their direction).
        logger.debug("ridge penalty %.3g is at the edge of the grid %.3g..%.3g", alpha, min(alphas), max(alphas))
    return search.best_estimator_, alpha
