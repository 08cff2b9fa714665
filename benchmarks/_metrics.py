"""Scores of predicted expression on one held-out section."""

from __future__ import annotations

import numpy as np

# Relative spread below which a column counts as constant (float32 round-off of a constant prediction).
_CONSTANT_RTOL = 1e-6


def pearson_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation between truth and prediction across spots, gene by gene.

    Conventions for the undefined cases, chosen so that averages stay comparable across methods:
    a gene whose true expression is constant on the section gets ``NaN`` (it cannot be scored and is left out
    of every method's average); a constant prediction (e.g. the training mean) of a gene that does vary gets
    ``0.0`` (it carries no information about where the gene is high).

    Parameters
    ----------
    y_true, y_pred
        ``(n_spots, n_genes)`` arrays.

    Returns
    -------
    ``(n_genes,)`` float64 correlations.

    Examples
    --------
    >>> t = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    >>> np.round(pearson_per_gene(t, np.array([[1.0, 0.0], [2.0, 5.0], [3.0, 1.0]])), 6).tolist()
    [1.0, nan]
    >>> pearson_per_gene(t[:, :1], np.ones((3, 1))).tolist()
    [0.0]
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(
            f"`y_true` and `y_pred` must be 2-D arrays of one shape; got {y_true.shape} and {y_pred.shape}."
        )
    if y_true.shape[0] < 2:
        raise ValueError(f"a correlation needs at least 2 spots, got {y_true.shape[0]}.")
    t = y_true - y_true.mean(axis=0)
    p = y_pred - y_pred.mean(axis=0)
    t_norm = np.sqrt((t**2).sum(axis=0))
    p_norm = np.sqrt((p**2).sum(axis=0))
    scale_t = np.abs(y_true).max(axis=0) + 1.0
    scale_p = np.abs(y_pred).max(axis=0) + 1.0
    t_const = t_norm <= _CONSTANT_RTOL * scale_t
    p_const = p_norm <= _CONSTANT_RTOL * scale_p
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (t * p).sum(axis=0) / (t_norm * p_norm)
    r = np.clip(r, -1.0, 1.0)
    r[p_const] = 0.0
    r[t_const] = np.nan
    return r


def mse_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean squared error across spots, gene by gene.

    Parameters
    ----------
    y_true, y_pred
        ``(n_spots, n_genes)`` arrays.

    Returns
    -------
    ``(n_genes,)`` float64 errors.

    Examples
    --------
    >>> mse_per_gene(np.zeros((2, 1)), np.array([[1.0], [3.0]])).tolist()
    [5.0]
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(
            f"`y_true` and `y_pred` must be 2-D arrays of one shape; got {y_true.shape} and {y_pred.shape}."
        )
    return ((y_true - y_pred) ** 2).mean(axis=0)


def interval_calibration(y_true: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> dict[str, float]:
    """How honest a predicted standard deviation is on held-out data.

    Parameters
    ----------
    y_true, mean, sd
        ``(n_spots, n_genes)`` arrays: the measured values, the predicted means and standard deviations.

    Returns
    -------
    ``coverage_95``: fraction of values within ``mean +- 1.96 sd`` (0.95 for calibrated Gaussian errors);
    ``within_1sd``: within ``mean +- sd`` (0.68); ``sd_over_rmse``: the median over genes of the mean predicted sd
    over the gene's root mean squared error (1 when the spread of the errors is right on average).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.normal(size=(20000, 3))
    >>> cal = interval_calibration(truth, np.zeros_like(truth), np.ones_like(truth))
    >>> [round(cal[k], 2) for k in ("coverage_95", "within_1sd", "sd_over_rmse")]
    [0.95, 0.68, 1.0]
    """
    y_true, mean, sd = (np.asarray(a, dtype=np.float64) for a in (y_true, mean, sd))
    if not y_true.shape == mean.shape == sd.shape or y_true.ndim != 2:
        raise ValueError(f"`y_true`, `mean` and `sd` must be 2-D arrays of one shape; got {y_true.shape}, "
                         f"{mean.shape} and {sd.shape}.")  # fmt: skip
    err = np.abs(y_true - mean)
    rmse = np.sqrt((err**2).mean(axis=0))
    keep = rmse > 0
    return {
        "coverage_95": float((err <= 1.96 * sd).mean()),
        "within_1sd": float((err <= sd).mean()),
        "sd_over_rmse": float(np.median(sd.mean(axis=0)[keep] / rmse[keep])) if keep.any() else float("nan"),
    }
