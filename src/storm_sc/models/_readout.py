"""Linear expression readout: ridge regression from H&E-only STORM embeddings to expression, in closed form.

The network's prediction head is trained by stochastic gradients on a few random genes per observation, and on
small corpora it learns little more than each gene's mean (on held-out her2st sections its predictions hardly
vary between spots, while a ridge readout of the same network's H&E-only embeddings correlates with the truth;
see the model card). A closed-form multi-output ridge on the embeddings, the linear probe with which pathology
foundation models are usually compared (HEST-Benchmark), fits every gene exactly and cheaply once the network is
trained. Its penalty is chosen by leave-one-slide-out cross-validation and its per-gene uncertainty is the
cross-validated residual standard deviation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse

from storm_sc._settings import logger

# The embedding levels read, concatenated: the observation itself and its two spatial contexts.
READOUT_LEVELS = ("observation", "niche", "region")
# What a readout can read, in this order: the levels above; the colour and stain statistics of the observation's
# own patch (the input of the network's stain path); their mean over the observation's niche neighbours. The
# network's levels lose colour and stain information that its input carries, and the statistics give it back to
# a linear readout (leave-one-slide-out over the reference corpus: mean r 0.050 -> 0.057; see the model card).
LEVELS_INPUT = "levels"
STAIN_INPUT = "stain_statistics"
NICHE_STAIN_INPUT = "niche_stain_statistics"
READOUT_INPUTS = (LEVELS_INPUT, STAIN_INPUT, NICHE_STAIN_INPUT)
ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-1, 6, 15))
# Strata of gene variance with a penalty each (see fit_readout), and the fewest genes a stratum may have.
PENALTY_STRATA = 8
_MIN_STRATUM = 50
# Genes fitted at once; bounds the dense (observations x genes) target block.
_GENE_CHUNK = 2048
# A slide alone is cut into this many stripes along x for cross-validation.
_SINGLE_SLIDE_FOLDS = 3
# The fewest observations a readout is fitted on. Its penalty and uncertainty come from held-out slides or stripes,
# each needing rows to fit on and rows to score: with fewer, folds are empty or single rows, and every held-out
# correlation and residual sd (the predictive std) would be NaN or meaningless.
MIN_READOUT_OBSERVATIONS = 10
_PREFIX = "readout."


@dataclass(eq=False)
class ExpressionReadout:
    """Ridge coefficients from H&E-only embeddings to log1p expression (library size 1e4) of some genes.

    Attributes
    ----------
    gene_ids
        ``(g,)`` vocabulary indices of the genes it predicts.
    coef
        ``(f, g)`` float32 coefficients on the raw features (the standardisation is folded in).
    intercept
        ``(g,)`` float32.
    residual_sd
        ``(g,)`` float32 cross-validated residual standard deviation (the predictive uncertainty).
    cv_pearson
        ``(g,)`` float32 cross-validated Pearson correlation per gene, averaged over held-out slides (NaN where a
        gene was constant on every held-out slide).
    alpha
        ``(g,)`` float32 ridge penalty of each gene (one per stratum of gene variance, see :func:`fit_readout`; one for
        all genes in readouts fitted before 2026-12-06).
    slides
        Names of the slides it was fitted on.
    inputs
        What the features are, in order (a subset of ``READOUT_INPUTS``); readouts stored before the stain
        statistics existed read the levels alone.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=60, n_genes=20, n_domains=2, seed=0)
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    >>> model.fit_expression_readout({"toy": sdata}, verbose=False)
    StormModel(storm-tiny, 20 genes, ... parameters)
    >>> readout = model.readout
    >>> readout.n_genes, readout.slides, readout.uses_stain_statistics
    (20, ['toy'], True)
    >>> readout.coef.shape[1], readout.residual_sd.shape
    (20, (20,))
    """

    gene_ids: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    residual_sd: np.ndarray
    cv_pearson: np.ndarray
    alpha: np.ndarray
    slides: list[str] = field(default_factory=list)
    inputs: tuple[str, ...] = (LEVELS_INPUT,)

    def __post_init__(self) -> None:
        self.inputs = tuple(self.inputs)
        unknown = [i for i in self.inputs if i not in READOUT_INPUTS]
        if not self.inputs or self.inputs[0] != LEVELS_INPUT or unknown:
            raise ValueError(
                f"A readout reads the levels first, then any of {READOUT_INPUTS[1:]}; got inputs {self.inputs}."
            )

    @property
    def uses_stain_statistics(self) -> bool:
        """Whether its features include the patches' stain statistics (so pixels must be read to predict)."""
        return len(self.inputs) > 1

    @property
    def n_genes(self) -> int:
        """Number of genes predicted."""
        return len(self.gene_ids)

    def __repr__(self) -> str:
        r = _nanmean(self.cv_pearson)
        return f"ExpressionReadout({self.n_genes} genes, {len(self.slides)} slides, mean cv r = {r:.3f})"

    def predict(self, features: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        """``(n, f)`` features -> ``(n, g)`` predicted log1p expression (clipped at 0); ``columns`` selects genes."""
        coef, intercept = self.coef, self.intercept
        if columns is not None:
            coef, intercept = coef[:, columns], intercept[columns]
        return np.clip(features.astype(np.float32) @ coef + intercept, 0.0, None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to store beside the network weights (keys prefixed ``readout.``)."""
        arrays = {
            "gene_ids": self.gene_ids.astype(np.int64),
            "coef": self.coef,
            "intercept": self.intercept,
            "residual_sd": self.residual_sd,
            "cv_pearson": self.cv_pearson,
            "alpha": self.alpha,
        }
        return {_PREFIX + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def digest(self) -> str:
        """sha256 of the stored tensors: equal digests mean the same predictions.

        Returns
        -------
        Hex digest.
        """
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        """What to record in a checkpoint header: slides, size, penalty range, mean cross-validated r."""
        finite = np.isfinite(self.cv_pearson)
        return {
            "levels": list(READOUT_LEVELS),
            "inputs": list(self.inputs),
            "slides": list(self.slides),
            "n_genes": self.n_genes,
            "alpha_range": [float(self.alpha.min()), float(self.alpha.max())] if self.n_genes else [],
            "cv_pearson_mean": round(float(self.cv_pearson[finite].mean()), 4) if finite.any() else None,
        }

    @classmethod
    def pop_from(cls, tensors: dict[str, torch.Tensor], header: dict | None) -> ExpressionReadout | None:
        """Remove the ``readout.*`` tensors from a checkpoint's tensors and build the readout (``None`` if absent)."""
        keys = [k for k in tensors if k.startswith(_PREFIX)]
        if not keys:
            return None
        arrays = {k[len(_PREFIX) :]: tensors.pop(k).float().numpy() for k in keys}
        return cls(
            gene_ids=arrays["gene_ids"].astype(np.int64),
            coef=arrays["coef"].astype(np.float32),
            intercept=arrays["intercept"].astype(np.float32),
            residual_sd=arrays["residual_sd"].astype(np.float32),
            cv_pearson=arrays["cv_pearson"].astype(np.float32),
            alpha=arrays["alpha"].astype(np.float32),
            slides=list((header or {}).get("slides", [])),
            inputs=tuple((header or {}).get("inputs", [LEVELS_INPUT])),
        )


@dataclass
class ReadoutSlide:
    """One slide's readout inputs: H&E-only features, expression aligned to the vocabulary, positions."""

    name: str
    features: np.ndarray  # (n, f)
    expression: sparse.csr_matrix  # (n, n_panel) log1p, library size 1e4
    gene_index: np.ndarray  # (n_panel,) vocabulary index of each column
    x_um: np.ndarray  # (n,) for spatial folds of a lone slide


def fit_readout(
    slides: Sequence[ReadoutSlide],
    n_vocabulary: int,
    *,
    genes: np.ndarray | None = None,
    min_detection: float = 0.05,
    alphas: Sequence[float] = ALPHAS,
    inputs: Sequence[str] = (LEVELS_INPUT,),
    penalty_strata: int = PENALTY_STRATA,
) -> ExpressionReadout:
    """Fit the ridge readout; genes measured on different sets of slides are fitted on those slides' rows.

    Parameters
    ----------
    slides
        Slides with features and expression.
    n_vocabulary
        Size of the model's vocabulary.
    genes
        Vocabulary indices to fit; default every gene detected (count > 0) in at least ``min_detection`` of the
        observations of the slides that measure it.
    min_detection
        See ``genes``.
    alphas
        Penalties tried.
    inputs
        What the slides' features are (recorded in the readout; see ``READOUT_INPUTS``).
    penalty_strata
        Genes are split into this many strata of equal size by the variance of their log1p expression, and each
        stratum gets the penalty that maximises its genes' mean held-out correlation (1: one penalty for all).
        Strongly varying genes carry more signal and want less shrinkage than the thousands of weakly varying
        ones, whose mean would otherwise set the penalty for all; strata of at least ``_MIN_STRATUM`` genes keep the
        choice stable, where a penalty per gene picks noisy extremes.

    Returns
    -------
    The readout.
    """
    if not slides:
        raise ValueError("The expression readout needs at least one slide with H&E and expression.")
    check_penalty_strata(penalty_strata)
    why = readout_shortfall([s.x_um for s in slides])
    if why is not None:
        raise ValueError(f"Cannot fit the expression readout: {why}.")
    measured = np.zeros((len(slides), n_vocabulary), dtype=bool)
    detected = np.zeros(n_vocabulary)
    observed = np.zeros(n_vocabulary)
    for i, s in enumerate(slides):
        measured[i, s.gene_index] = True
        detected[s.gene_index] += np.asarray((s.expression > 0).sum(axis=0)).ravel()
        observed[s.gene_index] += s.expression.shape[0]
    if genes is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            genes = np.flatnonzero((observed > 0) & (detected / np.maximum(observed, 1) >= min_detection))
    genes = np.asarray(genes, dtype=np.int64)
    unmeasured = genes[~measured[:, genes].any(axis=0)]
    if len(unmeasured):
        raise ValueError(f"{len(unmeasured)} requested genes are measured on none of the slides.")
    # Genes measured on the same slides share rows and folds.
    patterns, which = np.unique(measured[:, genes].T, axis=0, return_inverse=True)
    groups = []
    r_all = np.empty((len(alphas), len(genes)))
    variance = np.zeros(len(genes))
    for p, pattern in enumerate(patterns):
        cols = np.flatnonzero(which.ravel() == p)
        members = [s for s, m in zip(slides, pattern, strict=True) if m]
        r, sd, variance[cols] = _cross_validate(members, genes[cols], alphas)
        r_all[:, cols] = r
        groups.append((cols, members, sd))
    best = _penalty_per_stratum(r_all, variance, penalty_strata)
    alpha = np.asarray(alphas, dtype=np.float32)[best]
    n_feat = slides[0].features.shape[1]
    coef = np.zeros((n_feat, len(genes)), dtype=np.float32)
    intercept, residual_sd = (np.zeros(len(genes), dtype=np.float32) for _ in range(2))
    for cols, members, sd in groups:
        coef[:, cols], intercept[cols] = _refit(members, genes[cols], alpha[cols])
        residual_sd[cols] = sd[best[cols], np.arange(len(cols))]
    cv_pearson = r_all[best, np.arange(len(genes))].astype(np.float32)
    logger.info(
        "Expression readout: %d genes (%d groups of genes measured on the same slides) on %d slides, penalties "
        "%.3g-%.3g (%d distinct over the strata of gene variance), mean cross-validated r = %.3f.",
        len(genes),
        len(groups),
        len(slides),
        float(alpha.min()) if len(alpha) else float("nan"),
        float(alpha.max()) if len(alpha) else float("nan"),
        len(np.unique(best)),
        _nanmean(cv_pearson),
    )
    return ExpressionReadout(
        gene_ids=genes,
        coef=coef,
        intercept=intercept,
        residual_sd=residual_sd,
        cv_pearson=cv_pearson,
        alpha=alpha,
        slides=[s.name for s in slides],
        inputs=tuple(inputs),
    )


def check_penalty_strata(penalty_strata: int) -> None:
    """Raise a clear error unless ``penalty_strata`` is a positive integer."""
    if isinstance(penalty_strata, bool) or not isinstance(penalty_strata, (int, np.integer)) or penalty_strata < 1:
        raise ValueError(
            f"`penalty_strata` must be a positive integer (1: one penalty for all genes), got {penalty_strata!r}."
        )


def readout_shortfall(x_um: Sequence[np.ndarray]) -> str | None:
    """Why slides (the x positions of each one's observations) are too few to fit a readout on; ``None`` if not."""
    n = sum(len(x) for x in x_um)
    hint = "fit it on more or larger slides with H&E and expression"
    if n < MIN_READOUT_OBSERVATIONS:
        return (
            f"it needs at least {MIN_READOUT_OBSERVATIONS} observations with H&E and expression to cross-validate "
            f"its penalty and uncertainty, and the slides have {n}; {hint}"
        )
    if len(x_um) == 1 and len(np.unique(_stripes(x_um[0]))) < 2:
        return (
            "a lone slide is cross-validated over stripes along x, and all its observations share one x position; "
            + hint
        )
    return None


def _penalty_per_stratum(r: np.ndarray, variance: np.ndarray, n_strata: int) -> np.ndarray:
    """``(g,)`` index of the penalty of each gene: the best mean held-out ``r`` (``(n_alphas, g)``) of its stratum."""
    n_strata = max(1, min(n_strata, len(variance) // _MIN_STRATUM))
    order = np.argsort(variance, kind="stable")
    best = np.zeros(len(variance), dtype=np.int64)
    for members in np.array_split(order, n_strata):
        score = np.array([_nanmean(row) for row in r[:, members]])
        best[members] = int(np.argmax(np.nan_to_num(score, nan=-np.inf))) if np.isfinite(score).any() else 0
    return best


def _folds(slides: Sequence[ReadoutSlide]) -> np.ndarray:
    """Fold label per row: the slide, or x stripes of a lone slide."""
    if len(slides) >= 2:
        return np.concatenate([np.full(len(s.features), i) for i, s in enumerate(slides)])
    return _stripes(slides[0].x_um)


def _stripes(x: np.ndarray) -> np.ndarray:
    """Stripe label per row: ``_SINGLE_SLIDE_FOLDS`` quantile stripes of ``x``."""
    edges = np.quantile(x, np.linspace(0, 1, _SINGLE_SLIDE_FOLDS + 1)[1:-1])
    return np.searchsorted(edges, x, side="right")


def _targets(slides: Sequence[ReadoutSlide], gene_ids: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Dense ``(n_rows, chunk)`` float64 targets, a chunk of genes at a time."""
    columns = []
    for s in slides:
        lookup = np.full(int(max(s.gene_index.max(), gene_ids.max())) + 1, -1)
        lookup[s.gene_index] = np.arange(len(s.gene_index))
        columns.append(lookup[gene_ids])
    for start in range(0, len(gene_ids), _GENE_CHUNK):
        sl = slice(start, min(start + _GENE_CHUNK, len(gene_ids)))
        yield sl, np.vstack([s.expression[:, c[sl]].toarray() for s, c in zip(slides, columns, strict=True)])


def _solver(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardisation and thin SVD of ``x``: ``(mean, scale, U, s, Vt)``."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    u, s, vt = np.linalg.svd((x - mean) / scale, full_matrices=False)
    return mean, scale, u, s, vt


def _pearson(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    t = truth - truth.mean(axis=0)
    p = pred - pred.mean(axis=0)
    den = np.sqrt((t * t).sum(axis=0) * (p * p).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, (t * p).sum(axis=0) / den, np.nan)


def _nanmean(values: np.ndarray) -> float:
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def _cross_validate(
    slides: Sequence[ReadoutSlide], gene_ids: np.ndarray, alphas: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out correlation and residual sd per penalty and gene ``(n_alphas, n_genes)``, and gene variances.

    The variances ``(n_genes,)`` are over all rows, read on the same pass over the targets. The correlation is averaged over held-out folds (NaN where a gene was constant on every held-out fold); the
    residual sd pools the out-of-fold residuals of all rows.
    """
    x = np.vstack([s.features for s in slides]).astype(np.float64)
    folds = _folds(slides)
    labels = np.unique(folds)
    alphas = np.asarray(alphas, dtype=np.float64)
    g = len(gene_ids)
    solvers = [(f, _solver(x[folds != f])) for f in labels]
    r = np.full((len(labels), len(alphas), g), np.nan)
    sse = np.zeros((len(alphas), g))
    variance = np.zeros(g)
    for sl, y in _targets(slides, gene_ids):
        variance[sl] = y.var(axis=0)
        for i, (f, (mean, scale, u, s, vt)) in enumerate(solvers):
            train, test = folds != f, folds == f
            ym = y[train].mean(axis=0)
            uty = u.T @ (y[train] - ym)
            xt = ((x[test] - mean) / scale) @ vt.T
            for j, a in enumerate(alphas):
                pred = (xt * (s / (s * s + a))) @ uty + ym
                r[i, j, sl] = _pearson(y[test], pred)
                sse[j, sl] += ((y[test] - pred) ** 2).sum(axis=0)
    finite = np.isfinite(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        r_mean = np.where(finite, r, 0.0).sum(axis=0) / finite.sum(axis=0)
    return r_mean, np.sqrt(sse / len(x)), variance


def _refit(slides: Sequence[ReadoutSlide], gene_ids: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients on the raw features ``(f, g)`` and intercepts ``(g,)`` of a ridge fitted on every row.

    Each gene has its own penalty (``alpha``, ``(g,)``); one decomposition of the features serves them all.
    """
    x = np.vstack([s.features for s in slides]).astype(np.float64)
    mean, scale, u, s, vt = _solver(x)
    alpha = np.asarray(alpha, dtype=np.float64)
    coef = np.zeros((x.shape[1], len(gene_ids)))
    intercept = np.zeros(len(gene_ids))
    for sl, y in _targets(slides, gene_ids):
        y_mean = y.mean(axis=0)
        shrink = s[:, None] / (s[:, None] ** 2 + alpha[None, sl])
        coef[:, sl] = (vt.T @ (shrink * (u.T @ (y - y_mean)))) / scale[:, None]
        intercept[sl] = y_mean - mean @ coef[:, sl]
    return coef.astype(np.float32), intercept.astype(np.float32)
