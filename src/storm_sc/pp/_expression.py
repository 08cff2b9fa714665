"""What scale an expression matrix is on (counts, log1p, normalised), and bringing it to the model's scale."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from anndata import AnnData
from scipy import sparse

from storm_sc._settings import logger

from ._input import table_of

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from storm_sc.io._spatial_input import SpatialInput

ExpressionKind = Literal["counts", "log1p", "normalized"]
Matrix = np.ndarray | sparse.spmatrix | sparse.sparray

TARGET_SUM = 1e4
"""Library size every observation is scaled to before ``log1p``: the model's expression scale."""

# log1p of any realistic normalised value stays far below this (log1p(1e8) ~ 18.4).
_LOG1P_MAX = 20.0
# Rows inspected to tell log1p from other non-integer data; enough for a stable vote, cheap on any matrix.
_N_PROBE_ROWS = 500
# Values checked at once when scanning a matrix for NaN/negatives, to bound temporary memory.
_SCAN_CHUNK = 1 << 24
# Relative slack when recovering integers from expm1 values (float32 storage is exact to ~1e-6 here).
_INT_TOL = 1e-3
# Smallest count per row tried when recovering integers (a row's smallest nonzero count is rarely above this).
_MAX_SMALLEST_COUNT = 4
# Decimal steps a table may have been rounded to on writing (log1p values kept with 2 decimals): the coarsest step
# every probed value sits on bounds their rounding error, as the float spacing does for float16 storage.
_DECIMAL_STEPS = (0.1, 0.01, 0.001)
# A value is evidence for (or against) integer counts only while its uncertainty, in counts, stays below this.
_MAX_COUNT_UNCERTAINTY = 0.1
# Standardised values are clipped like scanpy's ``pp.scale(max_value=10)``: one outlier spot must not dominate.
Z_CLIP = 10.0


def gene_moments(expression: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of each column of a slide's sparse log1p expression, without densifying it.

    Examples
    --------
    >>> x = sparse.csr_matrix(np.array([[0.0, 2.0], [0.0, 0.0]], dtype=np.float32))
    >>> [m.tolist() for m in gene_moments(x)]
    [[0.0, 1.0], [0.0, 1.0]]
    """
    # Summed in float64: float32 sums depend on the order of the rows (6e-9 on a Visium slide), enough to change the
    # token draws weighted by these moments when the table is reordered.
    x = sparse.csr_matrix(expression, dtype=np.float64)
    mean = np.asarray(x.mean(axis=0)).ravel()
    square = np.asarray(x.multiply(x).mean(axis=0)).ravel()
    return mean, np.maximum(square - mean**2, 0.0)


def _matrix_of(data: AnnData | Matrix, layer: str | None) -> Matrix:
    if isinstance(data, AnnData):
        if layer is not None:
            if layer not in data.layers:
                raise KeyError(
                    f"Layer {layer!r} not found; available layers: {list(data.layers)} (or layer=None for .X)."
                )
            x = data.layers[layer]
        else:
            x = data.X
        if x is None:
            raise ValueError(
                "The AnnData has no expression matrix in .X; pass `layer=` naming the layer that holds it."
            )
    elif layer is not None:
        raise ValueError("`layer` only applies to an AnnData; a matrix was given.")
    else:
        x = data
    if isinstance(x, sparse.spmatrix | sparse.sparray):
        return x
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "to_memory"):
        raise TypeError(
            "The expression matrix is backed on disk; load it first with `adata = adata.to_memory()` "
            "(or pass a subset)."
        )
    if hasattr(x, "compute"):
        raise TypeError(
            "The expression matrix is a lazy (dask) array; load it first, e.g. `adata.X = adata.X.compute()`."
        )
    return np.asarray(x)


def _values(x: Matrix) -> np.ndarray:
    """Return the stored values: nonzeros of a sparse matrix, everything of a dense one (as a flat view)."""
    if sparse.issparse(x):
        return x.data if x.format in ("csr", "csc", "coo") else x.tocsr().data
    return np.asarray(x).reshape(-1)


def _scan(values: np.ndarray) -> tuple[bool, float]:
    """Raise on NaN, infinite or negative values; return (all values integer, maximum)."""
    is_int = np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_
    vmax = 0.0
    n_bad = n_neg = 0
    all_integer = True
    for start in range(0, values.size, _SCAN_CHUNK):
        v = values[start : start + _SCAN_CHUNK]
        if not is_int:
            finite = np.isfinite(v)
            if not finite.all():
                n_bad += int(v.size - finite.sum())
                continue
        if v.size:
            if v.min() < 0:
                n_neg += int((v < 0).sum())
            vmax = max(vmax, float(v.max()))
            if all_integer and not is_int:
                all_integer = bool(np.all(v == np.round(v)))
    if n_bad:
        raise ValueError(
            f"The expression matrix holds {n_bad} NaN or infinite values. Expression must be finite: fill or drop "
            "those observations/genes, or pass the raw counts (`layer=`)."
        )
    if n_neg:
        raise ValueError(
            f"The expression matrix holds {n_neg} negative values, so it is not counts, normalised or log1p data "
            "(it looks scaled/centred, e.g. by `sc.pp.scale`, or batch-corrected). Pass the raw counts or the "
            "log1p-normalised layer with `layer=`."
        )
    return is_int or all_integer, vmax


def _probe_rows(x: Matrix) -> list[np.ndarray]:
    """Nonzero values of up to ``_N_PROBE_ROWS`` evenly spaced rows (deterministic)."""
    n = x.shape[0]
    rows = np.unique(np.linspace(0, n - 1, num=min(n, _N_PROBE_ROWS)).astype(np.int64)) if n else np.array([], int)
    if sparse.issparse(x):
        sub = sparse.csr_matrix(x[rows] if x.format == "csr" else x.tocsr()[rows])
        return [sub.data[sub.indptr[i] : sub.indptr[i + 1]] for i in range(len(rows))]
    dense = np.asarray(x)[rows]
    return [r[r != 0] for r in dense]


def _rounding_errors(rows: list[np.ndarray], dtype: np.dtype) -> list[np.ndarray]:
    """Largest error each stored value may carry: half its float spacing, or half the decimal step all sit on.

    Float32 or float64 values carry no error that matters here; float16 storage (about 3 significant digits) and
    values rounded to a few decimals do, and their ``expm1`` is then far from integers.
    """
    pooled = np.concatenate(rows) if rows else np.zeros(0)
    step = 0.0
    if pooled.size and np.issubdtype(dtype, np.floating):
        for candidate in _DECIMAL_STEPS:
            scaled = pooled.astype(np.float64) / candidate
            if np.all(np.abs(scaled - np.round(scaled)) <= 1e-3):
                step = candidate
                break
    float_dtype = dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)
    if (
        pooled.size
        and float_dtype.itemsize > 2
        and np.array_equal(pooled.astype(np.float16).astype(pooled.dtype), pooled)
    ):
        float_dtype = np.dtype(np.float16)  # float16 values widened later (a float16 h5ad read into float32)
    return [np.maximum(np.spacing(r.astype(float_dtype)).astype(np.float64) / 2, step / 2) for r in rows]


def _rescaled_integers(rows: list[np.ndarray], errors: list[np.ndarray] | None = None) -> float | None:
    """Share of informative rows whose values are one number times a set of integers, or None.

    Library-size normalisation (by any size factor) multiplies each row by one number, so count data stays
    integer up to that row's factor. The row's smallest value is then a small count (usually 1) times the
    factor; trying the first few small counts recovers the integers. Rows whose values are all equal say
    nothing and are skipped. ``errors`` (absolute, per value) widen the slack for values stored with little
    precision; values too uncertain to tell neighbouring counts apart are not used as evidence.
    """
    informative = passed = 0
    for i, v in enumerate(rows):
        err = np.zeros(len(v)) if errors is None else errors[i]
        positive = v > 0
        v, err = v[positive].astype(np.float64), err[positive]
        if v.size < 2:
            continue
        ratio = v / v.min()
        # Relative uncertainty of each ratio: its own value's and the smallest value's.
        relative = err / v + err[np.argmin(v)] / v.min()
        usable = ratio * relative * _MAX_SMALLEST_COUNT <= _MAX_COUNT_UNCERTAINTY
        if ratio[usable].max(initial=0.0) < 1.5:
            continue
        ratio, relative = ratio[usable], relative[usable]
        informative += 1
        for smallest_count in range(1, _MAX_SMALLEST_COUNT + 1):
            q = ratio * smallest_count
            small = q <= 100  # large multiples are always close to some integer; they carry no evidence
            q, slack = q[small], np.maximum(_INT_TOL * np.maximum(q[small], 1.0), q[small] * relative[small])
            if np.all(np.abs(q - np.round(q)) <= slack):
                passed += 1
                break
    return None if informative == 0 else passed / informative


def _as_linear(rows: list[np.ndarray], errors: list[np.ndarray], base: float) -> tuple[list, list]:
    """``base ** r - 1`` of each row (log(1 + x) in that base, undone), with the error it inherits."""
    linear = [np.power(base, r.astype(np.float64)) - 1 for r in rows]
    inherited = [np.log(base) * np.power(base, r.astype(np.float64)) * e for r, e in zip(rows, errors, strict=True)]
    return linear, inherited


def detect_counts(adata_or_matrix: AnnData | Matrix, *, layer: str | None = None) -> ExpressionKind:
    """Tell whether expression values are raw counts, log1p-normalised or normalised (not logged).

    - ``"counts"``: every value a non-negative integer.
    - ``"log1p"``: non-integer, at most ~20, and ``expm1`` of each row is a scaled set of integers (what
      ``sc.pp.normalize_total`` or any size-factor normalisation followed by ``sc.pp.log1p`` gives).
    - ``"normalized"``: any other non-negative data (CPM, library-size fractions, ...). Values that are
      ``log(1 + x)`` in base 2 or 10 (e.g. ``sc.pp.log1p(adata, base=2)``), when recognised as such (as for
      counts normalised to a library size of 10,000), are refused rather than read as linear values.

    Parameters
    ----------
    adata_or_matrix
        An AnnData (its ``.X`` or ``layer``) or a dense / scipy sparse matrix (observations x genes).
    layer
        Layer of the AnnData to inspect instead of ``.X``.

    Returns
    -------
    ``"counts"``, ``"log1p"`` or ``"normalized"``.

    Raises
    ------
    ValueError
        When values are NaN, infinite or negative (e.g. scaled data).

    Examples
    --------
    >>> import numpy as np
    >>> import storm_sc as st
    >>> counts = np.array([[0, 3, 1], [2, 0, 5]])
    >>> st.pp.detect_counts(counts)
    'counts'
    >>> st.pp.detect_counts(np.log1p(counts / counts.sum(1, keepdims=True) * 1e4))
    'log1p'
    """
    return _detect(_matrix_of(adata_or_matrix, layer))


def _detect(x: Matrix) -> ExpressionKind:
    is_integer, vmax = _scan(_values(x))
    if is_integer:
        return "counts"
    if vmax > _LOG1P_MAX:
        return "normalized"
    rows = _probe_rows(x)
    exact = [np.zeros(len(r)) for r in rows]
    as_log = _rescaled_integers(*_as_linear(rows, exact, np.e))
    if as_log is None:
        # No row with two distinct values (tiny panels): only the value range is left to go by.
        logger.warning(
            "detect_counts: too few distinct values per observation to check the scale; values <= %g are taken as "
            "log1p. Pass the kind explicitly if this is wrong.",
            _LOG1P_MAX,
        )
        return "log1p"
    if as_log >= 0.9:
        return "log1p"
    if (_rescaled_integers([r.astype(np.float64) for r in rows]) or 0.0) >= 0.9:
        return "normalized"  # linear values that are exactly scaled counts (counts / 10, fractions of the library)
    # Neither reading is exact. Values stored with little precision (float16, a few decimals) are then read again
    # with the slack their rounding allows: log1p kept as float16 is log1p, not linear values.
    errors = _rounding_errors(rows, x.dtype)
    if (_rescaled_integers(*_as_linear(rows, errors, np.e)) or 0.0) >= 0.9:
        return "log1p"
    _refuse_other_log_bases(rows, errors)
    return "normalized"


def _refuse_other_log_bases(rows: list[np.ndarray], errors: list[np.ndarray]) -> None:
    """Refuse log(1 + x) in base 2 or 10, which would otherwise be read as normalised (not logged) values."""
    if (_rescaled_integers([r.astype(np.float64) for r in rows], errors) or 0.0) >= 0.9:
        return  # linear normalised values (fractions of the library): nearly linear in any log base when small
    for base, how in ((2, "sc.pp.log1p(adata, base=2)"), (10, "log10(1 + x)")):
        if (_rescaled_integers(*_as_linear(rows, errors, base)) or 0.0) >= 0.9:
            raise ValueError(
                f"The expression values look like log{base}(1 + x) of normalised counts ({how}); storm_sc reads "
                "counts, normalised values or natural-log log1p values. Pass the raw counts with `layer=`, or "
                f"convert: np.log1p({base} ** X - 1)."
            )


def validated_kind(x: Matrix, kind: ExpressionKind | None) -> ExpressionKind:
    """Check ``x`` holds expression (finite, non-negative) and return its scale: ``kind``, or detected if ``None``."""
    if kind is not None and kind not in get_args(ExpressionKind):
        raise ValueError(f"`kind` must be one of {get_args(ExpressionKind)} or None (detect); got {kind!r}.")
    if kind is None:
        return _detect(x)
    is_integer, _ = _scan(_values(x))
    if is_integer and kind != "counts":
        logger.warning("Expression values are all integers (raw counts?) but kind=%r was given; using %r.", kind, kind)
    return kind


def normalize_expression(
    data: SpatialData | AnnData | SpatialInput | Matrix,
    *,
    layer: str | None = None,
    kind: ExpressionKind | None = None,
    target_sum: float = TARGET_SUM,
    chunk_size: int = 10_000,
    table_key: str | None = None,
) -> np.ndarray | sparse.csr_matrix:
    """Bring expression to the model's scale: each observation scaled to ``target_sum`` in total, then ``log1p``.

    Raw counts, normalised values and log1p-normalised values all end on the same scale (log1p values are first
    mapped back with ``expm1``), so data preprocessed in different ways become comparable. The input is never
    modified.

    Parameters
    ----------
    data
        An AnnData, a SpatialData / SpatialInput (their table), or a dense / scipy sparse matrix
        (observations x genes).
    layer
        Layer holding the expression instead of ``.X``.
    kind
        ``"counts"``, ``"log1p"`` or ``"normalized"``; detected with :func:`detect_counts` when ``None``.
    target_sum
        Library size after scaling.
    chunk_size
        Observations processed at once (bounds temporary memory on large tables).
    table_key
        Table of a SpatialData to use.

    Returns
    -------
    A new float32 matrix of the same shape: CSR when the input is sparse, a numpy array otherwise.
    Observations with no expression stay all zero.

    Examples
    --------
    >>> import numpy as np
    >>> import storm_sc as st
    >>> x = st.pp.normalize_expression(np.array([[1, 3], [0, 2]]))
    >>> np.allclose(np.expm1(x).sum(1), 1e4)
    True
    """
    if not (np.isfinite(target_sum) and target_sum > 0):
        raise ValueError(f"`target_sum` must be a positive number; got {target_sum!r}.")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1; got {chunk_size!r}.")
    if isinstance(data, np.ndarray | sparse.spmatrix | sparse.sparray):
        x = _matrix_of(data, layer)
    else:
        x = _matrix_of(table_of(data, caller="normalize_expression", table_key=table_key), layer)
    kind = validated_kind(x, kind)
    logger.debug("normalize_expression: treating input as %s.", kind)
    return normalized(x, kind, target_sum=target_sum, chunk_size=chunk_size)


def normalized(
    x: Matrix,
    kind: ExpressionKind,
    *,
    columns: np.ndarray | None = None,
    target_sum: float = TARGET_SUM,
    chunk_size: int = 10_000,
) -> np.ndarray | sparse.csr_matrix:
    """Normalise like :func:`normalize_expression`, on an already validated matrix of known ``kind``.

    Library sizes always count every gene of ``x``; with ``columns`` only those genes are returned, so that a
    small panel of a large table never needs a normalised copy of the whole table.
    """
    if sparse.issparse(x):
        return _normalize_csr(sparse.csr_matrix(x), kind, columns, target_sum, chunk_size)
    return _normalize_dense(np.asarray(x), kind, columns, target_sum, chunk_size)


def _linear(values: np.ndarray, kind: str) -> np.ndarray:
    values = values.astype(np.float64)
    return np.expm1(values) if kind == "log1p" else values


def _scale_factors(row_sums: np.ndarray, target_sum: float) -> np.ndarray:
    """Per-row factors bringing each library to ``target_sum``; empty rows keep factor 0 (they stay zero)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(row_sums > 0, target_sum / row_sums, 0.0)


def _normalize_dense(
    x: np.ndarray, kind: str, columns: np.ndarray | None, target_sum: float, chunk_size: int
) -> np.ndarray:
    n_out = x.shape[1] if columns is None else len(columns)
    out = np.empty((x.shape[0], n_out), dtype=np.float32)
    for start in range(0, x.shape[0], chunk_size):
        block = _linear(x[start : start + chunk_size], kind)
        factor = _scale_factors(block.sum(axis=1), target_sum)
        kept = block if columns is None else block[:, columns]
        out[start : start + chunk_size] = np.log1p(kept * factor[:, None])
    return out


def _normalize_csr(
    x: sparse.csr_matrix, kind: str, columns: np.ndarray | None, target_sum: float, chunk_size: int
) -> sparse.csr_matrix:
    parts = []
    for start in range(0, x.shape[0], chunk_size):
        chunk = x[start : start + chunk_size]
        sums = np.bincount(
            np.repeat(np.arange(chunk.shape[0]), np.diff(chunk.indptr)),
            weights=_linear(chunk.data, kind),
            minlength=chunk.shape[0],
        )
        factor = _scale_factors(sums, target_sum)
        kept = sparse.csr_matrix(chunk if columns is None else chunk[:, columns])
        rows = np.repeat(np.arange(kept.shape[0]), np.diff(kept.indptr))
        data = np.log1p(_linear(kept.data, kind) * factor[rows]).astype(np.float32)
        parts.append(sparse.csr_matrix((data, kept.indices.copy(), kept.indptr.copy()), shape=kept.shape))
    if not parts:
        return sparse.csr_matrix((0, x.shape[1] if columns is None else len(columns)), dtype=np.float32)
    return sparse.csr_matrix(sparse.vstack(parts, format="csr"))
